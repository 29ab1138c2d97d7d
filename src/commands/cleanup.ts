import { CliError } from '../errors.ts';
import { EMPTY_STATE, renderTransaction } from '../core/natTable.ts';
import { OWNED_CHAINS } from '../core/ruleset.ts';
import { familyLabel, requireSomeBackend } from '../host/iptables.ts';
import { reconcile } from '../host/reconcile.ts';
import { surveyTables } from '../host/survey.ts';
import { hasNetAdmin, requireNetAdmin } from '../host/system.ts';
import type { CleanupOptions } from '../options.ts';
import type { CommandContext } from './context.ts';

/** Removes our chains and every jump into them, in every backend and family, and nothing else. */
export async function cleanup(options: CleanupOptions, context: CommandContext): Promise<void> {
  const { log, output } = context;
  const netns = options.host.netns;
  const mode = options.host.iptablesMode;
  if (options.dryRun && !hasNetAdmin()) {
    log.warn('not root, so the tables cannot be read: showing the removal of the chains; the real run also deletes each jump into them it finds');
    output.stdout(renderTransaction({ ...EMPTY_STATE, chains: OWNED_CHAINS }, EMPTY_STATE));
    return;
  }
  requireNetAdmin('removing traffic redirection rules');
  const everything = await surveyTables(context.runner(netns), netns !== undefined);
  requireSomeBackend(everything.map((s) => s.table));
  const surveys = everything.filter((s) => s.holdsOurs && (mode === 'auto' || s.table.backend === mode));
  if (surveys.length === 0) {
    output.stdout(`nothing to clean up: no redirection rules installed${netns ? ` in netns ${netns}` : ''}\n`);
    return;
  }
  // Every table is tried even if one fails: as a stop hook, removing what can be removed matters most.
  const failures: CliError[] = [];
  for (const survey of surveys) {
    const where = `iptables-${survey.table.backend}, ${familyLabel(survey.table.family)}`;
    if (options.dryRun) {
      output.stdout(`# ${where}\n${renderTransaction(survey.owned, EMPTY_STATE)}`);
      continue;
    }
    try {
      await reconcile(survey.table, EMPTY_STATE, { firstSave: survey.dump });
    } catch (error) {
      if (!(error instanceof CliError)) throw error;
      failures.push(new CliError(`${where}: ${error.message}`, error.exitCode));
      continue;
    }
    const rules = survey.owned.chainRules.length + survey.owned.jumps.length + survey.owned.otherReferences.length;
    output.stdout(`removed traffic redirection (${where}${netns ? `, netns ${netns}` : ''}): ${survey.owned.chains.length} chains, ${rules} rules\n`);
  }
  const [first, ...more] = failures;
  if (first) {
    for (const failure of more) log.error(failure.message);
    throw first;
  }
}
