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

export const MAX_ATTEMPTS = 8;

export interface ReconcileResult {
  changed: boolean;
  /** What was there before, for a rollback. */
  previous: OwnedState;
}

/**
 * Brings one table to `target` with optimistic concurrency: read, write one transaction, read back. A
 * concurrent writer (a second run, Docker, kube-proxy) shows up as a failed restore or a read-back that
 * does not match, and the whole step is repeated from a fresh read, a bounded number of times.
 */
export async function reconcile(
  table: IptablesTable,
  target: OwnedState,
  options: { firstSave?: string | undefined; onRetry?: (reason: string) => void } = {},
): Promise<ReconcileResult> {
  let previous: OwnedState | undefined;
  let pendingSave = options.firstSave;
  let lastFailure: CliError | undefined;
  for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
    const current = ownedState(parseNatTable(pendingSave ?? (await table.save('nat'))));
    pendingSave = undefined;
    previous ??= current;
    if (stateMatches(current, target)) return { changed: attempt > 0, previous };
    const transaction = renderTransaction(current, target);
    try {
      await table.restore(transaction);
      continue; // the next pass reads the table back and checks it
    } catch (error) {
      if (!(error instanceof IptablesError)) throw error;
      lastFailure = error;
      if (!error.retryable) {
        // Our transaction was built from a stale read only if the table moved; otherwise the failure is real.
        const now = ownedState(parseNatTable(await table.save('nat')));
        if (stateMatches(now, current) && sameJumps(now, current)) throw error;
      }
      options.onRetry?.(error.message);
    }
    await sleep(10 + Math.random() * 40 * (attempt + 1));
  }
  throw new CliError(
    `gave up after ${MAX_ATTEMPTS} attempts: the nat table kept changing under us${lastFailure ? ` (last error: ${lastFailure.message})` : ''}`,
    ExitCode.tempFail,
  );
}

function sameJumps(a: OwnedState, b: OwnedState): boolean {
  const key = (state: OwnedState) => [...state.jumps, ...state.otherReferences].map((r) => `${r.chain} ${r.spec}`).join('\n');
  return key(a) === key(b);
}
