import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stripVTControlCharacters } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { ExitCode } from '../../src/errors.ts';
import { run } from '../../src/main.ts';
import { consulFixture, fakeAgentPerTest, type FakeAgentOptions } from '../helpers/fakeAgent.ts';
import { captureOutput, fakeRunner } from '../helpers/fakes.ts';

// `redirect-traffic --dry-run -proxy-id=…` end to end in-process: flags, the real agent client against a
// stand-in agent, and the rules printed. No process may be started.

const PROXY_ID = 'web-sidecar-proxy';
const SERVICE_PATH = `/v1/agent/service/${PROXY_ID}`;
const SAMPLE_ROUTES = {
  [SERVICE_PATH]: { body: consulFixture('web-sidecar-proxy.json') },
  '/v1/agent/checks': { body: consulFixture('web-checks.json') },
};

const serve = fakeAgentPerTest();

async function dryRun(args: readonly string[], env: NodeJS.ProcessEnv = {}) {
  const captured = captureOutput();
  const runner = fakeRunner();
  const code = await run(['--dry-run', `-proxy-id=${PROXY_ID}`, '-proxy-uid=101', ...args], {
    output: captured.output,
    env,
    runner: runner.factory,
  });
  expect(runner.calls).toEqual([]);
  return { code, stdout: captured.stdout(), stderrLines: captured.stderrLines().map((line) => stripVTControlCharacters(line)) };
}

/** The restore lines of one chain, in order. */
const chain = (stdout: string, name: string) => stdout.split('\n').filter((line) => line.startsWith(`-A ${name} `));

describe('--dry-run -proxy-id prints the rules resolved from the agent', () => {
  it('with the ports and exclusions of the sample registration, in Consul\'s reversed order', async () => {
    const agent = await serve(SAMPLE_ROUTES);
    const { code, stdout, stderrLines } = await dryRun([`-http-addr=${agent.address}`, '-exclude-inbound-port=22']);
    expect(code).toBe(ExitCode.ok);
    expect(stderrLines).toEqual([]);
    expect(chain(stdout, 'CONSUL_PROXY_IN_REDIRECT')).toEqual(['-A CONSUL_PROXY_IN_REDIRECT -p tcp -j REDIRECT --to-ports 21000']);
    expect(chain(stdout, 'CONSUL_PROXY_REDIRECT')).toEqual(['-A CONSUL_PROXY_REDIRECT -p tcp -j REDIRECT --to-ports 15001']);
    // Each exclusion is inserted at the top, registration's first and the user's last, so the kernel order is reversed.
    expect(chain(stdout, 'CONSUL_PROXY_INBOUND')).toEqual([
      ...['22', '21502', '21501', '21500', '9103', '9102'].map((port) => `-A CONSUL_PROXY_INBOUND -p tcp -m tcp --dport ${port} -j RETURN`),
      '-A CONSUL_PROXY_INBOUND -p tcp -j CONSUL_PROXY_IN_REDIRECT',
    ]);
  });

  it('with the outbound port of the transparent proxy and a bind_port string', async () => {
    const registration = { Port: 20000, Proxy: { Config: { bind_port: '20500' }, TransparentProxy: { OutboundListenerPort: 15002 } } };
    const agent = await serve({ [SERVICE_PATH]: { body: registration } });
    const { code, stdout } = await dryRun([`-http-addr=${agent.address}`]);
    expect(code).toBe(ExitCode.ok);
    expect(chain(stdout, 'CONSUL_PROXY_IN_REDIRECT')).toEqual(['-A CONSUL_PROXY_IN_REDIRECT -p tcp -j REDIRECT --to-ports 20500']);
    expect(chain(stdout, 'CONSUL_PROXY_REDIRECT')).toEqual(['-A CONSUL_PROXY_REDIRECT -p tcp -j REDIRECT --to-ports 15002']);
  });

  it('from CONSUL_HTTP_ADDR, CONSUL_NAMESPACE, CONSUL_PARTITION and CONSUL_HTTP_TOKEN', async () => {
    const agent = await serve(SAMPLE_ROUTES, { transport: 'unix' });
    const env = { CONSUL_HTTP_ADDR: agent.address, CONSUL_NAMESPACE: 'team-a', CONSUL_PARTITION: 'p1', CONSUL_HTTP_TOKEN: 'tok-1' };
    const { code } = await dryRun([], env);
    expect(code).toBe(ExitCode.ok);
    expect(agent.requests.map((r) => [r.query.get('ns'), r.query.get('partition'), r.headers['x-consul-token']])).toEqual([
      ['team-a', 'p1', 'tok-1'],
      ['team-a', 'p1', 'tok-1'],
    ]);
  });

  it('over HTTPS with -ca-file, -client-cert, -client-key and -tls-server-name', async () => {
    const agent = await serve(SAMPLE_ROUTES, { transport: 'tls', requireClientCert: true });
    const tls = agent.tls;
    if (tls === undefined) throw new Error('no TLS material');
    const { code, stdout } = await dryRun([
      `-http-addr=${agent.address}`,
      `-ca-file=${tls.caFile}`,
      `-client-cert=${tls.clientCertFile}`,
      `-client-key=${tls.clientKeyFile}`,
      `-tls-server-name=${tls.serverName}`,
    ]);
    expect(code).toBe(ExitCode.ok);
    expect(stdout).toContain('--to-ports 21000');
  });

  it('with -node-name, from the catalog', async () => {
    const agent = await serve({ '/v1/catalog/node-services/vm-1': { body: consulFixture('node-services.json') } });
    const { code, stdout } = await dryRun([`-http-addr=${agent.address}`, '-node-name=vm-1']);
    expect(code).toBe(ExitCode.ok);
    expect(chain(stdout, 'CONSUL_PROXY_REDIRECT')).toEqual(['-A CONSUL_PROXY_REDIRECT -p tcp -j REDIRECT --to-ports 15002']);
  });

  it('with -wait, once the proxy is registered, after saying what it waits for', async () => {
    const agent = await serve({ ...SAMPLE_ROUTES, [SERVICE_PATH]: [{ status: 404 }, SAMPLE_ROUTES[SERVICE_PATH]] });
    const { code, stdout, stderrLines } = await dryRun([`-http-addr=${agent.address}`, '-wait=30s']);
    expect(code).toBe(ExitCode.ok);
    expect(stdout).toContain('--to-ports 21000');
    expect(stderrLines).toEqual([
      expect.stringMatching(/^redirect-traffic: waiting for service ID "web-sidecar-proxy" to be registered with the Consul agent at .*; retrying for up to [\d.]+s$/),
    ]);
  });
});

