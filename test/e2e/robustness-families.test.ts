import { spawn } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { expect, it, onTestFinished } from 'vitest';
import { namespaceKey } from '../../src/host/exclusive.ts';
import { RECORD_DIR } from '../../src/host/record.ts';
import {
  applyArgs,
  CLI,
  cli,
  describeE2E,
  describeRun,
  runCli,
  save,
  statusArgs,
  testNamespace,
  type RedirectFlags,
} from '../helpers/e2e.ts';
import { runCommand, type Netns } from '../helpers/netns.ts';

// Issue 10, defect 1 (mixed families): an apply killed between its IPv4 and IPv6 writes leaves IPv4 with
// one configuration and IPv6 with another. A bare `status` compares with the record of the last apply
// (/run/redirect-traffic) and must say so (exit 3, "stopped before it finished"); a re-apply repairs it.
// And concurrent applies with different flags must leave both families with one and the same run's rules.

const TEMP_FAIL = 75;
const BACKEND = '-backend=iptables';
const CIDRS = (n: number) => Array.from({ length: n }, (_, i) => `198.19.${i >> 8}.${i & 255}/32`);

const FIRST: RedirectFlags = { proxyUid: 901, inboundPort: 20000 };
const SECOND: RedirectFlags = { proxyUid: 902, inboundPort: 20001, dualStack: true, excludeOutboundCidrs: CIDRS(600) };

/** A namespace whose record of the last apply is removed with it (an inode can be reused by a later namespace). */
async function recordedNamespace(): Promise<Netns> {
  const ns = await testNamespace();
  const record = join(RECORD_DIR, `${namespaceKey(ns.path)}.json`);
  onTestFinished(() => rmSync(record, { force: true }));
  return ns;
}

function readRecordFile(ns: Netns): { flags: Record<string, unknown>; finished: boolean } | undefined {
  const path = join(RECORD_DIR, `${namespaceKey(ns.path)}.json`);
  return existsSync(path) ? (JSON.parse(readFileSync(path, 'utf8')) as { flags: Record<string, unknown>; finished: boolean }) : undefined;
}

/** Waits (bounded) until nothing runs inside `ns`: a killed run's iptables-restore may outlive it. */
async function quiesce(ns: Netns): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    const pids = await runCommand('ip', ['netns', 'pids', ns.name]);
    if (pids.stdout.trim() === '') return;
    await sleep(50);
  }
  throw new Error(`processes still running in ${ns.name} after 10 s`);
}

type Kill = { after: number } | { when: 'recorded' | 'ipv4-written' };

/**
 * A shell loop inside `ns` that SIGKILLs `pid` once IPv4 holds the second run's inbound redirect (between
 * that run's IPv4 and IPv6 writes): timing alone hits that window rarely on a loaded machine. Bounded.
 */
const KILL_WHEN_IPV4_WRITTEN = String.raw`
  pid="$1"; port="$2"; i=0
  while [ $i -lt 3000 ] && kill -0 "$pid" 2>/dev/null; do
    i=$((i+1))
    if iptables -t nat -S CONSUL_PROXY_IN_REDIRECT 2>/dev/null | grep -q -- "--to-ports $port"; then kill -KILL "$pid"; exit 0; fi
  done
`;

/** Starts the CLI and kills it with SIGKILL as `kill` says; resolves once it is gone. */
async function applyKilled(ns: Netns, args: readonly string[], kill: Kill, inboundPort: number): Promise<{ exitCode: number | null; signal: string | null }> {
  const child = spawn(process.execPath, [CLI, ...args], { stdio: 'ignore', env: { PATH: process.env['PATH'] ?? '', NO_COLOR: '1' } });
  const exited = new Promise<{ exitCode: number | null; signal: string | null }>((resolve) =>
    child.once('exit', (exitCode, signal) => resolve({ exitCode, signal })),
  );
  let timer: NodeJS.Timeout | undefined;
  if ('after' in kill) timer = setTimeout(() => child.kill('SIGKILL'), kill.after);
  else if (kill.when === 'recorded') {
    // As soon as the record says this run has started writing.
    const poll = () => {
      const record = readRecordFile(ns);
      if (record?.flags['proxy-inbound-port'] === String(inboundPort) && !record.finished) child.kill('SIGKILL');
      else timer = setTimeout(poll, 2);
    };
    poll();
  } else {
    void ns.run('bash', ['-c', KILL_WHEN_IPV4_WRITTEN, 'killer', String(child.pid), String(inboundPort)], { timeoutMs: 30_000 });
  }
  const result = await exited;
  clearTimeout(timer);
  return result;
}

const killText = (kill: Kill) => ('after' in kill ? `after ${kill.after} ms` : `when ${kill.when}`);

/** Each family's nat table, as the save of each reference configuration shows it. */
interface Reference {
  ipv4: string;
  ipv6: string;
}
const snapshot = async (ns: Netns): Promise<Reference> => ({
  ipv4: await save(ns, { family: 4, table: 'nat' }),
  ipv6: await save(ns, { family: 6, table: 'nat' }),
});

function classify(table: string, references: Record<string, string>): string {
  return Object.entries(references).find(([, text]) => text === table)?.[0] ?? `something else:\n${table}`;
}

