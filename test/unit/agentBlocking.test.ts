import { describe, expect, it } from 'vitest';
import { readProxyPorts } from '../../src/consul/agent.ts';
import { createLogger } from '../../src/log.ts';
import { agentOptions, fakeAgentPerTest, sidecarRegistration } from '../helpers/fakeAgent.ts';
import { captureOutput } from '../helpers/fakes.ts';

// Following a registration with the agent's blocking queries (watch -proxy-id), against the stand-in agent:
// `?hash=<X-Consul-ContentHash>&wait=<N>s` is held until the registration changes or the wait passes.

const PROXY_ID = 'web-sidecar-proxy';
const PATH = `/v1/agent/service/${PROXY_ID}`;
const registration = (port: number) => sidecarRegistration(PROXY_ID, port);

const serve = fakeAgentPerTest();
const log = () => createLogger(captureOutput().output);

describe('blocking queries on the registration', () => {
  it('reads the version, then blocks on it until the registration changes', async () => {
    const agent = await serve({ [PATH]: { body: registration(21000) } });
    const options = agentOptions({ address: agent.address, timeoutMs: 1_000 });
    const first = await readProxyPorts(options, PROXY_ID, log());
    expect(first.ports.inboundPort).toBe(21000);
    expect(first.version).toMatch(/^[0-9a-f]{16}$/);

    const start = performance.now();
    const next = readProxyPorts(options, PROXY_ID, log(), { since: first.version ?? '', waitSeconds: 5 });
    // Held by the agent (longer than -timeout: a blocking request's limit includes its wait).
    await new Promise((resolve) => setTimeout(resolve, 1_200));
    expect(agent.held()).toBe(1);
    agent.set(PATH, { body: registration(21001) });
    const changed = await next;
    expect(changed.ports.inboundPort).toBe(21001);
    expect(changed.version).not.toBe(first.version);
    expect(performance.now() - start).toBeLessThan(3_000);
    const query = agent.requests.at(-1)?.query;
    expect(query?.get('hash')).toBe(first.version);
    expect(query?.get('wait')).toBe('5s');
  });

  it('answers with the same registration and version once the wait has passed', async () => {
    const agent = await serve({ [PATH]: { body: registration(21000) } });
    const options = agentOptions({ address: agent.address });
    const first = await readProxyPorts(options, PROXY_ID, log());
    const start = performance.now();
    const same = await readProxyPorts(options, PROXY_ID, log(), { since: first.version ?? '', waitSeconds: 1 });
    expect(performance.now() - start).toBeGreaterThan(900);
    expect(same).toEqual(first);
  });

  it('does not block on a version that is already stale', async () => {
    const agent = await serve({ [PATH]: { body: registration(21002) } });
    const start = performance.now();
    const read = await readProxyPorts(agentOptions({ address: agent.address }), PROXY_ID, log(), { since: '0123456789abcdef', waitSeconds: 5 });
    expect(read.ports.inboundPort).toBe(21002);
    // Well under the 5 s a held query would take, with room for a loaded machine.
    expect(performance.now() - start).toBeLessThan(2_500);
  });
});
