import { ExitCode } from '../errors.ts';
import type { TableSummary } from '../core/dialect.ts';
import { renderMetrics, type MetricsTable } from '../core/metrics.ts';
import { checkMetricsPath, writeMetricsFile } from '../host/metricsFile.ts';
import type { TableSurvey } from '../host/backend.ts';
import { requireNetAdmin } from '../host/system.ts';
import type { ApplyRecord } from '../host/record.ts';
import { statusOptions, type StatusOptions } from '../options.ts';
import type { CommandContext } from './context.ts';
import { chooseBackend, planApply, planDifferences, requireReadableRules, requireSomeBackend } from './plan.ts';
import { resolveConfig } from './rulesets.ts';

type Verdict = 'in-sync' | 'drifted' | 'absent' | 'installed';

interface InstalledTable extends TableSummary {
  backend: string;
  /** The table: "IPv4", "IPv6", or "inet consul_tproxy". */
  family: string;
}

interface StatusReport {
  status: Verdict;
  /** What the installed rules were compared with: the flags given, the last apply's (recorded), or nothing. */
  comparedWith: 'flags' | 'last-apply' | 'nothing';
  installed: InstalledTable[];
  /** Why it is drifted: one line per difference. */
  differences: string[];
  /** The last apply in this namespace, when recorded: a run killed halfway shows as not finished. */
  lastApply?: { pid: number; startedAt: string; finished: boolean };
}

const EXIT: Record<Verdict, number> = { 'in-sync': 0, installed: 0, drifted: ExitCode.drifted, absent: ExitCode.absent };

/**
 * Shows what is installed and, given apply's flags, whether it is exactly what an apply would install.
 * Returns the exit code: 0 in sync (or installed, without flags to compare), 3 drifted, 4 absent.
 */
export async function status(options: StatusOptions, context: CommandContext): Promise<number> {
  if (options.metricsFile !== undefined) checkMetricsPath(options.metricsFile);
  requireNetAdmin('reading the firewall rules', false);
  const netns = options.host.netns;
  const record = context.records.read(netns);
  const reference = referenceOf(options, record);
  const config = reference.rules === undefined ? undefined : await resolveConfig(reference.rules, reference.agent, context);
  const survey = await context.backends.survey(netns);
  const surveys = survey.tables;
  // The backend this command line names (a recorded one may be pinned by watch, never named by the operator).
  requireSomeBackend(surveys, options.host);
  requireReadableRules(survey, record?.backend);
  const installed = surveys.filter((s) => s.holdsOurs);
  const report: StatusReport = {
    status: installed.length === 0 ? 'absent' : 'installed',
    comparedWith: config === undefined ? 'nothing' : options.rules === undefined ? 'last-apply' : 'flags',
    installed: installed.map(describeTable),
    differences: [],
    ...(record && { lastApply: { pid: record.pid, startedAt: record.startedAt, finished: record.finished } }),
  };
  if (installed.length > 0 && config !== undefined) {
    // What an apply with these settings would do, read as differences: every write that changes
    // something, and every other backend's rules it would sweep.
    const plan = planApply(surveys, config, chooseBackend(surveys, reference.host, context.backends.systemDefault()));
    report.differences = planDifferences(plan);
    report.status = report.differences.length === 0 ? 'in-sync' : 'drifted';
  }
  if (options.metricsFile !== undefined) {
    // No repairs counter: status repairs nothing, and a counter that every run resets to 0 would only mislead.
    writeMetricsFile(
      options.metricsFile,
      renderMetrics({
        inSync: report.status === 'installed' ? undefined : report.status === 'in-sync',
        installed: installed.length > 0,
        repairs: undefined,
        lastCheckMs: Date.now(),
        tables: installed.map(metricsTable),
      }),
    );
  }
  context.output.stdout(options.json ? `${JSON.stringify(report, null, 2)}\n` : renderReport(report));
  return EXIT[report.status];
}

/**
 * What to compare with: the rule flags given, else the last apply's recorded settings (validated as flags
 * are), in this namespace, else nothing.
 */
function referenceOf(options: StatusOptions, record: ApplyRecord | undefined): Pick<StatusOptions, 'rules' | 'agent' | 'host'> {
  if (options.rules !== undefined || record === undefined) return options;
  const recorded = statusOptions(record.flags, {});
  return { rules: recorded.rules, agent: undefined, host: { ...recorded.host, netns: options.host.netns } };
}

/** A table as the metrics name it: by backend and by the name `status` gives it. */
export function metricsTable(survey: Pick<TableSurvey, 'table' | 'state'>): MetricsTable {
  const { table } = survey;
  return { backend: table.backend, table: tableName(table), summary: table.dialect.describe(survey.state) };
}

/** "IPv4", "IPv6", or "inet consul_tproxy": the label without its backend. */
const tableName = (table: TableSurvey['table']) => table.label.slice(table.backend.length + 1);

function describeTable(survey: TableSurvey): InstalledTable {
  const { table } = survey;
  return { backend: table.backend, family: tableName(table), ...table.dialect.describe(survey.state) };
}

function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function renderReport(report: StatusReport): string {
  const lines = [`status: ${report.status}${report.comparedWith === 'last-apply' ? " (compared with the last apply's settings)" : ''}`];
  const last = report.lastApply;
  if (last && !last.finished) {
    lines.push(
      isRunning(last.pid)
        ? `  ! an apply (pid ${last.pid}, started ${last.startedAt}) is changing the rules right now`
        : `  ! the last apply (pid ${last.pid}, started ${last.startedAt}) was stopped before it finished, or failed: run it again to repair (after what its error named, if it failed)`,
    );
  }
  for (const table of report.installed) {
    const chains = Object.entries(table.chains).map(([chain, count]) => `${chain} (${count})`).join(', ');
    lines.push(`  ${table.backend} ${table.family}: ${table.unreadable === undefined ? chains : `could not be read (${table.unreadable})`}`);
    if (table.sets) {
      const sets = Object.entries(table.sets).map(([set, count]) => `${set} (${count})`).join(', ');
      if (sets !== '') lines.push(`    sets: ${sets}`);
    }
    for (const hook of table.hooks) lines.push(`    ${hook}`);
  }
  for (const difference of report.differences) lines.push(`  ! ${difference}`);
  return `${lines.join('\n')}\n`;
}