describeE2E(
  'issue 10: mixed families',
  () => {
    it(
      'an apply killed with SIGKILL (timed, and mid-write): bare status is 0 only when the tables match the record, else 3 and says so; a re-apply repairs',
      async () => {
        const ns = await recordedNamespace();
        // The saves each configuration leaves, to recognise what a killed run left in each family.
        await cli(applyArgs(ns, SECOND, BACKEND));
        const second = await snapshot(ns);
        await cli(applyArgs(ns, FIRST, BACKEND));
        const first = await snapshot(ns);
        expect(second.ipv4).not.toBe(first.ipv4);
        expect(second.ipv6).toContain('CONSUL_PROXY_OUTPUT');
        expect(first.ipv6).not.toContain('CONSUL_');

        const seen: string[] = [];
        // ~250 ms as in the attack, varied; and, since timing alone rarely lands between the IPv4 and IPv6
        // writes on a loaded machine, kills triggered by the record turning unfinished and by IPv4 changing.
        const kills: Kill[] = [{ after: 50 }, { after: 250 }, { after: 400 }, { when: 'recorded' }, { when: 'ipv4-written' }, { when: 'ipv4-written' }];
        for (const kill of kills) {
          const killed = await applyKilled(ns, applyArgs(ns, SECOND, BACKEND), kill, SECOND.inboundPort);
          const delayMs = killText(kill);
          await quiesce(ns);
          const tables = await snapshot(ns);
          const ipv4 = classify(tables.ipv4, { first: first.ipv4, second: second.ipv4 });
          const ipv6 = classify(tables.ipv6, { none: first.ipv6, second: second.ipv6 });
          // Each family is one atomic transaction: never anything but one whole configuration.
          expect(ipv4, `IPv4 after a kill ${delayMs}`).toMatch(/^(first|second)$/);
          expect(ipv6, `IPv6 after a kill ${delayMs}`).toMatch(/^(none|second)$/);
          const record = readRecordFile(ns);
          expect(record, 'a record of the last apply').toBeDefined();
          const recordedSecond = record?.flags['proxy-uid'] === '902';
          const matchesRecord = recordedSecond ? ipv4 === 'second' && ipv6 === 'second' : ipv4 === 'first' && ipv6 === 'none';
          const mixed = (ipv4 === 'first') !== (ipv6 === 'none');
          seen.push(`${delayMs}: ${killed.signal ?? `exit ${killed.exitCode}`}, IPv4 ${ipv4}, IPv6 ${ipv6}, record ${recordedSecond ? 902 : 901}${record?.finished ? '' : ' unfinished'}`);

          const bare = await runCli(['status', '-netns', ns.path]);
          const context = `${seen.at(-1)}\n${describeRun(['status', '-netns', ns.path], bare)}`;
          expect(bare.exitCode, context).toBe(matchesRecord ? 0 : 3);
          if (mixed) expect(bare.exitCode, context).toBe(3);
          if (!record?.finished) expect(bare.stdout, context).toContain('was stopped before it finished');
          if (mixed) expect(bare.stdout, context).toContain('was stopped before it finished');
          const json = await runCli(['status', '-netns', ns.path, '--json']);
          const report = JSON.parse(json.stdout) as { comparedWith: string; lastApply?: { finished: boolean } };
          expect(report.comparedWith, context).toBe('last-apply');
          expect(report.lastApply?.finished, context).toBe(record?.finished);

          // A plain re-apply of the interrupted run's flags repairs both families.
          await cli(applyArgs(ns, SECOND, BACKEND));
          await cli(statusArgs(ns, SECOND, BACKEND), 0);
          await cli(['status', '-netns', ns.path], 0);
          expect(await snapshot(ns)).toEqual(second);
          // Back to the first configuration for the next round.
          await cli(applyArgs(ns, FIRST, BACKEND));
        }
        console.info(`killed applies:\n  ${seen.join('\n  ')}`);
      },
      120_000,
    );

    it(
      '16 concurrent applies with different flags, 3 times: both families end with one and the same run, every exit 0 or 75',
      async () => {
        const ns = await recordedNamespace();
        const runs: RedirectFlags[] = Array.from({ length: 16 }, (_, i) => ({
          proxyUid: 900 + i,
          inboundPort: 20000 + i,
          ...(i % 2 === 0 ? { dualStack: true, excludeOutboundCidrs: CIDRS(100) } : {}),
        }));
        for (let round = 0; round < 3; round++) {
          const results = await Promise.all(runs.map((flags) => runCli(applyArgs(ns, flags, BACKEND))));
          results.forEach((result, i) => expect([0, TEMP_FAIL], describeRun(applyArgs(ns, runs[i]!, BACKEND), result)).toContain(result.exitCode));
          expect(results.some((r) => r.exitCode === 0), 'at least one apply succeeded').toBe(true);
          // The run whose rules IPv4 holds ...
          const ipv4 = await save(ns, { family: 4, table: 'nat' });
          const ipv6 = await save(ns, { family: 6, table: 'nat' });
          const ports = ipv4.match(/--to-ports 200\d\d/g) ?? [];
          expect(ports, `round ${round}: one run's inbound redirect in IPv4`).toHaveLength(1);
          const index = Number(ports[0]!.slice('--to-ports '.length)) - 20000;
          const winner = runs[index]!;
          expect(results[index]!.exitCode, 'the run whose rules stayed succeeded').toBe(0);
          // ... is the run whose rules IPv6 holds (none, for a run without -dual-stack) ...
          expect(ipv6.match(/--to-ports 200\d\d/g) ?? [], `round ${round}: IPv6 agrees with IPv4 (run ${index})`).toEqual(
            winner.dualStack ? [`--to-ports ${winner.inboundPort}`] : [],
          );
          if (!winner.dualStack) expect(ipv6).not.toContain('CONSUL_');
          // ... and status agrees, for that run's flags, for another run's, and for the recorded last apply.
          await cli(statusArgs(ns, winner, BACKEND), 0);
          await cli(statusArgs(ns, runs[(index + 1) % runs.length]!, BACKEND), 3);
          await cli(['status', '-netns', ns.path], 0);
        }
      },
      120_000,
    );
  },
  { requires: ['iptables-nft'] },
);
