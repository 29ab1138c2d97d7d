import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { expect, it, onTestFinished } from 'vitest';
import { applyArgs, CLI, cli, describeE2E, describeRun, findProgram, natRules, runCli, statusArgs, testNamespace, type RedirectFlags } from '../helpers/e2e.ts';
import type { Netns } from '../helpers/netns.ts';
import { nftTable, waitForNoProcesses } from '../helpers/nft.ts';

// The nftables table under violence: an apply killed with SIGKILL at a random moment, and sixteen applies
// racing each other. The table is replaced by one `nft -f` transaction, so it is always exactly one run's
// configuration: never absent, never half of one and half of another.

const NFT = '-backend=nftables';
const TEMP_FAIL = 75;

// 300 IPv4 and 300 IPv6 excluded CIDRs: a transaction large enough to take a while.
const MANY_CIDRS = [
  ...Array.from({ length: 300 }, (_, i) => `198.19.${i >> 8}.${i & 255}/32`),
  ...Array.from({ length: 300 }, (_, i) => `2001:db8:9::${i.toString(16)}/128`),
];
const A: RedirectFlags = { proxyUid: 1234, inboundPort: 20000, excludeOutboundCidrs: MANY_CIDRS, excludeUids: [1000], dualStack: true };
const B: RedirectFlags = { proxyUid: 1234, inboundPort: 20001, excludeInboundPorts: ['22'], excludeOutboundPorts: ['9090'] };

/** Starts an apply without waiting for it, as the leader of its own process group (as a systemd unit's cgroup would hold it). */
function startApply(args: readonly string[]): { child: ChildProcess; done: Promise<{ code: number | null; signal: NodeJS.Signals | null }> } {
  const child = spawn(process.execPath, [CLI, ...args], {
    env: { PATH: process.env['PATH'] ?? '/usr/sbin:/usr/bin:/sbin:/bin', HOME: process.env['HOME'] ?? '/root', NO_COLOR: '1' },
    stdio: 'ignore',
    detached: true,
  });
  const done = once(child, 'exit').then(([code, signal]) => ({ code: code as number | null, signal: signal as NodeJS.Signals | null }));
  return { child, done };
}

/** Whether an `nft -f` runs inside `ns` right now: found through /proc, without starting a process. */
function nftWriting(ns: Netns): boolean {
  const inode = statSync(ns.path).ino;
  for (const pid of readdirSync('/proc').filter((entry) => /^\d+$/.test(entry))) {
    try {
      if (readlinkSync(`/proc/${pid}/ns/net`) !== `net:[${inode}]`) continue;
      const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
      if (/(^|\/)nft$/.test(argv[0] ?? '') && argv.includes('-f')) return true;
    } catch {
      // gone meanwhile
    }
  }
  return false;
}

/** Resolves once an `nft -f` runs in `ns`, or `finished` settles first; polls every few milliseconds. */
async function untilNftWrites(ns: Netns, finished: Promise<unknown>): Promise<void> {
  let over = false;
  void finished.then(() => (over = true));
  while (!over && !nftWriting(ns)) await sleep(2);
}

/** Which of the configurations the table is exactly; fails on absent (4) or a mix (3 for every one). */
async function installedConfig(ns: Netns, candidates: Record<string, RedirectFlags>): Promise<string> {
  const verdicts: Record<string, number> = {};
  for (const [name, flags] of Object.entries(candidates)) {
    const result = await runCli(statusArgs(ns, flags, NFT));
    verdicts[name] = result.exitCode;
    if (result.exitCode === 0) return name;
    expect(result.exitCode, `the table is drifted from ${name}, not absent:\n${describeRun(statusArgs(ns, flags), result)}`).toBe(3);
  }
  throw new Error(`the table matches none of ${Object.keys(candidates).join(', ')}: ${JSON.stringify(verdicts)}\n${await nftTable(ns)}`);
}

