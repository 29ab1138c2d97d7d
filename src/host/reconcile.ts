import { setTimeout as sleep } from 'node:timers/promises';
import { InternalError, TemporaryError } from '../errors.ts';
import { FirewallError, type FirewallTable } from './backend.ts';

const MAX_ATTEMPTS = 8;

/**
 * Brings one table to `wanted` with optimistic concurrency: read, write one transaction, check it. A
 * concurrent writer (a second run, Docker, kube-proxy, a flush) shows up as a failed write or a check that
 * does not match, and the whole step is repeated from a fresh read, a bounded number of times; contention
 * ends in success or a temporary failure (75). A failure that repeats with no other writer seen (our part of
 * the table unchanged, the same error) is the backend refusing the change, and ends as that (71).
 *
 * The check is the write's own (see FirewallTable.write): the table read back, or a cheaper verdict for
 * large states; without one, the table is read again. A concurrent run with other flags replacing our rules
 * at the same moment is not caught here (the last write wins and both report success); runs on one namespace
 * are serialized by the caller's lock, and `status` compares everything.
 */
export async function reconcile<State>(
  table: FirewallTable<State>,
  wanted: State,
  options: {
    firstDump?: string | undefined;
    onRetry?: (reason: string) => void;
    /** Told, after a write that succeeded, which rules of someone else's it deleted. */
    onForeignRemoved?: (rules: readonly string[]) => void;
    /** No new attempt after the first starts after this time (epoch ms): the run must end within its caller's limit. */
    deadline?: number;
    /** More of the backend's language for the same transaction, for tables outside this one (Dialect.disarming). */
    alsoInTransaction?: string | undefined;
  } = {},
): Promise<{ changed: boolean }> {
  const { dialect } = table;
  let dump = options.firstDump;
  let lastFailure: { error: FirewallError; transaction: string } | undefined;
  let misspelt: string | undefined;
  // Whether another writer was seen at work: the table read otherwise, or our write failed otherwise.
  let contended = false;
  let previousState: string | undefined;
  for (let attempt = 0; ; attempt++) {
    const fromSurvey = dump !== undefined && attempt === 0;
    dump ??= await table.read();
    const installed = dialect.parse(dump);
    // What the transaction depends on, not the dump's text: other rules (Docker's, kube-proxy's) may come and
    // go, and the survey's dump holds every table. Only this loop's own reads are compared.
    const ours = JSON.stringify(installed);
    if (!fromSurvey) {
      contended ||= previousState !== undefined && ours !== previousState;
      previousState = ours;
    }
    if (dialect.same(installed, wanted)) return { changed: attempt > 0 };
    if (attempt === MAX_ATTEMPTS || (attempt > 0 && options.deadline !== undefined && Date.now() >= options.deadline)) break;
    if (attempt > 0 && sameShape(table, installed, wanted)) {
      // Our own write came back with every chain and rule in place but spelled otherwise, twice alike: the
      // backend stores some rule in another form than ours, and no retry can change that. (A concurrent
      // flush or rewrite leaves other counts, so it never ends here.)
      const key = JSON.stringify(installed);
      if (misspelt === key) {
        throw new InternalError(
          `the rules read back from ${table.label} differ from the rules written (a rule spelled differently ` +
            'by the backend); please report it with `redirect-traffic status` output',
        );
      }
      misspelt = key;
    }
    const transaction = dialect.transaction(installed, wanted) + (options.alsoInTransaction ?? '');
    let readBack: string | undefined;
    try {
      const check = await table.write(transaction, wanted);
      const foreign = dialect.foreignRulesRemoved(installed, wanted);
      if (foreign.length > 0) options.onForeignRemoved?.(foreign);
      if (check !== undefined && 'holds' in check) {
        if (check.holds) return { changed: true };
        options.onRetry?.(`${table.label} changed under us right after our write`);
      }
      readBack = check !== undefined && 'readBack' in check ? check.readBack : undefined;
    } catch (error) {
      if (!(error instanceof FirewallError)) throw error;
      // The same transaction failing twice on the same table is deterministic (a missing module, a bad rule,
      // a native nft rule referring to our chain), unless another writer was seen at work: one deleting and
      // adding a jump again and again fails our write in turns, on a table that mostly reads the same.
      contended ||= lastFailure !== undefined && lastFailure.error.message !== error.message;
      // The same transaction: made from the same state of ours.
      const again = lastFailure?.transaction === transaction;
      if (!error.retryable && again && !contended && !(await changesMeanwhile(table, ours))) throw error;
      lastFailure = { error, transaction };
      options.onRetry?.(error.message);
      await sleep(10 + Math.random() * 40 * (attempt + 1));
    }
    // The next round starts from what the write read back, or from a fresh read.
    dump = readBack;
  }
  const why =
    lastFailure?.error.reason === 'lock'
      ? 'the lock it needs stayed held by another program'
      : 'it kept changing under us (another program writing it)';
  throw new TemporaryError(
    `gave up on ${table.label}: ${why}; try again later` + (lastFailure ? ` (last error: ${lastFailure.error.message})` : ''),
  );
}

/** Whether our part of `table` reads other than `state` within ~100 ms: another writer at work (a failed read counts). */
async function changesMeanwhile<State>(table: FirewallTable<State>, state: string): Promise<boolean> {
  for (let look = 0; look < 4; look++) {
    await sleep(25);
    try {
      if (JSON.stringify(table.dialect.parse(await table.read())) !== state) return true;
    } catch {
      return true;
    }
  }
  return false;
}

/** The same chains with the same number of rules, and the same hooks: all that differs is spelling. */
function sameShape<State>(table: FirewallTable<State>, installed: State, wanted: State): boolean {
  const a = table.dialect.describe(installed);
  const b = table.dialect.describe(wanted);
  return JSON.stringify([a.chains, a.hooks.length, a.sets]) === JSON.stringify([b.chains, b.hooks.length, b.sets]);
}
