import { beforeAll, expect, it } from 'vitest';
import { cli, describeE2E, natRules } from '../helpers/e2e.ts';
import { fakeAgentPerTest, type FakeAgent } from '../helpers/fakeAgent.ts';
import { ADDR, createTopology, type Topology } from '../helpers/netns.ts';
import { expectDirect, expectRedirected, probe, startServer, UID } from '../helpers/traffic.ts';

// -proxy-id end to end (issue 3): the ports come from a stand-in Consul agent's registration, and real
// traffic in the namespaces goes where that registration says. The agent listens on the host's loopback;
// only the rules live in the test namespaces.

const PROXY_ID = 'web-sidecar-proxy';

/** A transparent-mode sidecar whose every port differs from the defaults, so each one is seen to be read. */
const REGISTRATION = {
  Kind: 'connect-proxy',
  ID: PROXY_ID,
  Service: PROXY_ID,
  Port: 21000,
  Proxy: {
    DestinationServiceName: 'web',
    Mode: 'transparent',
    TransparentProxy: { OutboundListenerPort: 15002 },
    Config: { bind_port: '20500', envoy_prometheus_bind_addr: '0.0.0.0:9102' },
    Expose: { Checks: true, Paths: [{ ListenerPort: 21500, Path: '/health', LocalPathPort: 8080 }] },
  },
};
const CHECKS = { 'service:web:1': { CheckID: 'service:web:1', ServiceName: 'web', ExposedPort: 21501 } };

const serve = fakeAgentPerTest();

function proxyIdArgs(net: Topology, agent: FakeAgent, ...extra: string[]): string[] {
  return ['-netns', net.vm.path, `-proxy-id=${PROXY_ID}`, `-proxy-uid=${UID.proxy}`, `-http-addr=${agent.address}`, ...extra];
}

describeE2E('-proxy-id: rules from the agent, checked with real traffic', () => {
  let net: Topology;

  beforeAll(async () => {
    net = await createTopology();
    await startServer(net.vm, 'outbound', ['tcp:0.0.0.0:15002']);
    await startServer(net.vm, 'inbound', ['tcp:0.0.0.0:20500']);
    await startServer(net.vm, 'vm-excluded', ['tcp:0.0.0.0:9102', 'tcp:0.0.0.0:21500', 'tcp:0.0.0.0:21501']);
    await startServer(net.peer, 'peer', ['tcp:0.0.0.0:8080']);
  });

  it('applies what the registration names, and traffic follows it', async () => {
    const agent = await serve({
      [`/v1/agent/service/${PROXY_ID}`]: { body: REGISTRATION },
      '/v1/agent/checks': { body: CHECKS },
    });
    await cli(proxyIdArgs(net, agent));

    expectRedirected(await probe(net.vm, { host: ADDR.peer4, port: 8080, uid: UID.ordinary }), 'outbound', ADDR.peer4, 8080);
    expectDirect(await probe(net.vm, { host: ADDR.peer4, port: 8080, uid: UID.proxy }), 'peer', ADDR.peer4, 8080);
    expectRedirected(await probe(net.peer, { host: ADDR.vm4, port: 8080 }), 'inbound', ADDR.vm4, 8080);
    for (const port of [9102, 21500, 21501]) {
      expectDirect(await probe(net.peer, { host: ADDR.vm4, port }), 'vm-excluded', ADDR.vm4, port);
    }
    // Consul's reversed order: the exposed check's port first, the prometheus port last.
    const inbound = (await natRules(net.vm)).split('\n').filter((line) => line.startsWith('-A CONSUL_PROXY_INBOUND'));
    expect(inbound).toEqual([
      '-A CONSUL_PROXY_INBOUND -p tcp -m tcp --dport 21501 -j RETURN',
      '-A CONSUL_PROXY_INBOUND -p tcp -m tcp --dport 21500 -j RETURN',
      '-A CONSUL_PROXY_INBOUND -p tcp -m tcp --dport 9102 -j RETURN',
      '-A CONSUL_PROXY_INBOUND -p tcp -j CONSUL_PROXY_IN_REDIRECT',
    ]);
    await cli(['status', ...proxyIdArgs(net, agent)]);
    expect(agent.requests.map((request) => request.path)).toContain(`/v1/agent/service/${PROXY_ID}`);
  });

  it('with -wait, waits for a registration that appears only after a few tries', async () => {
    const agent = await serve({
      [`/v1/agent/service/${PROXY_ID}`]: [
        { status: 404, rawBody: `unknown service ID: ${PROXY_ID}` },
        { status: 404, rawBody: `unknown service ID: ${PROXY_ID}` },
        { body: REGISTRATION },
      ],
      '/v1/agent/checks': { body: CHECKS },
    });
    const result = await cli(proxyIdArgs(net, agent, '-wait=20s'));
    expect(result.stderr).toMatch(/waiting for/);
    expectRedirected(await probe(net.peer, { host: ADDR.vm4, port: 8080 }), 'inbound', ADDR.vm4, 8080);
  });

  it('changes nothing when the agent denies the token, and never shows it', async () => {
    const before = await natRules(net.vm);
    const agent = await serve({ [`/v1/agent/service/${PROXY_ID}`]: { status: 403, rawBody: 'Permission denied' } });
    const result = await cli(proxyIdArgs(net, agent), 77, { env: { CONSUL_HTTP_TOKEN: 'e2e-secret-token-4711' } });
    expect(result.stderrLines).toHaveLength(1);
    expect(result.stderr).not.toContain('e2e-secret-token-4711');
    expect(await natRules(net.vm)).toBe(before);
  });
});
