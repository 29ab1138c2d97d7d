import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect, it, onTestFinished } from 'vitest';
import {
  applyArgs,
  cli,
  describeE2E,
  describeRun,
  installConsulStyle,
  natRules,
  runCli,
  statusArgs,
  testNamespace,
  testTopology,
  type Backend,
  type Family,
  type RedirectFlags,
} from '../helpers/e2e.ts';
import { ADDR, type Netns } from '../helpers/netns.ts';
import { addForeignNftRules, consulNftScript, nftLoad, nftRuleset, nftTable } from '../helpers/nft.ts';
import { expectRedirected, probe, startServer, UID } from '../helpers/traffic.ts';

// The nftables table's life: re-apply, replace, cleanup back to the byte; migrating from Consul's iptables
// rules and from our own iptables backend, and back; auto keeping whichever backend holds the rules; and
// taking over the `inet consul_tproxy` table Consul's own nftables variant writes.

const A: RedirectFlags = {
  proxyUid: UID.proxy,
  inboundPort: 20000,
  excludeInboundPorts: ['22'],
  excludeOutboundPorts: ['9090'],
  excludeOutboundCidrs: ['198.18.1.0/24'],
  excludeUids: [UID.excluded],
  dnsPort: 8600,
};
const B: RedirectFlags = {
  proxyUid: UID.proxy,
  inboundPort: 20001,
  excludeInboundPorts: ['2222'],
  excludeOutboundPorts: ['7070:7080'],
  excludeOutboundCidrs: ['198.19.0.0/16', '2001:db8:5::/48'],
  excludeUids: [43000],
  dualStack: true,
};

const VARIANTS: [Backend, Family][] = [
  ['nft', 4],
  ['nft', 6],
  ['legacy', 4],
  ['legacy', 6],
];

/** No CONSUL_* chain or jump in any iptables variant or family. */
async function expectNoIptablesRules(ns: Netns): Promise<void> {
  for (const [backend, family] of VARIANTS) {
    expect(await natRules(ns, { backend, family }), `${backend} IPv${family}`).not.toContain('CONSUL_');
  }
}

/** A PATH whose first directory holds failing iptables-nft-restore shims; removed when the test ends. */
function failingRestorePath(): Record<string, string> {
  const dir = mkdtempSync(join(tmpdir(), 'rt-e2e-shims-'));
  onTestFinished(() => rmSync(dir, { recursive: true, force: true }));
  for (const program of ['iptables-nft-restore', 'ip6tables-nft-restore']) {
    writeFileSync(join(dir, program), '#!/bin/sh\necho "iptables-restore v1.8.9 (nf_tables): line 2 failed: No such file or directory" >&2\nexit 1\n');
    chmodSync(join(dir, program), 0o755);
  }
  return { PATH: `${dir}:${process.env['PATH'] ?? '/usr/sbin:/usr/bin:/sbin:/bin'}` };
}

