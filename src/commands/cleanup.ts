import { CliError, ExitCode, MissingProgramError } from '../errors.ts';
import type { BackendName, TableSurvey } from '../host/backend.ts';
import { reconcile } from '../host/reconcile.ts';
import { hasNetAdmin, requireNetAdmin } from '../host/system.ts';
import type { CleanupOptions } from '../options.ts';
import type { CommandContext } from './context.ts';
import { reportForeign } from './report.ts';
import { planCleanup, requireSomeBackend, unreadableRules, type TableStep } from './plan.ts';

/** Removes our rules (ours or Consul's) from every backend and family, and nothing else. */
export async function cleanup(options: CleanupOptions, context: CommandContext): Promise<number> {
  const { log, output } = context;
  const netns = options.host.netns;
  if (options.dryRun && !hasNetAdmin()) {
    log.warn('not root, so the tables cannot be read: showing the removal of the chains; the real run also deletes each jump into them it finds');
    for (const provider of context.backends.dryRunRemovals(options.host)) output.stdout(provider.dryRunRemoval());
    return ExitCode.ok;
  }
  requireNetAdmin('removing traffic redirection rules', true);
  const lock = await context.lockNamespace(netns);
  try {
    const survey = await context.backends.survey(netns);
    const surveys = survey.tables;
    requireSomeBackend(surveys, options.host);
    const unreadable = unreadableRules(survey, recordedBackend(netns, context));
    const steps = planCleanup(surveys, options.host);
    if (steps.length > 0 && options.dryRun) {
      for (const { survey, wanted } of steps) output.stdout(`# ${where(survey)}\n${survey.table.dialect.transaction(survey.state, wanted)}`);
    } else if (steps.length > 0) {
      await context.deferSignals(() => removeAll(steps, options, context));
    }
    // Our rules in a backend -backend left out are still installed: they keep the record, and are named.
    const elsewhere = surveys.filter((table) => table.holdsOurs && !steps.some((step) => step.survey === table));
    if (steps.length === 0 && unreadable === undefined) {
      const where = netns ? ` in netns ${netns}` : '';
      const left = elsewhere.map((survey) => survey.table.label).join(', ');
      output.stdout(`nothing to clean up${where}: ${left ? `the redirection rules are in ${left}, which -backend leaves out` : 'no redirection rules installed'}\n`);
    }
    // What no installed program can read or remove is said last, once the rest is gone (a stop hook removes what
    // it can); the record stays for it.
    if (unreadable !== undefined) throw new MissingProgramError(unreadable);
    // Nothing is installed any more (or nothing was): a bare status has nothing to compare.
    if (!options.dryRun && elsewhere.length === 0) context.records.remove(netns);
    return ExitCode.ok;
  } finally {
    lock.release();
  }
}

/** The backend the last apply here wrote, if recorded; a damaged record does not stop a cleanup. */
function recordedBackend(netns: string | undefined, context: CommandContext): BackendName | undefined {
  try {
    return context.records.read(netns)?.backend;
  } catch (error) {
    if (error instanceof CliError) return undefined;
    throw error;
  }
}

const where = (survey: TableSurvey) => survey.table.label.replace(' ', ', ');

const CLEANUP_LIMIT_MS = 30_000;

/** Every table is tried even if one fails: as a stop hook, removing what can be removed matters most. */
async function removeAll(steps: readonly TableStep[], options: CleanupOptions, context: CommandContext): Promise<void> {
  const netns = options.host.netns;
  const failures: CliError[] = [];
  // Every table's attempts start within this, so that a stop hook ends within the units' TimeoutStopSec (60 s):
  // an attempt may still wait its 10 s for the xtables lock.
  const deadline = Date.now() + CLEANUP_LIMIT_MS;
  for (const { survey, wanted } of steps) {
    try {
      await reconcile(survey.table, wanted, { firstDump: survey.dump, deadline, onForeignRemoved: reportForeign(survey, context) });
    } catch (error) {
      if (!(error instanceof CliError)) throw error;
      failures.push(new CliError(`${where(survey)}: ${error.message}`, error.kind, { cause: error }));
      continue;
    }
    const summary = survey.table.dialect.describe(survey.state);
    const chains = Object.keys(summary.chains).length;
    context.output.stdout(
      `removed traffic redirection (${where(survey)}${netns ? `, netns ${netns}` : ''}): ${chains} chains, ${summary.rules} rules\n`,
    );
  }
  const [first, ...more] = failures;
  if (first) {
    for (const failure of more) context.log.error(failure.message);
    throw first;
  }
}
