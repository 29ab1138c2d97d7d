import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { expect, it, onTestFinished } from 'vitest';
import { LOCK_DIR, lockNamespace, lockPath, namespaceKey } from '../../src/host/exclusive.ts';
import { RECORD_DIR } from '../../src/host/record.ts';
import {
  applyArgs,
  CLI,
  cli,
  describeE2E,
  describeRun,
  expectFailureChangesNothing,
  natRules,
  runCli,
  saveEverything,
  statusArgs,
  testNamespace,
  type RedirectFlags,
} from '../helpers/e2e.ts';
import { runCommand, type Netns } from '../helpers/netns.ts';
import { PYTHON } from '../helpers/traffic.ts';

// Issue 10: the attacks that found defects 2 to 6, replayed as they were made, each in namespaces of its own.

const TEMP_FAIL = 75;
const FLAGS: RedirectFlags = { proxyUid: 901, inboundPort: 20000 };
const CIDRS = (n: number) => Array.from({ length: n }, (_, i) => `198.19.${i >> 8}.${i & 255}/32`);

/** The namespace lock a run takes (src/host/exclusive.ts): a unix socket in a root-only directory. */
const lockName = (ns: Netns) => lockPath(ns.path, 'write');

/** The pid the namespace lock's holder answers with, or undefined when nobody holds it. */
function lockHolder(ns: Netns): Promise<number | undefined> {
  return new Promise((resolve) => {
    const socket = connect({ path: lockName(ns) });
    let text = '';
    socket.setTimeout(200, () => socket.destroy());
    socket.on('data', (chunk: Buffer) => (text += chunk.toString()));
    socket.on('close', () => resolve(/^\d+$/.test(text.trim()) ? Number(text.trim()) : undefined));
    socket.on('error', () => undefined);
  });
}

/** A namespace whose record of the last apply is removed with it (an inode can be reused by a later namespace). */
async function recordedNamespace(): Promise<Netns> {
  const ns = await testNamespace();
  const record = join(RECORD_DIR, `${namespaceKey(ns.path)}.json`);
  onTestFinished(() => rmSync(record, { force: true }));
  return ns;
}

interface TimedRun {
  pid: number;
  /** stderr lines, each with the ms since the run started at which it arrived. */
  lines: { at: number; text: string }[];
  done: Promise<{ exitCode: number | null; stderr: string; stdout: string }>;
}

/** Starts the CLI, timing each stderr line as it arrives. Killed after 60 s at the latest. */
function startTimed(args: readonly string[]): TimedRun {
  const started = Date.now();
  const child = spawn(process.execPath, [CLI, ...args], { env: { PATH: process.env['PATH'] ?? '', NO_COLOR: '1' } });
  const lines: TimedRun['lines'] = [];
  let stderr = '';
  let stdout = '';
  let partial = '';
  child.stderr.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
    partial += chunk.toString();
    const parts = partial.split('\n');
    partial = parts.pop() ?? '';
    for (const text of parts) if (text.trim() !== '') lines.push({ at: Date.now() - started, text });
  });
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
  const done = new Promise<{ exitCode: number | null; stderr: string; stdout: string }>((resolve) =>
    child.once('close', (exitCode) => {
      clearTimeout(timer);
      resolve({ exitCode, stderr, stdout });
    }),
  );
  return { pid: child.pid ?? -1, lines, done };
}

/**
 * A loop inside the namespace running `commands` (errors ignored) until the stop file appears or 30 s
 * pass; prints its number of rounds.
 */
const FLUSHER = String.raw`
  stop="$1"; shift; end=$((SECONDS + 30)); n=0
  while [ ! -e "$stop" ] && [ $SECONDS -lt $end ]; do
    n=$((n+1))
    for command in "$@"; do $command 2>/dev/null; done
  done
  echo $n
`;

