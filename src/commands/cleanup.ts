import { CliError, ExitCode } from '../errors.ts';
import { reconcile } from '../host/reconcile.ts';
import { hasNetAdmin, requireNetAdmin } from '../host/system.ts';
import type { CleanupOptions } from '../options.ts';
import type { CommandContext } from './context.ts';
import { planCleanup, requireSomeBackend } from './plan.ts';

/** Removes our rules (ours or Consul's) from every backend and family, and nothing else. */
export async function cleanup(options: CleanupOptions, context: CommandContext): Promise<number> {
  const { log, output } = context;
  const netns = options.host.netns;
  if (options.dryRun && !hasNetAdmin()) {
    log.warn('not root, so the tables cannot be read: showing the removal of the chains; the real run also deletes each jump into them it finds');
    for (const provider of context.backends.dryRunRemovals(options.host)) output.stdout(provider.dryRunRemoval());
    return ExitCode.ok;
  }
  requireNetAdmin('removing traffic redirection rules');
  const surveys = await context.backends.survey(context.runner(netns), netns !== undefined);
  requireSomeBackend(surveys);
  const steps = planCleanup(surveys, options.host);
  if (steps.length === 0) {
    output.stdout(`nothing to clean up: no redirection rules installed${netns ? ` in netns ${netns}` : ''}\n`);
    return ExitCode.ok;
  }
  // Every table is tried even if one fails: as a stop hook, removing what can be removed matters most.
  const failures: CliError[] = [];
  for (const { survey, wanted } of steps) {
    const { table } = survey;
    const where = table.label.replace(' ', ', ');
    if (options.dryRun) {
      output.stdout(`# ${where}\n${table.dialect.transaction(survey.state, wanted)}`);
      continue;
    }
    try {
      await reconcile(table, wanted, { firstDump: survey.dump });
    } catch (error) {
      if (!(error instanceof CliError)) throw error;
      failures.push(new CliError(`${where}: ${error.message}`, error.exitCode, { cause: error }));
      continue;
    }
    const summary = table.dialect.describe(survey.state);
    const chains = Object.keys(summary.chains).length;
    const rules = Object.values(summary.chains).reduce((sum, count) => sum + count, 0) + summary.hooks.length;
    output.stdout(`removed traffic redirection (${where}${netns ? `, netns ${netns}` : ''}): ${chains} chains, ${rules} rules\n`);
  }
  const [first, ...more] = failures;
  if (first) {
    for (const failure of more) log.error(failure.message);
    throw first;
  }
  return ExitCode.ok;
}
