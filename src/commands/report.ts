import type { BackendKind, TableSurvey } from '../host/backend.ts';
import type { CommandContext } from './context.ts';
import { kindOf } from './plan.ts';

/**
 * What a write removes of someone else's, by backend: in iptables, rules that jumped into chains that had to
 * go; in nftables, whatever else our table held (chains, sets, rules, flags), since the whole table is replaced.
 */
const REMOVED: Record<BackendKind, string> = {
  iptables: "removed a rule of someone else's that jumped into our chains",
  nftables: "removed something of someone else's from our table",
};

/** Says what of someone else's a write removed, one warning each. */
export const reportForeign = (survey: TableSurvey, context: CommandContext) => (items: readonly string[]) => {
  const removed = REMOVED[kindOf(survey.table.backend)];
  for (const item of items) context.log.warn(`${removed} (${survey.table.label}): ${item}`);
};
