import { setTimeout as sleep } from 'node:timers/promises';
import { CliError, ExitCode } from '../errors.ts';
import {
  jumpsMatch,
  listedJumps,
  ownedState,
  parseNatTable,
  renderTransaction,
  stateMatches,
  type OwnedState,
} from '../core/natTable.ts';
import { HOOK_CHAINS } from '../core/ruleset.ts';
import { IptablesError, type IptablesTable } from './iptables.ts';

const MAX_ATTEMPTS = 8;

/** Up to this many rules the whole table is read back to check a write; beyond it, the hook chains only. */
const FULL_CHECK_MAX_RULES = 500;

/**
 * Brings one table to `target` with optimistic concurrency: read, write one transaction, check it. A
 * concurrent writer (a second run, Docker, kube-proxy) shows up as a failed restore or a check that does
 * not match, and the whole step is repeated from a fresh read, a bounded number of times.
 *
 * The check reads the whole nat table back and compares everything, up to FULL_CHECK_MAX_RULES. Beyond,
 * reading thousands of rules back would cost as much as writing them, and only PREROUTING and OUTPUT are
 * read. The transaction declares (so flushes) and refills our chains in one atomic commit, so they always
 * hold one writer's complete rules, and that check still catches what a race between runs of the same
 * setup leaves wrong: two runs that both read "no jump" each add one. It does not see a writer replacing
 * our chains' contents at the same moment (a concurrent run with other flags: the last write wins and both
 * report success), nor a rule iptables prints in another spelling than ours; `status` compares everything.
 */
export async function reconcile(
  table: IptablesTable,
  target: OwnedState,
  options: { firstSave?: string | undefined; onRetry?: (reason: string) => void } = {},
): Promise<{ changed: boolean }> {
  let save = options.firstSave;
  let lastFailure: { error: IptablesError; table: string; transaction: string } | undefined;
  let lastWrite: { table: string; transaction: string } | undefined;
  for (let attempt = 0; ; attempt++) {
    const natTable = parseNatTable(save ?? (await table.saveNat()));
    save = undefined;
    const current = ownedState(natTable);
    if (stateMatches(current, target)) return { changed: attempt > 0 };
    if (attempt === MAX_ATTEMPTS) break;
    const transaction = renderTransaction(current, target);
    const before = JSON.stringify(natTable ?? null);
    if (lastWrite?.table === before && lastWrite.transaction === transaction) {
      // This very write, on this very table, already came back as this table: iptables stores some rule
      // in another spelling than ours, and no retry can change that.
      throw new CliError(
        `the rules read back from iptables-${table.backend} differ from the rules written (a rule spelled ` +
          "differently by iptables-save); please report it with `redirect-traffic status` output",
        ExitCode.internal,
      );
    }
    try {
      await table.restore(transaction);
      lastWrite = { table: before, transaction };
      // The next round reads the table back; it ends there if the table holds the target.
      if (target.chainRules.length <= FULL_CHECK_MAX_RULES) continue;
      const jumps = listedJumps(await Promise.all(HOOK_CHAINS.map((chain) => table.listRules(chain))));
      if (jumpsMatch(jumps, target)) return { changed: true };
      options.onRetry?.('the jumps in PREROUTING/OUTPUT changed under us');
    } catch (error) {
      if (!(error instanceof IptablesError)) throw error;
      // The same transaction failing twice on the same table is deterministic (a missing module, a bad
      // rule); anything else may be a concurrent writer that got in between our read and our write.
      if (!error.retryable && lastFailure?.table === before && lastFailure.transaction === transaction) throw error;
      lastFailure = { error, table: before, transaction };
      options.onRetry?.(error.message);
      await sleep(10 + Math.random() * 40 * (attempt + 1));
    }
  }
  throw new CliError(
    `gave up after ${MAX_ATTEMPTS} attempts: the nat table kept changing under us` +
      (lastFailure ? ` (last error: ${lastFailure.error.message})` : ''),
    ExitCode.tempFail,
  );
}
