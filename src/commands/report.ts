import type { TableSurvey } from '../host/backend.ts';
import type { CommandContext } from './context.ts';

/** Says which rules of someone else's a write removed: they jumped into chains that had to go. */
export const reportForeign = (survey: TableSurvey, context: CommandContext) => (rules: readonly string[]) => {
  for (const rule of rules) context.log.warn(`removed a rule of someone else's that jumped into our chains (${survey.table.label}): ${rule}`);
};
