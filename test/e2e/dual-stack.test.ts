import { beforeAll, expect, it } from 'vitest';
import { applyArgs, cli, countRule, describeE2E, natRules, statusArgs, testNamespace, type RedirectFlags } from '../helpers/e2e.ts';
import { ADDR, createTopology, type Topology } from '../helpers/netns.ts';
import { expectDirect, expectRedirected, probe, startServer, UID } from '../helpers/traffic.ts';

// -dual-stack (issue 4): real IPv6 connections through the ip6tables rules, and the family split of the
// flags. The shared topology's rules are applied once and only connected through.

const FLAGS: RedirectFlags = {
  proxyUid: UID.proxy,
  inboundPort: 20000,
  excludeInboundPorts: ['22'],
  // One mixed list, given comma-separated: each family must get only its own CIDRs.
  excludeOutboundCidrs: [`${ADDR.excludedNet4},${ADDR.excludedNet6}`],
  dnsIp: '::1',
  dnsPort: 8600,
  dualStack: true,
};

describeE2E('dual stack (-dual-stack)', () => {
  let net: Topology;

  beforeAll(async () => {
    net = await createTopology();
    const { vm, peer } = net;
    await startServer(vm, 'outbound', ['tcp:0.0.0.0:15001', 'tcp:[::]:15001']);
    await startServer(vm, 'inbound', ['tcp:0.0.0.0:20000', 'tcp:[::]:20000']);
    await startServer(vm, 'vm-local', ['tcp:[::1]:8080']);
    await startServer(vm, 'consul-dns', ['udp:[::1]:8600']);
    await startServer(peer, 'peer', ['tcp:0.0.0.0:8080', 'tcp:[::]:8080']);
    expectDirect(await probe(vm, { host: ADDR.peer6, port: 8080, uid: UID.ordinary }), 'peer', ADDR.peer6, 8080);
    const applied = await cli(applyArgs(vm, FLAGS));
    expect(applied.stderr, 'no warning with -dual-stack').toBe('');
  });

  it('redirects outbound IPv6 TCP of an ordinary UID to the outbound port with its original destination intact', async () => {
    expectRedirected(await probe(net.vm, { host: ADDR.peer6, port: 8080, uid: UID.ordinary }), 'outbound', ADDR.peer6, 8080);
  });

  it('still redirects IPv4', async () => {
    expectRedirected(await probe(net.vm, { host: ADDR.peer4, port: 8080, uid: UID.ordinary }), 'outbound', ADDR.peer4, 8080);
  });

  it('lets the proxy UID go direct over IPv6', async () => {
    expectDirect(await probe(net.vm, { host: ADDR.peer6, port: 8080, uid: UID.proxy }), 'peer', ADDR.peer6, 8080);
  });

  it('lets an IPv6 -exclude-outbound-cidr go direct', async () => {
    expectDirect(await probe(net.vm, { host: ADDR.peer6Excluded, port: 8080, uid: UID.ordinary }), 'peer', ADDR.peer6Excluded, 8080);
  });

  it('lets the IPv4 half of the mixed CIDR list go direct too', async () => {
    expectDirect(await probe(net.vm, { host: ADDR.peer4Excluded, port: 8080, uid: UID.ordinary }), 'peer', ADDR.peer4Excluded, 8080);
  });

  it('lets [::1] go direct', async () => {
    expectDirect(await probe(net.vm, { host: '::1', port: 8080, uid: UID.ordinary }), 'vm-local', '::1', 8080);
  });

  it('redirects inbound IPv6 TCP to the inbound port', async () => {
    expectRedirected(await probe(net.peer, { host: ADDR.vm6, port: 8080 }), 'inbound', ADDR.vm6, 8080);
  });

  it('sends DNS to an IPv6 -consul-dns-ip to its -consul-dns-port', async () => {
    const reply = await probe(net.vm, { proto: 'udp', host: '::1', port: 53, uid: UID.ordinary });
    expect(reply).toMatchObject({ name: 'consul-dns', local: '[::1]:8600' });
  });

  it('splits a mixed CIDR list: IPv4 only in iptables, IPv6 only in ip6tables', async () => {
    const v4 = await natRules(net.vm, { family: 4 });
    const v6 = await natRules(net.vm, { family: 6 });
    expect(countRule(v4, `-A CONSUL_PROXY_OUTPUT -d ${ADDR.excludedNet4} -j RETURN`)).toBe(1);
    expect(v4).not.toContain('2001:db8');
    expect(countRule(v6, `-A CONSUL_PROXY_OUTPUT -d ${ADDR.excludedNet6} -j RETURN`)).toBe(1);
    expect(countRule(v6, '-A CONSUL_PROXY_OUTPUT -d ::1/128 -j RETURN')).toBe(1);
    expect(v6).not.toContain('198.18.');
    // DNS goes to the family of the DNS address only.
    expect(v4).not.toContain('--dport 53');
    expect(v6).toContain('-j DNAT --to-destination [::1]:8600');
  });

  it('removes the IPv6 rules when a later apply drops -dual-stack', async () => {
    const ns = await testNamespace();
    // IPv4 only: no -dual-stack, and no IPv6 DNS address (that needs -dual-stack).
    const { dualStack: _, dnsIp: _ip, dnsPort: _port, ...ipv4Only } = FLAGS;
    await cli(applyArgs(ns, FLAGS));
    expect(await natRules(ns, { family: 6 })).toContain('CONSUL_PROXY_OUTPUT');
    await cli(applyArgs(ns, ipv4Only));
    expect(await natRules(ns, { family: 6 })).not.toContain('CONSUL_');
    expect(await natRules(ns, { family: 4 })).toContain('-A OUTPUT -p tcp -j CONSUL_PROXY_OUTPUT');
    await cli(statusArgs(ns, ipv4Only), 0);
  });
});