describe('every failure is one line on stderr with its exit code', () => {
  const tokenDir = mkdtempSync(join(tmpdir(), 'token-'));
  const tokenFile = join(tokenDir, 'token');
  writeFileSync(tokenFile, 'd9c3a1f0-acl-token\n');
  afterAll(() => rmSync(tokenDir, { recursive: true, force: true }));

  interface Failure {
    routes: FakeAgentOptions['routes'];
    args?: string[];
    env?: NodeJS.ProcessEnv;
    exitCode: number;
    message: RegExp;
  }
  const failures: Record<string, Failure> = {
    '403 ACL denied': {
      routes: { [SERVICE_PATH]: { status: 403, rawBody: 'ACL not found' } },
      env: { CONSUL_HTTP_TOKEN_FILE: tokenFile },
      exitCode: ExitCode.noPermission,
      message: /denied access .*check the ACL token from CONSUL_HTTP_TOKEN_FILE/,
    },
    '404 not registered': { routes: {}, exitCode: ExitCode.unavailable, message: /is not registered with the Consul agent at .*-wait=60s/ },
    '500': {
      routes: { [SERVICE_PATH]: { status: 500, rawBody: 'No cluster leader' } },
      exitCode: ExitCode.unavailable,
      message: /\(HTTP 500: "No cluster leader"\)$/,
    },
    'invalid JSON': { routes: { [SERVICE_PATH]: { rawBody: '{' } }, exitCode: ExitCode.badRegistration, message: /not JSON/ },
    'an invalid bind_port': {
      routes: { [SERVICE_PATH]: { body: { Port: 1, Proxy: { Config: { bind_port: 'invalid' } } } } },
      exitCode: ExitCode.badRegistration,
      message: /Proxy\.Config\.bind_port must be a port number.*\(got "invalid"\)$/,
    },
    'not a proxy': { routes: { [SERVICE_PATH]: { body: { Port: 8080 } } }, exitCode: ExitCode.badRegistration, message: /is not a proxy/ },
    'Port 0': { routes: { [SERVICE_PATH]: { body: { Port: 0, Proxy: {} } } }, exitCode: ExitCode.badRegistration, message: /Port is 0/ },
    'a hanging agent': {
      routes: { [SERVICE_PATH]: { hang: true } },
      args: ['-timeout=300ms'],
      exitCode: ExitCode.unavailable,
      message: /did not answer within 300ms/,
    },
    'a 404 outlasting -wait': {
      routes: {},
      args: ['-wait=1s'],
      exitCode: ExitCode.unavailable,
      message: /^redirect-traffic: error: after waiting 1s, service ID "web-sidecar-proxy" is not registered/,
    },
  };

  it.each(Object.entries(failures))('%s', async (_, { routes, args = [], env = {}, exitCode, message }) => {
    const agent = await serve(routes);
    const { code, stdout, stderrLines } = await dryRun([`-http-addr=${agent.address}`, ...args], env);
    expect(code).toBe(exitCode);
    expect(stdout).toBe('');
    const errors = stderrLines.filter((line) => !line.includes(': waiting for '));
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatch(/^redirect-traffic: error: /);
    expect(errors[0]).toMatch(message);
  });

  it.each<[string, string[], number, RegExp]>([
    ['an unreachable agent', ['-http-addr=unix:///nonexistent/consul.sock'], ExitCode.unavailable, /cannot reach the Consul agent at unix:\/\/\/nonexistent\/consul\.sock \(no such socket file\)/],
    ['an unknown -http-addr scheme', ['-http-addr=tcp://127.0.0.1:8500'], ExitCode.usage, /invalid value "tcp:\/\/127\.0\.0\.1:8500" for -http-addr: unknown scheme "tcp"/],
    ['-proxy-inbound-port with -proxy-id', ['-proxy-inbound-port=20000'], ExitCode.usage, /cannot be combined with -proxy-id/],
  ])('%s', async (_, args, exitCode, message) => {
    const { code, stderrLines } = await dryRun(args);
    expect(code).toBe(exitCode);
    expect(stderrLines).toHaveLength(1);
    expect(stderrLines[0]).toMatch(message);
  });
});
