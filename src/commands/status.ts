import { ExitCode } from '../errors.ts';
import { desiredState, stateMatches, type OwnedState, type SavedRule } from '../core/natTable.ts';
import { OWNED_CHAINS } from '../core/ruleset.ts';
import type { Family } from '../core/values.ts';
import { familyLabel, requireSomeBackend } from '../host/iptables.ts';
import { surveyTables, type TableSurvey } from '../host/survey.ts';
import { requireNetAdmin } from '../host/system.ts';
import type { StatusOptions } from '../options.ts';
import { resolveRulesets } from './rulesets.ts';
import type { CommandContext } from './context.ts';

type Verdict = 'in-sync' | 'drifted' | 'absent' | 'installed';

interface InstalledTable {
  backend: string;
  family: string;
  chains: Record<string, number>;
  jumps: string[];
}

interface StatusReport {
  status: Verdict;
  installed: InstalledTable[];
  /** Why it is drifted: one line per difference. */
  differences: string[];
}

const EXIT: Record<Verdict, number> = { 'in-sync': 0, installed: 0, drifted: ExitCode.drifted, absent: ExitCode.absent };

/**
 * Shows what is installed and, given apply's flags, whether it is exactly what an apply would install.
 * Returns the exit code: 0 in sync (or installed, without flags to compare), 3 drifted, 4 absent.
 */
export async function status(options: StatusOptions, context: CommandContext): Promise<number> {
  requireNetAdmin('reading the iptables rules', false);
  const wanted =
    options.rules === undefined
      ? undefined
      : new Map((await resolveRulesets(options.rules, options.agent, context)).rulesets.map((r) => [r.family, desiredState(r)]));
  const surveys = await surveyTables(context.runner(options.host.netns), options.host.netns !== undefined);
  requireSomeBackend(surveys.map((s) => s.table));
  const report = buildReport(surveys.filter((s) => s.holdsOurs), wanted);
  context.output.stdout(options.json ? `${JSON.stringify(report, null, 2)}\n` : renderReport(report));
  return EXIT[report.status];
}

function describeTable(survey: TableSurvey): InstalledTable {
  const chains: Record<string, number> = {};
  for (const chain of survey.owned.chains) {
    chains[chain] = survey.owned.chainRules.filter((rule) => rule.chain === chain).length;
  }
  return {
    backend: survey.table.backend,
    family: familyLabel(survey.table.family),
    chains,
    jumps: [...survey.owned.jumps, ...survey.owned.otherReferences].map((rule) => `-A ${rule.chain} ${rule.spec}`),
  };
}

function buildReport(installed: TableSurvey[], wanted: Map<Family, OwnedState> | undefined): StatusReport {
  const tables = installed.map(describeTable);
  if (installed.length === 0) return { status: 'absent', installed: tables, differences: [] };
  if (wanted === undefined) return { status: 'installed', installed: tables, differences: [] };
  const differences: string[] = [];
  const backends = new Set(installed.map((s) => s.table.backend));
  if (backends.size > 1) differences.push(`rules are installed in both backends (${[...backends].join(', ')})`);
  for (const survey of installed) {
    const where = `iptables-${survey.table.backend} ${familyLabel(survey.table.family)}`;
    const target = wanted.get(survey.table.family);
    if (!target) differences.push(`${where}: has rules, but ${familyLabel(survey.table.family)} is not asked for`);
    else if (!stateMatches(survey.owned, target)) differences.push(...diffStates(where, survey.owned, target));
  }
  for (const family of wanted.keys()) {
    if (!installed.some((s) => s.table.family === family)) differences.push(`${familyLabel(family)}: no rules installed`);
  }
  return { status: differences.length === 0 ? 'in-sync' : 'drifted', installed: tables, differences };
}

function diffStates(where: string, current: OwnedState, target: OwnedState): string[] {
  const lines: string[] = [];
  for (const chain of OWNED_CHAINS) {
    if (!current.chains.includes(chain)) lines.push(`${where}: chain ${chain} is missing`);
  }
  const chainsOf = (rules: readonly SavedRule[]) => [...new Set(rules.map((r) => r.chain))];
  const all = (state: OwnedState) => [...state.chainRules, ...state.jumps];
  for (const chain of new Set([...chainsOf(all(current)), ...chainsOf(all(target))])) {
    const have = all(current).filter((r) => r.chain === chain).map((r) => r.spec);
    const want = all(target).filter((r) => r.chain === chain).map((r) => r.spec);
    if (have.join('\n') === want.join('\n')) continue;
    const haveSet = new Set(have);
    const wantSet = new Set(want);
    const missing = want.filter((s) => !haveSet.has(s));
    const unexpected = have.filter((s) => !wantSet.has(s));
    for (const spec of missing) lines.push(`${where}: missing    -A ${chain} ${spec}`);
    for (const spec of unexpected) lines.push(`${where}: unexpected -A ${chain} ${spec}`);
    if (missing.length === 0 && unexpected.length === 0) {
      lines.push(`${where}: ${chain} has the right rules in the wrong order or count`);
    }
  }
  return lines;
}

function renderReport(report: StatusReport): string {
  const lines = [`status: ${report.status}`];
  for (const table of report.installed) {
    const chains = Object.entries(table.chains).map(([chain, count]) => `${chain} (${count})`).join(', ');
    lines.push(`  iptables-${table.backend} ${table.family}: ${chains}`);
    for (const jump of table.jumps) lines.push(`    ${jump}`);
  }
  for (const difference of report.differences) lines.push(`  ! ${difference}`);
  return `${lines.join('\n')}\n`;
}
