import { CliError, ExitCode } from '../errors.ts';
import type { BackendName, TableSurvey } from '../host/backend.ts';
import { reconcile } from '../host/reconcile.ts';
import { hasNetAdmin, requireNetAdmin } from '../host/system.ts';
import type { CleanupOptions } from '../options.ts';
import type { CommandContext } from './context.ts';
import { reportForeign } from './report.ts';
import { planCleanup, recordedBackendUnreadable, requireManageable, requireRecordedBackend, requireSomeBackend, type TableStep } from './plan.ts';

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
    const { tables: surveys, unmanageable } = await context.backends.survey(netns);
    requireSomeBackend(surveys, options.host);
    const written = recordedBackend(netns, context);
    const steps = planCleanup(surveys, options.host);
    if (steps.length > 0 && options.dryRun) {
      for (const { survey, wanted } of steps) output.stdout(`# ${where(survey)}\n${survey.table.dialect.transaction(survey.state, wanted)}`);
    } else if (steps.length > 0) {
      await context.deferSignals(() => removeAll(steps, options, context));
    } else if (unmanageable.length === 0 && !recordedBackendUnreadable(surveys, written)) {
      output.stdout(`nothing to clean up: no redirection rules installed${netns ? ` in netns ${netns}` : ''}\n`);
    }
    // What no installed program can read or remove is said last, once the rest is gone (a stop hook removes what
    // it can); the record stays for it.
    requireRecordedBackend(surveys, written);
    requireManageable(unmanageable);
    // Nothing is installed any more (or nothing was): a bare status has nothing to compare.
    if (!options.dryRun) context.records.remove(netns);
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

/** Every table is tried even if one fails: as a stop hook, removing what can be removed matters most. */
async function removeAll(steps: readonly TableStep[], options: CleanupOptions, context: CommandContext): Promise<void> {
  const netns = options.host.netns;
  const failures: CliError[] = [];
  for (const { survey, wanted } of steps) {
    try {
      await reconcile(survey.table, wanted, { firstDump: survey.dump, onForeignRemoved: reportForeign(survey, context) });
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