describeE2E(
  'nftables backend: lifecycle, migration and taking over Consul’s table',
  () => {
    it('re-applying is a no-op, a flag change replaces the table exactly, and cleanup restores the exact prior `nft list ruleset`', async () => {
      const ns = await testNamespace();
      await addForeignNftRules(ns);
      const prior = await nftRuleset(ns);
      expect(prior).toContain('table inet filter');
      expect(prior).toContain('table ip nat');

      expect((await cli(applyArgs(ns, A, '-backend=nftables'))).stdout).toMatch(/^applied .*\(nftables/);
      const first = await nftTable(ns);
      const again = await cli(applyArgs(ns, A, '-backend=nftables'));
      expect(again.stdout).toMatch(/already in place/);
      expect(again.stderr).toBe('');
      expect(await nftTable(ns), 'a no-op re-apply leaves the table as it was').toBe(first);
      await cli(statusArgs(ns, A), 0);

      // B: every exclusion different, and dual stack. Without -backend, auto keeps nftables.
      const replaced = await cli(applyArgs(ns, B));
      expect(replaced.stdout).toMatch(/^applied .*\(nftables/);
      await cli(statusArgs(ns, B), 0);
      await cli(statusArgs(ns, A), 3);
      const table = (await nftTable(ns)) ?? '';
      for (const gone of ['198.18.1.0/24', '9090', `${UID.excluded}`, 'dport 22 ', ':20000', ':8600']) expect(table, gone).not.toContain(gone);
      for (const present of ['198.19.0.0/16', '2001:db8:5::/48', '7070-7080', '43000', '2222', ':20001']) expect(table, present).toContain(present);
      expect(table, 'dual stack: IPv6 is no longer skipped').not.toContain('meta nfproto ipv6 return');
      // The foreign tables were never touched.
      const during = await nftRuleset(ns);
      expect(during).toContain('ip saddr @blocked drop');
      expect(await natRules(ns, { backend: 'nft', family: 4 })).toContain('-A OUTPUT -d 198.18.7.7/32 -p tcp -j RETURN');

      // Every rule counted once (the base chains' rules were counted twice, as hooks too).
      const rules = (await ns.must('nft', '-a', 'list', 'table', 'inet', 'consul_tproxy')).split('\n').filter((line) => / # handle \d+$/.test(line) && !/^\s*(chain|set|table) /.test(line)).length;
      const cleaned = await cli(['cleanup', '-netns', ns.path]);
      expect(cleaned.stdout).toContain(`(nftables, inet consul_tproxy, netns ${ns.path}): 7 chains, ${rules} rules\n`);
      expect(await nftRuleset(ns)).toBe(prior);
      // A second cleanup has nothing left to do and still changes nothing.
      await cli(['cleanup', '-netns', ns.path]);
      expect(await nftRuleset(ns)).toBe(prior);
      await cli(statusArgs(ns, B), 4);
    });

    it.each(['iptables', 'iptables-legacy'])(
      "migrates Consul's classic rules (one %s process per rule) to -backend=nftables: no CONSUL_* chain anywhere, traffic redirected",
      async (program) => {
        const { vm, peer } = await testTopology();
        await startServer(vm, 'outbound', ['tcp:0.0.0.0:15001']);
        await startServer(vm, 'inbound', ['tcp:0.0.0.0:20000']);
        await startServer(peer, 'peer', ['tcp:0.0.0.0:8080']);
        // Someone else's rule in the same nat table must survive the sweep.
        await vm.must(program, '-t', 'nat', '-A', 'OUTPUT', '-d', '198.18.7.7/32', '-p', 'tcp', '-j', 'RETURN');
        await installConsulStyle(vm, A, program);
        const backend: Backend = program === 'iptables' ? 'nft' : 'legacy';
        expect(await natRules(vm, { backend })).toContain('CONSUL_PROXY_OUTPUT');

        const migrated = await cli(applyArgs(vm, A, '-backend=nftables'));
        expect(migrated.stdout).toMatch(/^applied .*\(nftables/);
        expect(`${migrated.stdout}${migrated.stderr}`, describeRun(applyArgs(vm, A), migrated)).toMatch(
          new RegExp(`removed the redirection rules from iptables-${backend} IPv4`),
        );
        await expectNoIptablesRules(vm);
        expect(await natRules(vm, { backend }), "the other rule in nat OUTPUT").toContain('-A OUTPUT -d 198.18.7.7/32 -p tcp -j RETURN');
        expect(await nftTable(vm)).toContain('table inet consul_tproxy');
        await cli(statusArgs(vm, A), 0);
        expectRedirected(await probe(vm, { host: ADDR.peer4, port: 8080, uid: UID.ordinary }), 'outbound', ADDR.peer4, 8080);
        expectRedirected(await probe(peer, { host: ADDR.vm4, port: 8080 }), 'inbound', ADDR.vm4, 8080);
      },
    );

    // As Consul's own nftables branch does, the run fails. But iptables-nft's chains are nf_tables chains: the
    // nft transaction itself empties them, so a run that dies (or fails) before the sweep never leaves the old
    // configuration redirecting beside the new one.
    it('fails when the old iptables rules cannot be removed after the nft transaction, which emptied them; the next apply removes them', async () => {
      const ns = await testNamespace();
      await cli(applyArgs(ns, { ...A, dualStack: true }));
      const failed = await runCli(applyArgs(ns, A, '-backend=nftables'), { env: failingRestorePath() });
      expect(failed.exitCode, describeRun(applyArgs(ns, A, '-backend=nftables'), failed)).toBe(71);
      expect(failed.stdout).toBe('');
      expect(failed.stderr).toMatch(/error: applied with nftables, but could not remove the old rules in iptables-nft IPv4, emptied by the same transaction, no longer redirecting, but left behind: .*run the apply again, or cleanup/);
      expect(await nftTable(ns)).toContain('table inet consul_tproxy');
      for (const family of [4, 6] as const) {
        const left = await natRules(ns, { family });
        expect(left, `IPv${family}: the chains and the jumps into them are still there`).toContain('-N CONSUL_PROXY_OUTPUT');
        expect(left, `IPv${family}: but the chains hold no rule`).not.toMatch(/^-A CONSUL_/m);
      }
      // A bare status: the last apply did not finish.
      expect((await runCli(['status', '-netns', ns.path])).exitCode).not.toBe(0);
      const repaired = await cli(applyArgs(ns, A, '-backend=nftables'));
      expect(repaired.stderr).toMatch(/removed the redirection rules from iptables-nft IPv4/);
      await expectNoIptablesRules(ns);
      await cli(['status', '-netns', ns.path], 0);
    });

    it('moves our own iptables rules to nftables; auto then keeps nftables', async () => {
      const ns = await testNamespace();
      const flags = { ...A, dualStack: true };
      // Our iptables backend (the nft variant); auto on a clean namespace picks iptables.
      expect((await cli(applyArgs(ns, flags))).stdout).toMatch(/\(iptables-nft/);
      expect(await nftTable(ns)).toBeUndefined();

      // To nftables: the table appears, both families' chains go.
      const toNft = await cli(applyArgs(ns, flags, '-backend=nftables'));
      expect(`${toNft.stdout}${toNft.stderr}`).toMatch(/removed the redirection rules from iptables-nft IPv4/);
      expect(`${toNft.stdout}${toNft.stderr}`).toMatch(/removed the redirection rules from iptables-nft IPv6/);
      await expectNoIptablesRules(ns);
      expect(await nftTable(ns)).toContain('table inet consul_tproxy');
      // auto now keeps nftables, for the same flags and for changed ones.
      expect((await cli(applyArgs(ns, flags))).stdout).toMatch(/already in place.*\(nftables/);
      expect((await cli(applyArgs(ns, { ...flags, inboundPort: 20002 }))).stdout).toMatch(/^applied .*\(nftables/);
      await expectNoIptablesRules(ns);
      await cli(statusArgs(ns, { ...flags, inboundPort: 20002 }), 0);
    });

    it('moves back with -backend=iptables, removing the nft table only once the iptables transactions succeed; auto then keeps iptables', async () => {
      const ns = await testNamespace();
      const flags = { ...A, dualStack: true };
      await cli(applyArgs(ns, flags, '-backend=nftables'));

      // With iptables-restore failing, the nft table must stay, untouched, and no iptables rule appear.
      const tableBefore = await nftTable(ns);
      expect(tableBefore).toContain('table inet consul_tproxy');
      const failed = await runCli(applyArgs(ns, flags, '-backend=iptables'), { env: failingRestorePath() });
      expect(failed.exitCode, describeRun(applyArgs(ns, flags, '-backend=iptables'), failed)).not.toBe(0);
      expect(await nftTable(ns), 'the nft table is removed only after the iptables transactions succeed').toBe(tableBefore);
      await expectNoIptablesRules(ns);

      // For real: chains in both families, the nft table gone.
      const toIptables = await cli(applyArgs(ns, flags, '-backend=iptables'));
      expect(toIptables.stdout).toMatch(/^applied .*\(iptables-nft/);
      expect(`${toIptables.stdout}${toIptables.stderr}`).toMatch(/removed the redirection rules from nftables inet consul_tproxy/);
      expect(await nftTable(ns)).toBeUndefined();
      expect(await natRules(ns, { family: 4 })).toContain('-A OUTPUT -p tcp -j CONSUL_PROXY_OUTPUT');
      expect(await natRules(ns, { family: 6 })).toContain('-A OUTPUT -p tcp -j CONSUL_PROXY_OUTPUT');
      // auto now keeps iptables.
      expect((await cli(applyArgs(ns, flags))).stdout).toMatch(/already in place.*\(iptables-nft/);
      expect((await cli(applyArgs(ns, { ...flags, inboundPort: 20003 }))).stdout).toMatch(/^applied .*\(iptables-nft/);
      expect(await nftTable(ns)).toBeUndefined();
      await cli(statusArgs(ns, { ...flags, inboundPort: 20003 }), 0);
    });

    it("takes over Consul's own inet consul_tproxy table: drifted (one rule per exclusion, not sets), then in sync, then cleaned to the prior ruleset", async () => {
      const { vm, peer } = await testTopology();
      await addForeignNftRules(vm);
      const prior = await nftRuleset(vm);
      const { dnsPort: _, ...consulFlags } = A;
      await nftLoad(vm, consulNftScript(consulFlags));
      const consulTable = (await nftTable(vm)) ?? '';
      expect(consulTable).toContain('ip daddr 198.18.1.0/24 return');
      expect(consulTable).toContain('meta skuid 42003 return');

      // Consul's table is ours to manage: status sees it, but it is not the set-based layout we write.
      const status = await cli(statusArgs(vm, consulFlags), 3);
      expect(status.stdout).toContain('nftables inet consul_tproxy');
      await expectNoIptablesRules(vm);

      // auto picks nftables, since the table exists.
      const applied = await cli(applyArgs(vm, consulFlags));
      expect(applied.stdout).toMatch(/^applied .*\(nftables/);
      await cli(statusArgs(vm, consulFlags), 0);
      await expectNoIptablesRules(vm);
      await startServer(vm, 'outbound', ['tcp:0.0.0.0:15001']);
      await startServer(peer, 'peer', ['tcp:0.0.0.0:8080']);
      expectRedirected(await probe(vm, { host: ADDR.peer4, port: 8080, uid: UID.ordinary }), 'outbound', ADDR.peer4, 8080);

      await cli(['cleanup', '-netns', vm.path]);
      expect(await nftRuleset(vm)).toBe(prior);
    });

    it("cleanup removes Consul's own table as loaded, back to the prior ruleset", async () => {
      const ns = await testNamespace();
      await addForeignNftRules(ns);
      const prior = await nftRuleset(ns);
      await nftLoad(ns, consulNftScript(B));
      await cli(['cleanup', '-netns', ns.path]);
      expect(await nftRuleset(ns)).toBe(prior);
    });

    it('a dormant table (none of its rules run) is drift: apply replaces it with a working one, cleanup deletes it', async () => {
      const ns = await testNamespace();
      const dormant = () => ns.must('nft', 'add', 'table', 'inet', 'consul_tproxy', '{ flags dormant; }');
      // A dormant table with nothing in it: ours, and nothing like what an apply wants.
      await dormant();
      await cli(statusArgs(ns, A), 3);
      await cli(applyArgs(ns, A, '-backend=nftables'));
      // Deleting and redefining the table in one transaction leaves it without the flag.
      expect(await nftTable(ns)).not.toContain('dormant');
      await cli(statusArgs(ns, A), 0);

      // Our table made dormant: status names the flag (nft 1.0.6 misprints it, newer nft says `dormant`).
      await dormant();
      expect(await nftTable(ns)).toContain('flags dormant');
      const drifted = await runCli(statusArgs(ns, A));
      expect(drifted.exitCode, describeRun(statusArgs(ns, A), drifted)).toBe(3);
      expect(drifted.stdout).toMatch(/! nftables inet consul_tproxy: table flags \S+: our rules (do|may) not run/);
      const repaired = await cli(applyArgs(ns, A, '-backend=nftables'));
      expect(repaired.stdout).toMatch(/^applied .*\(nftables/);
      expect(await nftTable(ns)).not.toContain('dormant');
      await cli(statusArgs(ns, A), 0);

      await dormant();
      await cli(['cleanup', '-netns', ns.path]);
      expect(await nftTable(ns)).toBeUndefined();
    });

    it("an operator's chain in our table: status names it, apply and cleanup remove it and say so", async () => {
      const ns = await testNamespace();
      const addOperatorChain = () =>
        ns.must('nft', 'add', 'chain', 'inet', 'consul_tproxy', 'OPERATOR_CHAIN', '{ type filter hook output priority 0; policy drop; }');
      const removed =
        "redirect-traffic: warning: removed something of someone else's from our table (nftables inet consul_tproxy): " +
        'chain OPERATOR_CHAIN (type filter hook output priority 0; policy drop;, 0 rules)';
      await cli(applyArgs(ns, A, '-backend=nftables'));
      await addOperatorChain();
      expect((await runCli(statusArgs(ns, A))).stdout).toContain('unexpected chain OPERATOR_CHAIN (0 rules)');

      const applied = await cli(applyArgs(ns, A, '-backend=nftables'));
      expect(applied.stderrLines).toEqual([removed]);
      expect(await nftTable(ns)).not.toContain('OPERATOR_CHAIN');
      await cli(statusArgs(ns, A), 0);

      await addOperatorChain();
      const cleaned = await cli(['cleanup', '-netns', ns.path]);
      expect(cleaned.stderrLines).toEqual([removed]);
      expect(await nftTable(ns)).toBeUndefined();
    });
  },
  { requires: ['nft', 'iptables-nft', 'iptables-legacy', 'ip6tables-legacy'] },
);