describeE2E(
  'issue 10: robustness',
  () => {
    it.each([
      ['iptables -t nat -F', ['iptables -t nat -F']],
      ['iptables -t nat -F; iptables -t nat -X', ['iptables -t nat -F', 'iptables -t nat -X']],
    ])('defect 2: 16 applies at once while a loop runs `%s` all exit 0 or 75, never 70 or 71', async (_name, commands) => {
      const ns = await recordedNamespace();
      const stop = `/tmp/${ns.name}.stop`;
      onTestFinished(() => rmSync(stop, { force: true }));
      const flusher = ns.run('bash', ['-c', FLUSHER, 'flusher', stop, ...commands], { timeoutMs: 50_000 });
      const args = applyArgs(ns, { ...FLAGS, excludeOutboundCidrs: CIDRS(100) });
      let results;
      let finished = 0;
      try {
        // The loop stops once half of the runs are done: they all met it, and the runs still queued on the
        // namespace lock (each holds it for its bounded retries) then finish quickly, keeping the test short.
        results = await Promise.all(
          Array.from({ length: 16 }, async () => {
            const result = await runCli(args);
            if (++finished === 8) await ns.run('touch', [stop]);
            return result;
          }),
        );
      } finally {
        await ns.must('touch', stop);
      }
      const rounds = Number((await flusher).stdout.trim());
      expect(rounds, 'the flush loop ran').toBeGreaterThan(1);
      const codes = results.map((result) => result.exitCode);
      for (const result of results) {
        expect([0, TEMP_FAIL], describeRun(args, result)).toContain(result.exitCode);
        if (result.exitCode === TEMP_FAIL) {
          const errors = result.stderrLines.filter((line) => !/waiting up to \d+s for /.test(line));
          expect(errors, describeRun(args, result)).toHaveLength(1);
        }
      }
      console.info(`${commands.join('; ')}: ${rounds} rounds; exit codes ${JSON.stringify(codes)}`);
      // Once the loop stops, an apply puts everything back.
      await cli(args);
      await cli(statusArgs(ns, { ...FLAGS, excludeOutboundCidrs: CIDRS(100) }), 0);
    });

    // The cold judge's repro: a writer deleting and adding our IPv6 jump again and again while an apply empties
    // that family (or a cleanup runs) failed our write in turns ("Bad rule", then "CHAIN_DEL ... busy") on a
    // table that mostly read the same, which was taken for a deterministic refusal: exit 71.
    it('defect 2: a writer deleting and re-adding our jump while a family is emptied, and while cleanup runs: 0 or 75, never 71', async () => {
      const ns = await recordedNamespace();
      const codes: number[] = [];
      for (let round = 0; round < 12; round++) {
        const cleanupRound = round % 3 === 2;
        await cli(applyArgs(ns, { ...FLAGS, dualStack: true }, '-backend=iptables'));
        const stop = `/tmp/${ns.name}.stop`;
        rmSync(stop, { force: true });
        const jump = cleanupRound ? 'iptables' : 'ip6tables';
        const flapper = ns.run('bash', ['-c', FLUSHER, 'flapper', stop,
          `${jump} -t nat -D OUTPUT -p tcp -j CONSUL_PROXY_OUTPUT`, `${jump} -t nat -A OUTPUT -p tcp -j CONSUL_PROXY_OUTPUT`], { timeoutMs: 50_000 });
        const args = cleanupRound ? ['cleanup', '-netns', ns.path] : applyArgs(ns, { ...FLAGS, proxyUid: 902 });
        const result = await runCli(args);
        await ns.must('touch', stop);
        await flapper;
        expect([0, TEMP_FAIL], describeRun(args, result)).toContain(result.exitCode);
        codes.push(result.exitCode);
      }
      rmSync(`/tmp/${ns.name}.stop`, { force: true });
      console.info(`flapping jump: exit codes ${JSON.stringify(codes)}`);
    });

    it('defect 3: a chain still referenced from outside iptables (an nft verdict map) makes the kernel refuse: exit 71, once, nothing changed', async () => {
      const ns = await recordedNamespace();
      await cli(applyArgs(ns, { ...FLAGS, dualStack: true }, '-backend=iptables'));
      // A filter table too, as on any real host: the survey's dump (every table) then differs from later reads
      // of the nat table, which once made this refusal look like another writer at work (75).
      await ns.must('iptables', '-A', 'INPUT', '-s', '198.18.9.9/32', '-j', 'ACCEPT');
      // The attacker's repro: a rule iptables-nft cannot show (a verdict map) in table ip nat, jumping into our chain.
      for (const family of ['ip', 'ip6']) {
        await ns.must('nft', 'add', 'chain', family, 'nat', 'FOO');
        const address = family === 'ip' ? '198.18.5.5' : '2001:db8:5::5';
        await ns.must('nft', 'add', 'rule', family, 'nat', 'FOO', `${family}`, 'daddr', 'vmap', `{ ${address} : jump CONSUL_PROXY_OUTPUT }`);
      }
      // iptables-nft-save shows the rule without its jump: no way for us to delete it.
      expect(await natRules(ns)).toContain('-A FOO');
      expect(await natRules(ns)).not.toContain('-A FOO -j CONSUL_PROXY_OUTPUT');

      // cleanup: CHAIN_DEL is refused with EBUSY (iptables-nft-restore exit 4), which is no lock: exit 71,
      // one error per family, each tried once more from a fresh read and not retried as temporary.
      const before = await saveEverything(ns);
      const started = Date.now();
      const cleanup = await runCli(['cleanup', '-netns', ns.path]);
      const elapsed = Date.now() - started;
      const context = describeRun(['cleanup', '-netns', ns.path], cleanup);
      expect(cleanup.exitCode, context).toBe(71);
      expect(cleanup.stdout, context).toBe('');
      expect(cleanup.stderrLines, context).toHaveLength(2);
      for (const [line, label] of [
        [cleanup.stderrLines.find((l) => l.includes('IPv4')), 'iptables-nft-restore'],
        [cleanup.stderrLines.find((l) => l.includes('IPv6')), 'ip6tables-nft-restore'],
      ]) {
        expect(line, context).toMatch(/^redirect-traffic: error: iptables-nft, IPv[46]: /);
        expect(line, context).toContain(`${label} failed (exit 4)`);
        expect(line, context).toContain('CHAIN_DEL failed (Device or resource busy)');
        expect(line, context).toContain('the kernel refused');
        expect(line, context).not.toMatch(/gave up|try again later|kept changing/);
      }
      expect(await saveEverything(ns)).toEqual(before);
      console.info(`cleanup refused by the kernel in ${elapsed} ms:\n${cleanup.stderr.trim()}`);
      // The rules and the record of the last apply are still there.
      await cli(['status', '-netns', ns.path], 0);

      // An apply dropping IPv6 must delete the IPv6 chains: refused the same way, and rolled back.
      const drop = await expectFailureChangesNothing(ns, applyArgs(ns, FLAGS, '-backend=iptables'), { code: 71, allowWarnings: true });
      expect(drop.stderr).toContain('CHAIN_DEL failed (Device or resource busy)');
      expect(drop.stderr).not.toMatch(/gave up|try again later/);

      // With the reference gone, both work.
      for (const family of ['ip', 'ip6']) await ns.must('nft', 'delete', 'chain', family, 'nat', 'FOO');
      await cli(applyArgs(ns, FLAGS, '-backend=iptables'));
      await cli(['cleanup', '-netns', ns.path]);
      expect(await natRules(ns)).not.toContain('CONSUL_');
    });

    it("defect 4: dropping -dual-stack, and cleanup, name the foreign IPv6 rule that jumped into our chains", async () => {
      const ns = await recordedNamespace();
      const warning =
        "redirect-traffic: warning: removed a rule of someone else's that jumped into our chains (iptables-nft IPv6): -A FOREIGN -j CONSUL_PROXY_OUTPUT";
      await cli(applyArgs(ns, { ...FLAGS, dualStack: true }));
      await ns.must('ip6tables-nft', '-t', 'nat', '-N', 'FOREIGN');
      await ns.must('ip6tables-nft', '-t', 'nat', '-A', 'FOREIGN', '-j', 'CONSUL_PROXY_OUTPUT');
      const drop = await cli(applyArgs(ns, FLAGS));
      expect(drop.stderrLines, describeRun(applyArgs(ns, FLAGS), drop)).toContain(warning);
      const ipv6 = await natRules(ns, { family: 6 });
      expect(ipv6).not.toContain('CONSUL_');
      expect(ipv6).toContain('-N FOREIGN');
      await cli(statusArgs(ns, FLAGS), 0);

      await cli(applyArgs(ns, { ...FLAGS, dualStack: true }));
      await ns.must('ip6tables-nft', '-t', 'nat', '-A', 'FOREIGN', '-j', 'CONSUL_PROXY_OUTPUT');
      const cleanup = await cli(['cleanup', '-netns', ns.path]);
      expect(cleanup.stderrLines, describeRun(['cleanup'], cleanup)).toEqual([warning]);
      expect(await natRules(ns, { family: 6 })).not.toContain('CONSUL_');
      expect(await natRules(ns, { family: 4 })).not.toContain('CONSUL_');
    });

    it('defect 5: an iptables-legacy apply waiting for the xtables lock says who holds it, then succeeds', async () => {
      const ns = await recordedNamespace();
      // The lock is host-wide: held for 3 s only.
      const holder = spawn('flock', ['/run/xtables.lock', '-c', 'echo held; exec sleep 3'], { stdio: ['ignore', 'pipe', 'ignore'] });
      onTestFinished(() => void holder.kill('SIGKILL'));
      const holderDone = new Promise<number>((resolve) => holder.once('exit', () => resolve(Date.now())));
      await new Promise<void>((resolve, reject) => {
        holder.stdout.on('data', (chunk: Buffer) => chunk.toString().includes('held') && resolve());
        holder.once('exit', () => reject(new Error('flock exited before holding the lock')));
      });
      const started = Date.now();
      const run = startTimed(applyArgs(ns, FLAGS, '-iptables-mode=legacy'));
      const result = await run.done;
      const released = await holderDone;
      const context = `exit ${result.exitCode}\nstderr (ms since start): ${JSON.stringify(run.lines)}`;
      expect(result.exitCode, context).toBe(0);
      const notice = run.lines.find((line) => line.text.includes('waiting up to 10s for the xtables lock (/run/xtables.lock)'));
      expect(notice, context).toBeDefined();
      expect(notice!.text, context).toMatch(new RegExp(`held by pid ${holder.pid}\\b`));
      // Said while waiting (before the lock was let go), ~1 s into the wait; a loaded machine starts slower.
      expect(started + notice!.at, context).toBeLessThan(released);
      expect(notice!.at, context).toBeLessThan(3_000);
      await cli(statusArgs(ns, FLAGS, '-iptables-mode=legacy'), 0);
    });

    it('defect 5: two of our runs on one namespace: the one that waits past 0.75 s names the other; both succeed', async () => {
      const ns = await recordedNamespace();
      const big: RedirectFlags = { ...FLAGS, excludeOutboundCidrs: CIDRS(10_000) };
      const first = startTimed(applyArgs(ns, big));
      // The second starts once the first holds the namespace lock (it parses 10,000 flags first).
      const lockDeadline = Date.now() + 20_000;
      while ((await lockHolder(ns)) !== first.pid && Date.now() < lockDeadline) await sleep(20);
      const second = startTimed(applyArgs(ns, { ...FLAGS, inboundPort: 20001 }));
      const [a, b] = await Promise.all([first.done, second.done]);
      const context = `first (pid ${first.pid}): ${JSON.stringify(a)}, lines ${JSON.stringify(first.lines)}\nsecond (pid ${second.pid}): ${JSON.stringify(b)}, lines ${JSON.stringify(second.lines)}`;
      expect(a.exitCode, context).toBe(0);
      expect(b.exitCode, context).toBe(0);
      expect(first.lines, context).toEqual([]);
      // Whether the wait passed 0.75 s depends on the machine's speed: if it did, it is said, naming the first.
      for (const line of second.lines) {
        expect(line.text, context).toBe(
          `redirect-traffic: warning: waiting up to 20s for redirect-traffic (pid ${first.pid}) to finish with the rules of netns ${ns.path} (lock ${lockName(ns)})`,
        );
        expect(line.at, context).toBeGreaterThanOrEqual(750);
      }
      expect(second.lines.length, context).toBeLessThanOrEqual(1);
      await cli(statusArgs(ns, { ...FLAGS, inboundPort: 20001 }), 0);
      console.info(`namespace lock, second run: ${JSON.stringify(second.lines)}`);
    });

    it('a lock socket left by a holder that died (SIGKILL) does not block the next run, which removes it', async () => {
      const ns = await recordedNamespace();
      mkdirSync(LOCK_DIR, { recursive: true, mode: 0o700 });
      // A holder that listened on the lock socket and was killed: the file stays, and refuses connections.
      const dead = spawn(PYTHON, ['-c', `import socket,os,signal\ns=socket.socket(socket.AF_UNIX); s.bind(${JSON.stringify(lockName(ns))}); s.listen(1)\nos.kill(os.getpid(), signal.SIGKILL)`]);
      await new Promise((resolve) => dead.on('exit', resolve));
      expect(existsSync(lockName(ns))).toBe(true);
      const started = performance.now();
      const result = await cli(applyArgs(ns, FLAGS));
      expect(result.stderr).toBe('');
      expect(performance.now() - started).toBeLessThan(10_000);
      // Released: nothing left behind for the run after.
      expect(existsSync(lockName(ns))).toBe(false);
    });

    it('a watch lock left by a watch that died (SIGKILL) is taken at once by the next one, which waits for nothing', async () => {
      const ns = await recordedNamespace();
      mkdirSync(LOCK_DIR, { recursive: true, mode: 0o700 });
      const path = lockPath(ns.path, 'watch');
      const dead = spawn(PYTHON, ['-c', `import socket,os,signal\ns=socket.socket(socket.AF_UNIX); s.bind(${JSON.stringify(path)}); s.listen(1)\nos.kill(os.getpid(), signal.SIGKILL)`]);
      await new Promise((resolve) => dead.on('exit', resolve));
      const lock = await lockNamespace(ns.path, 'watch', { waitMs: 0 });
      lock.release();
    });

    it('defect 5: a run kept waiting 2 s on the namespace lock says who holds it, then succeeds', async () => {
      const ns = await recordedNamespace();
      // Hold the lock as a run does: listening on the lock socket, answering with our pid.
      mkdirSync(LOCK_DIR, { recursive: true, mode: 0o700 });
      const server = createServer((socket) => socket.end(`${process.pid}\n`));
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen({ path: lockName(ns), exclusive: true }, resolve);
      });
      onTestFinished(() => void server.close());
      const run = startTimed(applyArgs(ns, FLAGS));
      await sleep(2_000);
      server.close();
      const result = await run.done;
      const context = `exit ${result.exitCode}, lines ${JSON.stringify(run.lines)}`;
      expect(result.exitCode, context).toBe(0);
      expect(run.lines.map((line) => line.text), context).toEqual([
        `redirect-traffic: warning: waiting up to 20s for redirect-traffic (pid ${process.pid}) to finish with the rules of netns ${ns.path} (lock ${lockName(ns)})`,
      ]);
      expect(run.lines[0]!.at, context).toBeGreaterThanOrEqual(750);
    });

    it('defect 6: a bare status after cleanup is absent (exit 4) and compares with nothing', async () => {
      const ns = await recordedNamespace();
      await cli(applyArgs(ns, FLAGS));
      await cli(['status', '-netns', ns.path], 0);
      await cli(['cleanup', '-netns', ns.path]);
      await cli(['status', '-netns', ns.path], 4);
      const json = await cli(['status', '-netns', ns.path, '--json'], 4);
      expect(JSON.parse(json.stdout)).toMatchObject({ status: 'absent', comparedWith: 'nothing', installed: [] });
      expect(JSON.parse(json.stdout)).not.toHaveProperty('lastApply');
    });

    // Found by a hostile review: the older record stayed, and a bare status compared against its settings.
    it('an apply whose record cannot be written (a full /run) leaves no older record to compare against', async () => {
      const ns = await recordedNamespace();
      await cli(applyArgs(ns, { ...FLAGS, inboundPort: 21111 }));
      // In a mount namespace of its own: /run/redirect-traffic a tmpfs holding the record, then filled up.
      const script = [
        'set -e',
        'cp -a "$RECORD_DIR" /tmp/rt-record-copy-$$',
        'mount -t tmpfs -o size=64k tmpfs "$RECORD_DIR"',
        'cp -a /tmp/rt-record-copy-$$/. "$RECORD_DIR"/ && rm -rf /tmp/rt-record-copy-$$',
        'dd if=/dev/zero of="$RECORD_DIR/fill" bs=4k 2>/dev/null || true',
        '"$NODE" "$CLI" "$@" 2>&1 || echo "apply exit $?"',
        'echo "---"',
        '"$NODE" "$CLI" status -netns "$NETNS" 2>&1 || echo "status exit $?"',
        'ls "$RECORD_DIR"',
      ].join('\n');
      const result = await runCommand('unshare', ['-m', '--propagation', 'private', 'sh', '-c', script, 'full-run', ...applyArgs(ns, { ...FLAGS, inboundPort: 22222 })], {
        env: { PATH: process.env['PATH'] ?? '/usr/sbin:/usr/bin:/sbin:/bin', NO_COLOR: '1', RECORD_DIR, NODE: process.execPath, CLI, NETNS: ns.path },
      });
      const [applyOutput, after] = result.stdout.split('---\n');
      expect(applyOutput, result.stderr).toMatch(/^applied traffic redirection /m);
      expect(applyOutput).not.toContain('apply exit');
      // The older record went to make room (then the finished one may fit), or there is none and the apply
      // said so: a bare status never compares against port 21111. No temporary file is left.
      const record = `${namespaceKey(ns.path)}.json`;
      if (after!.includes(record)) expect(after).toMatch(/^status: in-sync \(compared with the last apply's settings\)/);
      else expect(applyOutput).toMatch(/^redirect-traffic: warning: could not record this apply's settings under \/run\/redirect-traffic/m);
      expect(after).not.toContain('status exit');
      expect(after).not.toContain(`${record}.tmp`);
    });
  },
  { requires: ['iptables-nft', 'iptables-legacy', 'nft', 'flock'] },
);
