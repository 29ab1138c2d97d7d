import { describe, expect, it } from 'vitest';
import { portRanges } from '../helpers/fakes.ts';
import {
  agentChecksSchema,
  agentServiceSchema,
  decodeAgentAnswer,
  deriveProxyPorts,
  exposedChecksService,
  nodeServicesSchema,
  requireProxy,
  type ProxyPorts,
} from '../../src/core/registration.ts';
import { CliError, ExitCode } from '../../src/errors.ts';
import { consulFixture, registrationCases } from '../helpers/fakeAgent.ts';

const cases = registrationCases();

/** The agent-mode derivation without the network: the answers are handed over as the agent would send them. */
function resolve(registration: unknown, checks: unknown = {}): ProxyPorts {
  const service = decodeAgentAnswer(JSON.stringify(registration), agentServiceSchema, 'service ID "web-sidecar-proxy"');
  const proxy = requireProxy(service, 'web-sidecar-proxy');
  const checkedService = exposedChecksService(proxy);
  const checkAnswer =
    checkedService === undefined
      ? null
      : decodeAgentAnswer(JSON.stringify(checks), agentChecksSchema, `the checks of service "${checkedService}"`);
  return deriveProxyPorts(proxy, checkAnswer);
}

function failure(action: () => unknown): CliError {
  try {
    action();
  } catch (error) {
    if (error instanceof CliError) return error;
    throw error;
  }
  throw new Error('expected a CliError, got a result');
}

describe('the sample registration (reference §2.3)', () => {
  it('gives bind_port inbound, the transparent outbound port, and every exclusion in order', () => {
    const ports = resolve(consulFixture('web-sidecar-proxy.json'), consulFixture('web-checks.json'));
    expect(ports).toEqual({
      inboundPort: 21000,
      outboundPort: 15001,
      // prometheus, stats, expose path, then exposed checks by check ID (service:web:1 before :2, :ttl has none)
      excludeInboundPorts: portRanges('9102', '9103', '21500', '21501', '21502'),
    });
  });
});

describe('registration variants', () => {
  it.each(cases.filter((c) => c.expected !== undefined))('$name', ({ registration, checks, expected }) => {
    expect(resolve(registration, checks)).toEqual(expected);
  });

  it.each(cases.filter((c) => c.error !== undefined))('$name is one clear error', ({ registration, checks, error }) => {
    const { message, exitCode } = failure(() => resolve(registration, checks));
    expect(message).toContain(error);
    expect(exitCode).toBe(ExitCode.badRegistration);
    expect(message).not.toMatch(/\n/);
  });
});

describe('decodeAgentAnswer', () => {
  const decode = (body: string) => failure(() => decodeAgentAnswer(body, agentServiceSchema, 'service ID "web"'));

  it.each([
    ['an HTML page', '<html><body>Bad Gateway</body></html>', 'not JSON (got "<html><body>Bad Gateway</body></html>")'],
    ['an empty body', '', 'not JSON (got "")'],
    ['truncated JSON', '{"Port": 21000, "Proxy": {', 'not JSON'],
  ])('rejects %s as not JSON', (_, body, expected) => {
    const { message, exitCode } = decode(body);
    expect(message).toContain(`invalid answer from the Consul agent for service ID "web": ${expected}`);
    expect(exitCode).toBe(ExitCode.badRegistration);
  });

  it('keeps a huge or multi-line body to one bounded line', () => {
    const { message } = decode(`not json\n${'x'.repeat(10_000)}`);
    expect(message).not.toContain('\n');
    expect(message.length).toBeLessThan(300);
  });

  it('shows a long offending value truncated', () => {
    const { message } = decode(JSON.stringify({ Port: 'y'.repeat(5_000) }));
    expect(message).toMatch(/^invalid answer from the Consul agent for service ID "web": Port must be a port number from 0 to 65535 \(got "y+\.\.\.\)$/);
    expect(message.length).toBeLessThan(300);
  });

  it('names odd keys in brackets, escaped', () => {
    const { message } = failure(() =>
      decodeAgentAnswer('{"check\\nid \\"x\\"": {"ExposedPort": -1}}', agentChecksSchema, 'the checks of service "web"'),
    );
    expect(message).toBe(
      'invalid answer from the Consul agent for the checks of service "web": ["check\\nid \\"x\\""].ExposedPort must be a port number from 0 to 65535 (got -1)',
    );
  });
});

describe('catalog answers (-node-name)', () => {
  it('reads the node services answer and derives from its one service, without checks', () => {
    const answer = decodeAgentAnswer(JSON.stringify(consulFixture('node-services.json')), nodeServicesSchema, 'node');
    const [service] = answer?.Services ?? [];
    expect(service).toBeDefined();
    if (service === undefined) return;
    expect(deriveProxyPorts(requireProxy(service, 'web-sidecar-proxy'), null)).toEqual({
      inboundPort: 20000,
      outboundPort: 15002,
      excludeInboundPorts: portRanges('9103', '21500'),
    });
  });

  it.each([
    ['null', null],
    ['no Services', { Node: null }],
    ['null Services', { Node: null, Services: null }],
  ])('accepts %s as no services', (_, body) => {
    expect(decodeAgentAnswer(JSON.stringify(body), nodeServicesSchema, 'node')?.Services ?? []).toEqual([]);
  });

  it('validates each service it holds', () => {
    const { message } = failure(() =>
      decodeAgentAnswer(JSON.stringify({ Services: [{ Port: 'x' }] }), nodeServicesSchema, 'service ID "p" on node "n"'),
    );
    expect(message).toContain('Services[0].Port must be a port number from 0 to 65535 (got "x")');
  });
});

describe('requireProxy', () => {
  it('names the ID it was asked for and what to give instead', () => {
    const service = decodeAgentAnswer('{"Port": 8080}', agentServiceSchema, 'service ID "web"');
    expect(failure(() => requireProxy(service, 'web')).message).toBe(
      'service "web" is not a proxy (its registration has no Proxy block): -proxy-id takes the proxy\'s own service ID, such as "web-sidecar-proxy"',
    );
  });
});
