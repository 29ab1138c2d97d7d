import { ExitCode } from '../errors.ts';
import type { TableSummary } from '../core/dialect.ts';
import type { TableSurvey } from '../host/backend.ts';
import { requireNetAdmin } from '../host/system.ts';
import type { StatusOptions } from '../options.ts';
import type { CommandContext } from './context.ts';
import { chooseBackend, planApply, requireSomeBackend } from './plan.ts';
import { resolveConfig } from './rulesets.ts';

type Verdict = 'in-sync' | 'drifted' | 'absent' | 'installed';

interface InstalledTable extends TableSummary {
  backend: string;
  /** The table: "IPv4", "IPv6", or "inet consul_tproxy". */
  family: string;
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
  requireNetAdmin('reading the firewall rules', false);
  const config = options.rules === undefined ? undefined : await resolveConfig(options.rules, options.agent, context);
  const netns = options.host.netns;
  const surveys = await context.backends.survey(netns);
  requireSomeBackend(surveys);
  const installed = surveys.filter((s) => s.holdsOurs);
  const tables = installed.map(describeTable);
  let report: StatusReport;
  if (installed.length === 0) report = { status: 'absent', installed: tables, differences: [] };
  else if (config === undefined) report = { status: 'installed', installed: tables, differences: [] };
  else {
    // What an apply with these flags would do, read as differences: every write that changes something,
    // and every other backend's rules it would sweep.
    const plan = planApply(surveys, config, chooseBackend(surveys, options.host, context.backends.systemDefault()));
    const differences: string[] = [];
    for (const { survey, wanted } of plan.writes) {
      const { table } = survey;
      if (table.dialect.isEmpty(survey.state) && !table.dialect.isEmpty(wanted)) differences.push(`${table.label}: no rules installed`);
      else if (!table.dialect.same(survey.state, wanted)) {
        differences.push(...table.dialect.differences(survey.state, wanted).map((line) => `${table.label}: ${line}`));
      }
    }
    for (const { survey } of plan.sweeps) differences.push(`${survey.table.label}: has rules, but ${plan.choice.backend} is the backend in use`);
    report = { status: differences.length === 0 ? 'in-sync' : 'drifted', installed: tables, differences };
  }
  context.output.stdout(options.json ? `${JSON.stringify(report, null, 2)}\n` : renderReport(report));
  return EXIT[report.status];
}

function describeTable(survey: TableSurvey): InstalledTable {
  const { table } = survey;
  return { backend: table.backend, family: table.label.slice(table.backend.length + 1), ...table.dialect.describe(survey.state) };
}

function renderReport(report: StatusReport): string {
  const lines = [`status: ${report.status}`];
  for (const table of report.installed) {
    const chains = Object.entries(table.chains).map(([chain, count]) => `${chain} (${count})`).join(', ');
    lines.push(`  ${table.backend} ${table.family}: ${chains}`);
    if (table.sets) {
      const sets = Object.entries(table.sets).map(([set, count]) => `${set} (${count})`).join(', ');
      if (sets !== '') lines.push(`    sets: ${sets}`);
    }
    for (const hook of table.hooks) lines.push(`    ${hook}`);
  }
  for (const difference of report.differences) lines.push(`  ! ${difference}`);
  return `${lines.join('\n')}\n`;
}
