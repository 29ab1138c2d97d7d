import { beforeAll, expect, it } from 'vitest';
import { applyArgs, cli, describeE2E, testTopology, type CliResult, type RedirectFlags } from '../helpers/e2e.ts';
import { ADDR, createTopology, type Topology } from '../helpers/netns.ts';
import { expectDirect, expectRedirected, probe, startServer, UID } from '../helpers/traffic.ts';

// Real IPv4 connections through the installed rules (issue 2 "Tests"). The topology and the rules are set
// up once: every test only connects, so sharing them is safe.

const FLAGS: RedirectFlags = {
  proxyUid: UID.proxy,
  inboundPort: 20000,
  excludeInboundPorts: ['22'],
  excludeOutboundPorts: ['9090'],
  excludeOutboundCidrs: [ADDR.excludedNet4],
  excludeUids: [UID.excluded],
  dnsPort: 8600,
};

describeE2E('IPv4 traffic through the installed rules', () => {
  let net: Topology;
  let applied: CliResult;

  beforeAll(async () => {
    net = await createTopology();
    const { vm, peer } = net;
    await startServer(vm, 'outbound', ['tcp:0.0.0.0:15001']);
    await startServer(vm, 'inbound', ['tcp:0.0.0.0:20000']);
    await startServer(vm, 'vm-ssh', ['tcp:0.0.0.0:22']);
    await startServer(vm, 'vm-local', ['tcp:127.0.0.1:8080']);
    await startServer(vm, 'consul-dns', ['udp:127.0.0.1:8600', 'tcp:127.0.0.1:8600']);
    await startServer(peer, 'peer', ['tcp:0.0.0.0:8080', 'tcp:0.0.0.0:9090']);

    // Before any rule, an ordinary connection reaches the peer: what changes below is the rules' doing.
    expectDirect(await probe(vm, { host: ADDR.peer4, port: 8080, uid: UID.ordinary }), 'peer', ADDR.peer4, 8080);
    expectDirect(await probe(peer, { host: ADDR.vm4, port: 20000 }), 'inbound', ADDR.vm4, 20000);

    applied = await cli(applyArgs(vm, FLAGS));
  });

  it('warns that IPv6 traffic bypasses the proxy, since the VM has a global IPv6 address and no -dual-stack', () => {
    expect(applied.stderrLines).toHaveLength(1);
    expect(applied.stderr).toMatch(/IPv6/);
    expect(applied.stderr).toContain('-dual-stack');
  });

  it('redirects outbound TCP of an ordinary UID to the outbound port with its original destination intact', async () => {
    expectRedirected(await probe(net.vm, { host: ADDR.peer4, port: 8080, uid: UID.ordinary }), 'outbound', ADDR.peer4, 8080);
  });

  it('also redirects root, which is not excluded', async () => {
    expectRedirected(await probe(net.vm, { host: ADDR.peer4, port: 8080 }), 'outbound', ADDR.peer4, 8080);
  });

  it('lets the proxy UID go direct', async () => {
    expectDirect(await probe(net.vm, { host: ADDR.peer4, port: 8080, uid: UID.proxy }), 'peer', ADDR.peer4, 8080);
  });

  it('lets an -exclude-uid UID go direct', async () => {
    expectDirect(await probe(net.vm, { host: ADDR.peer4, port: 8080, uid: UID.excluded }), 'peer', ADDR.peer4, 8080);
  });

  it('lets an -exclude-outbound-port go direct', async () => {
    expectDirect(await probe(net.vm, { host: ADDR.peer4, port: 9090, uid: UID.ordinary }), 'peer', ADDR.peer4, 9090);
  });

  it('lets an -exclude-outbound-cidr go direct while the rest of the subnet is still redirected', async () => {
    const excluded = await probe(net.vm, { host: ADDR.peer4Excluded, port: 8080, uid: UID.ordinary });
    expectDirect(excluded, 'peer', ADDR.peer4Excluded, 8080);
    expectRedirected(await probe(net.vm, { host: ADDR.peer4, port: 8080, uid: UID.ordinary }), 'outbound', ADDR.peer4, 8080);
  });

  it('lets 127.0.0.1 go direct', async () => {
    expectDirect(await probe(net.vm, { host: '127.0.0.1', port: 8080, uid: UID.ordinary }), 'vm-local', '127.0.0.1', 8080);
  });

  it('redirects inbound TCP from the peer to the inbound port with its original destination intact', async () => {
    expectRedirected(await probe(net.peer, { host: ADDR.vm4, port: 8080 }), 'inbound', ADDR.vm4, 8080);
  });

  it('lets an excluded inbound port (22) go direct', async () => {
    expectDirect(await probe(net.peer, { host: ADDR.vm4, port: 22 }), 'vm-ssh', ADDR.vm4, 22);
  });

  it('sends UDP DNS to 127.0.0.1:53 to the -consul-dns-port', async () => {
    const reply = await probe(net.vm, { proto: 'udp', host: '127.0.0.1', port: 53, uid: UID.ordinary });
    expect(reply).toMatchObject({ name: 'consul-dns', local: '127.0.0.1:8600' });
  });

  it('sends TCP DNS to 127.0.0.1:53 to the -consul-dns-port', async () => {
    expectRedirected(await probe(net.vm, { host: '127.0.0.1', port: 53, uid: UID.ordinary }), 'consul-dns', '127.0.0.1', 53);
  });

  it('with -consul-dns-ip alone, sends all port-53 traffic to that address', async () => {
    const { vm, peer } = await testTopology();
    // Bound to the DNS address only: a query that reached the other address would find no listener.
    await startServer(peer, 'peer-dns', [`udp:${ADDR.peer4}:53`, `tcp:${ADDR.peer4}:53`]);
    await cli(applyArgs(vm, { proxyUid: UID.proxy, inboundPort: 20000, dnsIp: ADDR.peer4 }));
    // Asked of another address, answered by the DNS address, for UDP and TCP, whoever asks.
    const udp = await probe(vm, { proto: 'udp', host: ADDR.peer4Excluded, port: 53, uid: UID.proxy });
    expect(udp).toMatchObject({ name: 'peer-dns', local: `${ADDR.peer4}:53` });
    const tcp = await probe(vm, { host: ADDR.peer4Excluded, port: 53, uid: UID.ordinary });
    expect(tcp).toMatchObject({ name: 'peer-dns', local: `${ADDR.peer4}:53` });
  });
});
