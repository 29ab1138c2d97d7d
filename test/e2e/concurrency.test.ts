import { expect, it } from 'vitest';
import {
  applyArgs,
  cli,
  countRule,
  describeE2E,
  describeRun,
  HOOK_JUMPS,
  natRules,
  runCli,
  statusArgs,
  testNamespace,
  type RedirectFlags,
} from '../helpers/e2e.ts';

// Eight applies at once in one namespace, racing each other and a foreign writer (issue 4).

const FLAGS: RedirectFlags = {
  proxyUid: 1234,
  inboundPort: 20000,
  excludeInboundPorts: ['22'],
  excludeOutboundPorts: ['9090', '9091'],
  excludeUids: [1000],
  dnsPort: 8600,
};
const APPLIES = 8;
const TEMP_FAIL = 75;

/**
 * A foreign writer as Docker or kube-proxy would be: in a bounded loop it appends or inserts a rule in
 * nat OUTPUT and deletes its previous one, with plain per-rule `iptables` commands, until the `stop`
 * file appears. At the end exactly its last rule and its permanent PREROUTING rule remain. It prints
 * the number of its own commands that failed and the number of rounds.
 */
const FOREIGN_WRITER = String.raw`
  set -u
  stop="$1"; iptables="$2"; failed=0; i=0
  $iptables -t nat -A PREROUTING -s 198.18.9.0/24 -p tcp -j RETURN || failed=$((failed+1))
  while [ ! -e "$stop" ] && [ $i -lt 400 ]; do
    i=$((i+1))
    if [ $((i % 2)) -eq 0 ]; then op=-A; else op="-I"; fi
    $iptables -t nat $op OUTPUT -d 198.18.9.$i/32 -p tcp -j RETURN || failed=$((failed+1))
    if [ $i -gt 1 ]; then $iptables -t nat -D OUTPUT -d 198.18.9.$((i-1))/32 -p tcp -j RETURN || failed=$((failed+1)); fi
  done
  echo "$failed $i"
`;

// More rules than the size up to which a write is checked by reading the whole table back: above it only
// the hook chains are read back (src/host/reconcile.ts), and that check must hold up to the same race.
const MANY_CIDRS = Array.from({ length: 600 }, (_, i) => `198.19.${i >> 8}.${i & 255}/32`);

const CASES: ['nft' | 'legacy', string, string, RedirectFlags][] = [
  ['nft', '', 'iptables-nft', FLAGS],
  // The writer waits for the xtables lock, as Docker and kube-proxy do.
  ['legacy', '', 'iptables-legacy -w 10', FLAGS],
  ['nft', ' with 600 excluded CIDRs', 'iptables-nft', { ...FLAGS, excludeOutboundCidrs: MANY_CIDRS }],
  ['legacy', ' with 600 excluded CIDRs', 'iptables-legacy -w 10', { ...FLAGS, excludeOutboundCidrs: MANY_CIDRS }],
];

describeE2E(
  'concurrent applies',
  () => {
    it.each(CASES)(
      `%s%s: ${APPLIES} applies at once, racing a foreign writer, leave one copy of our rules and the writer's intact`,
      async (backend, _size, writerIptables, flags) => {
        const ns = await testNamespace();
        const stop = `/tmp/${ns.name}.stop`;
        const writer = ns.run('bash', ['-c', FOREIGN_WRITER, 'foreign-writer', stop, writerIptables], { timeoutMs: 50_000 });
        try {
          const args = applyArgs(ns, flags, `-iptables-mode=${backend}`);
          const results = await Promise.all(Array.from({ length: APPLIES }, () => runCli(args)));
          for (const result of results) {
            expect([0, TEMP_FAIL], describeRun(args, result)).toContain(result.exitCode);
            // Runs take turns on the namespace; one that waits long says whom it waits for (another run, or the
            // host-wide xtables lock, which other test files may hold meanwhile), and nothing else.
            const lines = result.stderrLines.filter((line) => !/waiting up to \d+s for /.test(line));
            if (result.exitCode === TEMP_FAIL) {
              // A retryable failure says so in one line.
              expect(lines, describeRun(args, result)).toHaveLength(1);
              expect(result.stderr).toMatch(/busy|lock|retry|kept changing|again/i);
            } else {
              expect(lines, describeRun(args, result)).toEqual([]);
            }
          }
          expect(results.filter((r) => r.exitCode === 0).length, 'at least one apply succeeded').toBeGreaterThan(0);
        } finally {
          await ns.must('touch', stop);
        }
        const { stdout } = await writer;
        const [failed, rounds] = stdout.trim().split(' ').map(Number);
        expect(rounds, 'the foreign writer ran').toBeGreaterThan(1);
        expect(failed, "the foreign writer's own commands all succeeded").toBe(0);

        const rules = await natRules(ns, { backend });
        for (const jump of HOOK_JUMPS) expect(countRule(rules, jump), jump).toBe(1);
        expect(countRule(rules, `-A OUTPUT -d 198.18.9.${rounds}/32 -p tcp -j RETURN`), "the writer's last rule").toBe(1);
        expect(countRule(rules, '-A PREROUTING -s 198.18.9.0/24 -p tcp -j RETURN'), "the writer's permanent rule").toBe(1);
        expect(rules.match(/198\.18\.9\.\d+\/32/g), 'none of its deleted rules came back').toHaveLength(1);
        await cli(statusArgs(ns, flags), 0);
      },
    );
  },
  { requires: ['iptables-legacy', 'iptables-nft'] },
);