describeE2E(
  'nftables backend: SIGKILL and racing applies',
  () => {
    // Twenty kills, two ways to die, four rounds per test (each under ~30 s on a loaded machine):
    // - `timed`: only the CLI is killed, after a random share of an uninterrupted apply's duration; an `nft -f`
    //   it had started may still commit, as an orphan.
    // - `in-write`: the moment its `nft -f` runs (plus 0-20 ms), the whole process group is killed, nft included,
    //   as systemd kills a unit's cgroup: the transaction must then be all or nothing.
    it.each([
      ['timed', 1],
      ['timed', 2],
      ['timed', 3],
      ['in-write', 1],
      ['in-write', 2],
    ] as const)('SIGKILL (%s, batch %s) leaves the table exactly as before or exactly as asked, never absent or mixed; the next apply repairs', async (mode, _batch) => {
      const ns = await testNamespace();
      await cli(applyArgs(ns, B, NFT));
      let duration = 0;
      if (mode === 'timed') {
        // How long an uninterrupted apply of A over B takes here, to spread the kills over it.
        const started = Date.now();
        await cli(applyArgs(ns, A, NFT));
        duration = Date.now() - started;
        await cli(applyArgs(ns, B, NFT));
      }
      const outcomes = { A: 0, B: 0, killed: 0 };
      // Four rounds, and more (up to eight) until a kill has landed mid-run: the machine's speed varies.
      for (let round = 0; round < 4 || (outcomes.killed === 0 && round < 8); round++) {
        const apply = startApply(applyArgs(ns, A, NFT));
        if (mode === 'timed') await Promise.race([sleep(Math.random() * duration * 0.9), apply.done]);
        else await untilNftWrites(ns, apply.done).then(() => sleep(Math.random() * 20));
        try {
          process.kill(mode === 'timed' ? apply.child.pid! : -apply.child.pid!, 'SIGKILL');
        } catch {
          // already exited
        }
        const { code, signal } = await apply.done;
        if (signal === 'SIGKILL') outcomes.killed += 1;
        else expect(code, `round ${round}: an apply that finished before the kill succeeded`).toBe(0);
        // An orphaned nft may still be committing: the table is read once nothing runs in the namespace.
        await waitForNoProcesses(ns);
        // Asked first for the likelier outcome: one status run fewer per round.
        const found = (await installedConfig(ns, mode === 'in-write' ? { B, A } : { A, B })) as 'A' | 'B';
        outcomes[found] += 1;
        if (found === 'A') await cli(applyArgs(ns, B, NFT));
      }
      console.info(`SIGKILL ${mode}${duration ? ` (an apply takes ${duration} ms)` : ''}: ${JSON.stringify(outcomes)}`);
      expect(outcomes.killed, 'at least one apply was killed mid-run').toBeGreaterThan(0);
      await cli(applyArgs(ns, A, NFT));
      await cli(statusArgs(ns, A), 0);
    });

    // PATH decides which programs exist, as for Consul: a PATH without nft is a host without nft.
    it('with nft left out of PATH, -backend=nftables apply, status and cleanup exit 72 naming the package and where nft is', async () => {
      const ns = await testNamespace();
      await cli(applyArgs(ns, B, NFT));
      const table = await nftTable(ns);
      const nft = findProgram('nft')!;
      const PATH = pathWithoutNft();
      for (const args of [applyArgs(ns, B, NFT), statusArgs(ns, B, NFT), ['cleanup', '-netns', ns.path, NFT]]) {
        const result = await runCli(args, { env: { PATH } });
        expect(result.exitCode, describeRun(args, result)).toBe(72);
        expect(result.stderrLines, describeRun(args, result)).toEqual([
          expect.stringMatching(new RegExp(`nft is not installed .*\\(${nft} is installed, but PATH lacks ${dirname(nft)}\\).*install the 'nftables' package`)),
        ]);
      }
      expect(await nftTable(ns)).toBe(table);
    });

    // The table is in the kernel whatever happened to nft: unread, status would call it absent, cleanup would
    // find nothing (and drop the record), and an auto apply would add iptables rules beside it.
    it('with nft gone after an nftables apply, an auto apply, a bare status and cleanup exit 72 and change nothing', async () => {
      const ns = await testNamespace();
      await cli(applyArgs(ns, B, NFT));
      const table = await nftTable(ns);
      const env = { PATH: pathWithoutNft() };
      for (const args of [applyArgs(ns, B), ['status', '-netns', ns.path], ['cleanup', '-netns', ns.path]]) {
        const result = await runCli(args, { env });
        expect(result.exitCode, describeRun(args, result)).toBe(72);
        expect(result.stderrLines, describeRun(args, result)).toEqual([
          expect.stringMatching(/the last apply here wrote its rules with nftables, which cannot be read now: nftables is not usable here: .*install the 'nftables' package to read or remove them$/),
        ]);
      }
      expect(await nftTable(ns)).toBe(table);
      for (const family of [4, 6] as const) expect(await natRules(ns, { family }), `IPv${family}`).not.toContain('CONSUL_');
      // The record is still there: with nft back, a bare status compares against it.
      await cli(['status', '-netns', ns.path], 0);
    });

    // nft sees iptables-nft's chains (both are nf_tables) but cannot remove them the way iptables wrote them.
    it('on a host with nft alone, CONSUL_* chains in iptables-nft make apply, status and cleanup exit 72 naming them, changing nothing', async () => {
      const ns = await testNamespace();
      await ns.must('iptables', '-t', 'nat', '-N', 'CONSUL_PROXY_OUTPUT');
      await ns.must('iptables', '-t', 'nat', '-A', 'CONSUL_PROXY_OUTPUT', '-p', 'tcp', '-j', 'REDIRECT', '--to-ports', '15001');
      await ns.must('iptables', '-t', 'nat', '-A', 'OUTPUT', '-p', 'tcp', '-j', 'CONSUL_PROXY_OUTPUT');
      const before = await natRules(ns, { family: 4 });
      const env = { PATH: pathWithoutIptables() };
      for (const args of [applyArgs(ns, B), applyArgs(ns, B, NFT), statusArgs(ns, B), ['status', '-netns', ns.path], ['cleanup', '-netns', ns.path]]) {
        const result = await runCli(args, { env });
        expect(result.exitCode, describeRun(args, result)).toBe(72);
        expect(result.stderrLines, describeRun(args, result)).toEqual([
          expect.stringMatching(/iptables-nft IPv4 holds CONSUL_PROXY_OUTPUT \(Consul's classic rules, or ours\), and no installed program can read or remove them: install the 'iptables' package/),
        ]);
        expect(result.stdout, describeRun(args, result)).toBe('');
      }
      expect(await natRules(ns, { family: 4 })).toBe(before);
      expect(await nftTable(ns)).toBeUndefined();
    });

    it('cleanup limited by -backend to where our rules are not says where they are, and keeps the record', async () => {
      const ns = await testNamespace();
      await cli(applyArgs(ns, B, NFT));
      const cleaned = await cli(['cleanup', '-netns', ns.path, '-backend=iptables']);
      expect(cleaned.stdout).toBe(`nothing to clean up in netns ${ns.path}: the redirection rules are in nftables inet consul_tproxy, which -backend leaves out\n`);
      expect(await nftTable(ns)).toContain('table inet consul_tproxy');
      const bare = await runCli(['status', '-netns', ns.path]);
      expect(bare.exitCode, describeRun(['status'], bare)).toBe(0);
      expect(bare.stdout).toMatch(/^status: in-sync \(compared with the last apply's settings\)/);
    });

    it('16 applies with different inbound ports racing on one namespace leave exactly one run’s table', async () => {
      const ns = await testNamespace();
      const configs = Array.from({ length: 16 }, (_, i): RedirectFlags => ({ ...B, inboundPort: 20000 + i, dualStack: i % 2 === 0 }));
      const results = await Promise.all(configs.map((flags) => runCli(applyArgs(ns, flags, NFT))));
      results.forEach((result, i) => {
        expect([0, TEMP_FAIL], describeRun(applyArgs(ns, configs[i]!, NFT), result)).toContain(result.exitCode);
      });
      const succeeded = results.flatMap((result, i) => (result.exitCode === 0 ? [i] : []));
      expect(succeeded.length, 'at least one apply succeeded').toBeGreaterThan(0);
      const verdicts = await Promise.all(configs.map(async (flags) => (await runCli(statusArgs(ns, flags))).exitCode));
      const matching = verdicts.flatMap((code, i) => (code === 0 ? [i] : []));
      expect(matching, `status exit codes per inbound port: ${verdicts.join(' ')}`).toHaveLength(1);
      expect(verdicts.filter((code) => code !== 0 && code !== 3), 'no status says absent').toEqual([]);
      expect(succeeded, 'the table is that of a run that succeeded').toContain(matching[0]);
    });
  },
  { requires: ['nft'] },
);

/** A PATH where nft is not, but every other program of its directory is: a host without nft. */
const pathWithoutNft = () => pathWithout('nft', (name) => name === 'nft');

/** The same without any iptables program: a host with nft alone. */
const pathWithoutIptables = () => pathWithout('iptables', (name) => /^(ip6?tables|xtables|arptables|ebtables)/.test(name));

/** A PATH with `program`'s directory but for the programs `left` names, then the usual directories without it. */
function pathWithout(program: string, left: (name: string) => boolean): string {
  const found = findProgram(program)!;
  const dir = mkdtempSync(join(tmpdir(), `rt-e2e-no-${program}-`));
  onTestFinished(() => rmSync(dir, { recursive: true, force: true }));
  for (const name of readdirSync(dirname(found))) if (!left(name)) symlinkSync(join(dirname(found), name), join(dir, name));
  return [dir, ...['/usr/local/bin', '/usr/bin', '/bin'].filter((other) => other !== dirname(found))].join(':');
}
