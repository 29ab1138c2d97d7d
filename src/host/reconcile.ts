import { setTimeout as sleep } from 'node:timers/promises';
import { CliError, ExitCode } from '../errors.ts';
import {
  ownedState,
  parseNatTable,
  renderTransaction,
  stateMatches,
  type OwnedState,
} from '../core/natTable.ts';
import { IptablesError, type IptablesTable } from './iptables.ts';

const MAX_ATTEMPTS = 8;

/**
 * Brings one table to `target` with optimistic concurrency: read, write one transaction, read back. A
 * concurrent writer (a second run, Docker, kube-proxy) shows up as a failed restore or a read-back that
 * does not match, and the whole step is repeated from a fresh read, a bounded number of times.
 */
export async function reconcile(
  table: IptablesTable,
  target: OwnedState,
  options: { firstSave?: string | undefined; onRetry?: (reason: string) => void } = {},
): Promise<{ changed: boolean }> {
  let save = options.firstSave;
  let lastFailure: { error: IptablesError; table: string; transaction: string } | undefined;
  let lastWrite: { table: string; transaction: string } | undefined;
  // Every write is followed by a read that checks it, the last write included.
  for (let attempt = 0; ; attempt++) {
    const natTable = parseNatTable(save ?? (await table.save('nat')));
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
