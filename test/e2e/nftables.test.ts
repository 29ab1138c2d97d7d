import { beforeAll, expect, it } from 'vitest';
import { applyArgs, CLI, cli, describeE2E, runCli, statusArgs, testNamespace, testTopology, type RedirectFlags } from '../helpers/e2e.ts';
import { ADDR, createTopology, runCommand, type Topology } from '../helpers/netns.ts';
import { nftLoad, nftTable } from '../helpers/nft.ts';
import { expectDirect, expectRedirected, probe, startServer, UID } from '../helpers/traffic.ts';

// The native nftables backend (-backend=nftables) with real nft inside namespaces: real IPv4 and IPv6
// connections through the one `inet consul_tproxy` table, the table's independence from iptables, sets
// with overlapping values, and the dry run's script as nft itself reads it.

const NFT = ['-backend=nftables'];

const DUAL: RedirectFlags = {
  proxyUid: UID.proxy,
  inboundPort: 20000,
  excludeInboundPorts: ['22'],
  excludeOutboundPorts: ['9090'],
  excludeOutboundCidrs: [`${ADDR.excludedNet4},${ADDR.excludedNet6}`],
  excludeUids: [UID.excluded],
  dnsPort: 8600,
  dualStack: true,
};

/** Listeners for both families: the proxy's two ports, SSH, local services and Consul DNS on the VM; the peer's services. */
async function startListeners({ vm, peer }: Topology): Promise<void> {
  await startServer(vm, 'outbound', ['tcp:0.0.0.0:15001', 'tcp:[::]:15001']);
  await startServer(vm, 'inbound', ['tcp:0.0.0.0:20000', 'tcp:[::]:20000']);
  await startServer(vm, 'vm-ssh', ['tcp:0.0.0.0:22', 'tcp:[::]:22']);
  await startServer(vm, 'vm-local', ['tcp:127.0.0.1:8080', 'tcp:[::1]:8080']);
  await startServer(vm, 'consul-dns', ['udp:127.0.0.1:8600', 'tcp:127.0.0.1:8600', 'udp:[::1]:8600', 'tcp:[::1]:8600']);
  await startServer(peer, 'peer', ['tcp:0.0.0.0:8080', 'tcp:0.0.0.0:9090', 'tcp:[::]:8080', 'tcp:[::]:9090']);
}

/** One outbound and one inbound connection per family, redirected: the table is doing its job. */
async function expectBothWaysRedirected({ vm, peer }: Topology, families: readonly (4 | 6)[] = [4, 6]): Promise<void> {
  for (const family of families) {
    const [peerAddr, vmAddr] = family === 4 ? [ADDR.peer4, ADDR.vm4] : [ADDR.peer6, ADDR.vm6];
    expectRedirected(await probe(vm, { host: peerAddr, port: 8080, uid: UID.ordinary }), 'outbound', peerAddr, 8080);
    expectRedirected(await probe(peer, { host: vmAddr, port: 8080 }), 'inbound', vmAddr, 8080);
  }
}

describeE2E(
  'nftables backend: real traffic through inet consul_tproxy',
  () => {
    let net: Topology;

    beforeAll(async () => {
      net = await createTopology();
      await startListeners(net);
      // Before any rule, both families go direct: what changes below is the table's doing.
      expectDirect(await probe(net.vm, { host: ADDR.peer4, port: 8080, uid: UID.ordinary }), 'peer', ADDR.peer4, 8080);
      expectDirect(await probe(net.vm, { host: ADDR.peer6, port: 8080, uid: UID.ordinary }), 'peer', ADDR.peer6, 8080);
      const applied = await cli(applyArgs(net.vm, DUAL, ...NFT));
      expect(applied.stdout).toContain('nftables');
      expect(applied.stderr, 'no warning with -dual-stack').toBe('');
    });

    it('installs one inet table and no iptables rule at all', async () => {
      expect(await nftTable(net.vm)).toContain('table inet consul_tproxy');
      for (const program of ['iptables-nft', 'ip6tables-nft', 'iptables-legacy', 'ip6tables-legacy']) {
        expect(await net.vm.must(program, '-t', 'nat', '-S'), program).not.toContain('CONSUL_');
      }
    });

    it.each([4, 6] as const)('IPv%s: redirects outbound TCP of an ordinary UID (and root) to the outbound port, original destination intact', async (family) => {
      const host = family === 4 ? ADDR.peer4 : ADDR.peer6;
      expectRedirected(await probe(net.vm, { host, port: 8080, uid: UID.ordinary }), 'outbound', host, 8080);
      expectRedirected(await probe(net.vm, { host, port: 8080 }), 'outbound', host, 8080);
    });

    it.each([4, 6] as const)('IPv%s: redirects inbound TCP to the inbound port, and lets the excluded inbound port 22 go direct', async (family) => {
      const host = family === 4 ? ADDR.vm4 : ADDR.vm6;
      expectRedirected(await probe(net.peer, { host, port: 8080 }), 'inbound', host, 8080);
      expectDirect(await probe(net.peer, { host, port: 22 }), 'vm-ssh', host, 22);
    });

    it.each([4, 6] as const)('IPv%s: the proxy UID, an -exclude-uid, an -exclude-outbound-port and an -exclude-outbound-cidr go direct', async (family) => {
      const [host, excludedHost] = family === 4 ? [ADDR.peer4, ADDR.peer4Excluded] : [ADDR.peer6, ADDR.peer6Excluded];
      expectDirect(await probe(net.vm, { host, port: 8080, uid: UID.proxy }), 'peer', host, 8080);
      expectDirect(await probe(net.vm, { host, port: 8080, uid: UID.excluded }), 'peer', host, 8080);
      expectDirect(await probe(net.vm, { host, port: 9090, uid: UID.ordinary }), 'peer', host, 9090);
      expectDirect(await probe(net.vm, { host: excludedHost, port: 8080, uid: UID.ordinary }), 'peer', excludedHost, 8080);
    });

    it.each(['127.0.0.1', '::1'])('lets %s go direct', async (host) => {
      expectDirect(await probe(net.vm, { host, port: 8080, uid: UID.ordinary }), 'vm-local', host, 8080);
    });

    it.each(['127.0.0.1', '::1'])('sends UDP and TCP DNS to %s:53 to the -consul-dns-port (with -dual-stack, the ::1 rules too)', async (host) => {
      const port = host.includes(':') ? `[${host}]:8600` : `${host}:8600`;
      expect(await probe(net.vm, { proto: 'udp', host, port: 53, uid: UID.ordinary })).toMatchObject({ name: 'consul-dns', local: port });
      expectRedirected(await probe(net.vm, { host, port: 53, uid: UID.ordinary }), 'consul-dns', host, 53);
    });

    it('without -dual-stack leaves IPv6 untouched (meta nfproto ipv6 return) and still redirects IPv4', async () => {
      const topology = await testTopology();
      await startListeners(topology);
      const { dualStack: _, ...ipv4Only } = DUAL;
      const applied = await cli(applyArgs(topology.vm, ipv4Only, ...NFT));
      expect(applied.stderr, 'the IPv6 bypass warning').toMatch(/IPv6.*-dual-stack/);
      const table = (await nftTable(topology.vm)) ?? '';
      expect(table.match(/meta nfproto ipv6 return/g), 'at the top of both hook chains').toHaveLength(2);
      expectDirect(await probe(topology.vm, { host: ADDR.peer6, port: 8080, uid: UID.ordinary }), 'peer', ADDR.peer6, 8080);
      await startServer(topology.vm, 'vm-web6', ['tcp:[::]:8081']);
      expectDirect(await probe(topology.peer, { host: ADDR.vm6, port: 8081 }), 'vm-web6', ADDR.vm6, 8081);
      await expectBothWaysRedirected(topology, [4]);
      // DNS for ::1 is not redirected either: only the IPv4 DNS rules exist.
      expect(table).not.toContain('[::1]:8600');
    });

    it('keeps redirecting after `iptables -t nat -F`, and after `iptables-nft -t nat -F` and `-X`: our rules live in their own table', async () => {
      const topology = await testTopology();
      await startListeners(topology);
      const { vm } = topology;
      // Something in iptables' nat table for the flushes to remove.
      await vm.must('iptables', '-t', 'nat', '-A', 'OUTPUT', '-d', '198.18.7.7/32', '-p', 'tcp', '-j', 'RETURN');
      await vm.must('ip6tables', '-t', 'nat', '-N', 'FOREIGN');
      await cli(applyArgs(vm, DUAL, ...NFT));
      await vm.must('iptables', '-t', 'nat', '-F');
      await expectBothWaysRedirected(topology);
      await cli(statusArgs(vm, DUAL), 0);
      for (const program of ['iptables-nft', 'ip6tables-nft', 'iptables-legacy', 'ip6tables-legacy']) {
        await vm.must(program, '-t', 'nat', '-F');
        await vm.must(program, '-t', 'nat', '-X');
      }
      await expectBothWaysRedirected(topology);
      await cli(statusArgs(vm, DUAL), 0);
    });

    it('loads overlapping and duplicate CIDRs and ports, reads as in sync, and status --json shows the set sizes', async () => {
      const ns = await testNamespace();
      const args = [
        '-netns',
        ns.path,
        '-proxy-uid=1234',
        '-proxy-inbound-port=20000',
        '-exclude-outbound-cidr=10.0.0.0/8,10.1.0.0/16,10.0.0.0/8',
        '-exclude-outbound-cidr=2001:db8::/32,2001:db8:1::/48',
        '-exclude-outbound-port=80,80,70:90',
        '-exclude-inbound-port=22,22,20:30',
        '-exclude-uid=1000,1000,1001',
        '-dual-stack',
      ];
      await cli([...args, ...NFT]);
      const table = (await nftTable(ns)) ?? '';
      expect(table).toContain('10.0.0.0/8');
      expect(table).not.toContain('10.1.0.0/16');
      expect(table).toContain('70-90');
      await cli(['status', ...args], 0);
      const json = JSON.parse((await cli(['status', '--json', ...args], 0)).stdout) as {
        status: string;
        installed: { backend: string; sets: Record<string, number> }[];
        differences: string[];
      };
      expect(json.status).toBe('in-sync');
      expect(json.differences).toEqual([]);
      expect(json.installed).toHaveLength(1);
      expect(json.installed[0]).toMatchObject({
        backend: 'nftables',
        sets: { excluded_v4: 1, excluded_v6: 1, excluded_outbound_ports: 1, excluded_inbound_ports: 1, excluded_uids: 2 },
      });
      // Loading the same again is a no-op.
      expect((await cli([...args, ...NFT])).stdout).toMatch(/already in place/);
    });

    it.each([
      ['a typical config', ['-proxy-uid=999', '-proxy-inbound-port=20000', '-exclude-uid=998', '-exclude-inbound-port=22', '-exclude-outbound-cidr=169.254.169.254', '-exclude-outbound-port=9090,8000:8100']],
      ['dual stack with DNS', ['-proxy-uid=999', '-proxy-inbound-port=20000', '-exclude-outbound-cidr=10.0.0.0/8,2001:db8::/32', '-consul-dns-port=8600', '-dual-stack']],
      ['-consul-dns-ip alone', ['-proxy-uid=999', '-proxy-inbound-port=20000', '-consul-dns-ip=198.18.0.53']],
    ])('--dry-run -backend=nftables for %s prints a script nft -c accepts, on an empty namespace and over an installed table', async (_name, flags) => {
      const dry = await cli(['--dry-run', ...NFT, ...flags]);
      expect(dry.stdout).toContain('add table inet consul_tproxy');
      expect(dry.stderr).toBe('');
      const ns = await testNamespace();
      await nftLoad(ns, dry.stdout, { check: true });
      await cli(['-netns', ns.path, ...NFT, '-proxy-uid=1', '-proxy-inbound-port=20001', '-exclude-uid=7']);
      await nftLoad(ns, dry.stdout, { check: true });
      // Loaded for real, it is what an apply with the same flags reads as in sync.
      await nftLoad(ns, dry.stdout);
      await cli(['status', '-netns', ns.path, ...flags], 0);
    });

    it('--dry-run -backend=nftables quotes user names, so names that are nft keywords still parse', async () => {
      // Users unknown here (a preview for another host): kept by name, which nft resolves when it loads the script.
      const dry = await runCli(['--dry-run', ...NFT, '-proxy-uid=accept', '-proxy-inbound-port=20000', '-exclude-uid=counter,return,7']);
      expect(dry.exitCode, dry.stderr).toBe(0);
      expect(dry.stdout).toContain('meta skuid "accept" return');
      expect(dry.stdout).toMatch(/\t7,\n\t+"counter",\n\t+"return"\n/);
      const ns = await testNamespace();
      // This host has no such users: nft parses the script and stops only at resolving the first name.
      const check = await ns.run('nft', ['-c', '-f', '-'], { input: dry.stdout });
      expect(check.exitCode).toBe(1);
      expect(check.stderr).toContain('User does not exist');
      expect(check.stderr).not.toContain('syntax error');
      // With users that exist here, the same quoted script loads.
      const existing = dry.stdout.replace('"accept"', '"root"').replace('"counter"', '"daemon"').replace('"return"', '"bin"');
      await nftLoad(ns, existing, { check: true });
    });

    it('--dry-run -backend=nftables needs no root: the same script as an unprivileged user', async () => {
      const flags = ['--dry-run', ...NFT, '-proxy-uid=999', '-proxy-inbound-port=20000', '-exclude-uid=998', '-dual-stack'];
      const asRoot = await cli(flags);
      const unprivileged = await runCommand('setpriv', ['--reuid=42001', '--regid=42001', '--clear-groups', process.execPath, CLI, ...flags], {
        env: { PATH: '/usr/bin:/bin', HOME: '/nonexistent', NO_COLOR: '1' },
      });
      expect(unprivileged.exitCode, unprivileged.stderr).toBe(0);
      expect(unprivileged.stdout).toContain('add table inet consul_tproxy');
      expect(unprivileged.stdout).toBe(asRoot.stdout);
    });

    it('status without flags reports the nftables table as installed', async () => {
      const result = await runCli(['status', '-netns', net.vm.path]);
      expect(result.exitCode).toBe(0);
      expect(result.stdout).toContain('nftables inet consul_tproxy');
    });
  },
  { requires: ['nft', 'iptables-nft', 'iptables-legacy', 'setpriv'] },
);
