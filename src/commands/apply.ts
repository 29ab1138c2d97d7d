import { CliError, ConfigError, ExitCode } from '../errors.ts';
import type { RedirectConfig } from '../core/ruleset.ts';
import { familyLabel, type Family, type PortRange } from '../core/values.ts';
import { reconcile } from '../host/reconcile.ts';
import { RECORD_DIR, type ApplyRecord } from '../host/record.ts';
import { requireNetAdmin, sshServerEndpoint } from '../host/system.ts';
import type { BackendName, TableSurvey } from '../host/backend.ts';
import type { ApplyOptions, HostOptions } from '../options.ts';
import type { RawOptions } from '../flags.ts';
import {
  chooseBackend,
  planApply,
  planDifferences,
  planNeedsWrites,
  requireReadableRules,
  requireSomeBackend,
  type ApplyPlan,
  type TableStep,
} from './plan.ts';
import { reportForeign } from './report.ts';
import { flagsOf, resolveConfig } from './rulesets.ts';
import type { CommandContext, Survey } from './context.ts';

export async function apply(options: ApplyOptions, context: CommandContext): Promise<number> {
  if (options.dryRun) {
    const config = await resolveConfig(options.rules, options.agent, context, true);
    context.output.stdout(context.backends.dryRunProvider(options.host).dryRun(config, context.version));
    return ExitCode.ok;
  }
  // Before anything else, the agent included: waiting for it only to then fail on permissions helps nobody.
  requireNetAdmin('applying traffic redirection rules', true);
  const applied = await applyOnce(options, context, () => resolveConfig(options.rules, options.agent, context));
  context.output.stdout(`${applied.summary}\n`);
  return ExitCode.ok;
}

/** What an apply is told: everything but --dry-run (watch's options are these, plus its own). */
export type ApplySettings = Omit<ApplyOptions, 'dryRun'>;

export interface Applied {
  config: RedirectConfig;
  plan: ApplyPlan;
  /** What the tables differed in before the write, one line each naming its table; worked out when asked for. */
  differences(): string[];
  changed: boolean;
  /** The line an apply prints: what was installed where. */
  summary: string;
}

/**
 * One whole apply, as `apply` runs it and `watch` starts with: `resolve` works out the configuration (asking
 * the agent with -proxy-id), the SSH check refuses to cut off this session, and the tables are brought to it
 * under the namespace lock (see converge). Returns what was done; prints nothing but warnings.
 */
export async function applyOnce(
  options: ApplySettings,
  context: CommandContext,
  resolve: () => Promise<RedirectConfig>,
): Promise<Applied> {
  const netns = options.host.netns;
  // Runs on one namespace take turns, from their first read to their last write: a read taken while
  // another run writes would be stale by the time this one writes.
  const startReads = async () => {
    const lock = await context.lockNamespace(netns);
    const surveying = context.backends.survey(netns);
    // Observed at once: a read failing while the rules are still being worked out must not go unhandled.
    surveying.catch(() => undefined);
    return { lock, surveying };
  };
  // With no agent to wait for, the tables are read while the rules are worked out: with thousands of
  // exclusions, that takes as long as the reads. After an agent's answer instead: -wait may last a minute,
  // and a failed apply is rolled back to what the read found.
  const early = options.agent === undefined ? startReads() : undefined;
  early?.catch(() => undefined);
  let config: RedirectConfig;
  try {
    config = await resolve();
    refuseSshCapture(config, options.allowSshCapture, context.env);
  } catch (error) {
    // Nothing is written; the reads are let finish rather than left running.
    const started = await early?.catch(() => undefined);
    await Promise.allSettled([started?.surveying]);
    started?.lock.release();
    throw error;
  }
  const { lock, surveying } = await (early ?? startReads());
  let converged: Converged;
  let survey: Survey;
  try {
    // Worked out while the reads run (with thousands of exclusions, reading and comparing the record takes
    // as long as they do); under the lock, as records are written under it.
    const record = planRecord(options.host, config, context);
    survey = await surveying;
    requireReadableRules(survey, record.previous?.backend);
    converged = await converge(survey.tables, config, options.host, context, record);
  } finally {
    lock.release();
  }
  if (survey.globalIpv6 && !config.dualStack) {
    const where = netns === undefined ? 'this host' : `netns ${netns}`;
    context.log.warn(`${where} has a global IPv6 address, and its IPv6 traffic bypasses the proxy: add -dual-stack to redirect it too`);
  }
  return { config, ...converged, summary: summary(config, converged.plan, netns, converged.changed) };
}

export interface Converged {
  plan: ApplyPlan;
  /** What the tables differed in before the write; worked out only when asked (thousands of lines at 10,000 rules). */
  differences(): string[];
  changed: boolean;
}

/**
 * Survey to plan to writes: chooses the backend, plans every table's state for `config`, and writes (with
 * SIGTERM and SIGINT held back) only what differs. The caller holds the namespace lock from the survey on.
 */
export async function converge(
  surveys: TableSurvey[],
  config: RedirectConfig,
  host: HostOptions,
  context: CommandContext,
  record = planRecord(host, config, context),
): Promise<Converged> {
  requireSomeBackend(surveys, host);
  const choice = chooseBackend(surveys, host, context.backends.systemDefault());
  context.log.debug(`using ${choice.backend}: ${choice.reason}`);
  const plan = planApply(surveys, config, choice);
  // Nothing to write: not even a process to start (reconcile would only compare again).
  const writes = async () => planNeedsWrites(plan) && (await execute(plan, context));
  const changed = await context.deferSignals(() => recorded(host.netns, { ...record, backend: choice.backend }, context, writes));
  return { plan, differences: () => planDifferences(plan, { absentAsOneLine: false }), changed };
}

/** The record an apply writes: the settings it is for, the one it replaces, and whether that one is the same. */
interface RecordPlan {
  flags: RawOptions;
  /** The backend the writes go to, once chosen. */
  backend?: BackendName;
  previous: ApplyRecord | undefined;
  /** The same settings, already recorded as finished: nothing to write (watch compares every few seconds). */
  unchanged: boolean;
}

function planRecord(host: HostOptions, config: RedirectConfig, context: CommandContext): RecordPlan {
  const previous = readablePrevious(host.netns, context);
  const flags = flagsOf(config, host);
  return { flags, previous, unchanged: previous?.finished === true && JSON.stringify(previous.flags) === JSON.stringify(flags) };
}

/**
 * Runs the writes with a record of what they are for: marked unfinished before, finished after, and put
 * back as it was when the writes failed and were rolled back. A run killed in between leaves "unfinished",
 * which a bare `status` reports.
 */
async function recorded<T>(netns: string | undefined, plan: RecordPlan, context: CommandContext, writes: () => Promise<T>): Promise<T> {
  const { previous, flags, backend } = plan;
  const record: ApplyRecord = { flags, pid: process.pid, startedAt: new Date().toISOString(), finished: false, ...(backend && { backend }) };
  // The same settings, and the same backend, already recorded as finished: that record stands.
  if (plan.unchanged && previous?.backend === backend) {
    try {
      return await writes();
    } catch (error) {
      // A failed write was rolled back, and the record (these settings) still holds; a failed sweep is noted as below.
      if (error instanceof StaleRulesLeft) context.records.write(netns, record);
      throw error;
    }
  }
  // A record that cannot be written is removed (see writeRecord); the finished one may still be written then.
  if (!context.records.write(netns, record)) context.log.debug(`could not record this apply's start under ${RECORD_DIR}`);
  try {
    const result = await writes();
    if (!context.records.write(netns, { ...record, finished: true })) {
      context.log.warn(`could not record this apply's settings under ${RECORD_DIR} (is /run full?): a bare status has nothing to compare with`);
    }
    return result;
  } catch (error) {
    // The chosen backend holds this run's rules, the other one still some: this run's record, unfinished.
    if (error instanceof StaleRulesLeft) throw error;
    if (previous) context.records.write(netns, previous);
    else context.records.remove(netns);
    throw error;
  }
}

/**
 * The chosen backend was written, but our rules in another could not be removed: they still take part in
 * the redirection (their exclusions may override the new ones), so the apply fails, as Consul's own does.
 */
class StaleRulesLeft extends CliError {}

/** The previous record; a damaged one is only a warning here: the record this run writes replaces it. */
function readablePrevious(netns: string | undefined, context: CommandContext): ApplyRecord | undefined {
  try {
    return context.records.read(netns);
  } catch (error) {
    if (!(error instanceof CliError)) throw error;
    context.log.warn(`${error.message.replace(/: remove it, or run an apply$/, '')}: replacing it`);
    return undefined;
  }
}

/**
 * How long the writes may keep starting new attempts against locks and other writers; the last attempt may
 * then wait its 10 s for the xtables lock. With the agent's -wait (60 s in the units), its request timeout
 * (5 s) and the namespace lock (20 s): 60 + 5 + 20 + 20 + 10 = 115 s, within the units' start limit (120 s).
 */
const WRITE_LIMIT_MS = 20_000;
const ROLLBACK_LIMIT_MS = 5_000;

/**
 * Writes the chosen backend's tables; if one fails, every table touched so far, the failing one included,
 * is put back as the survey found it. Then removes our rules from every other backend, each tried even if
 * one fails (StaleRulesLeft then). True if anything changed.
 */
async function execute(plan: ApplyPlan, context: CommandContext): Promise<boolean> {
  const { log } = context;
  const deadline = Date.now() + WRITE_LIMIT_MS;
  const touched: TableStep[] = [];
  const written = new Set<TableStep>();
  let anyChange = false;
  for (const step of plan.writes) {
    touched.push(step);
    try {
      const result = await reconcile(step.survey.table, step.wanted, {
        firstDump: step.survey.dump,
        alsoInTransaction: step.disarming,
        deadline,
        onForeignRemoved: reportForeign(step.survey, context),
        onRetry: (reason) => log.debug(`retrying ${step.survey.table.label}: ${reason}`),
      });
      anyChange ||= result.changed;
      if (result.changed) written.add(step);
    } catch (error) {
      await rollBack(touched, context);
      throw error;
    }
  }
  const left: StaleRulesLeft[] = [];
  for (const { survey, wanted, disarmedBy } of plan.sweeps) {
    const disarmed = disarmedBy !== undefined && written.has(disarmedBy);
    try {
      // A table the write emptied chains of is read again: the survey's dump is no longer what it holds.
      await reconcile(survey.table, wanted, {
        firstDump: disarmed ? undefined : survey.dump,
        deadline,
        onForeignRemoved: reportForeign(survey, context),
      });
      log.info(`removed the redirection rules from ${survey.table.label}: ${plan.choice.backend} holds them now`);
      anyChange = true;
    } catch (error) {
      if (!(error instanceof CliError)) throw error;
      const state = disarmed ? 'emptied by the same transaction, no longer redirecting, but left behind' : 'which still redirect traffic';
      left.push(
        new StaleRulesLeft(
          `applied with ${plan.choice.backend}, but could not remove the old rules in ${survey.table.label}, ${state}: ` +
            `${error.message}; run the apply again, or cleanup`,
          error.kind,
          { cause: error },
        ),
      );
    }
  }
  const [first, ...more] = left;
  if (first) {
    for (const failure of more) log.error(failure.message);
    throw first;
  }
  return anyChange;
}

/**
 * Puts each touched table back as the survey found it, but only if it still holds what this run wrote:
 * a table showing anything else was never changed by us, or has since been set by another run.
 */
async function rollBack(touched: readonly TableStep[], context: CommandContext) {
  for (const { survey, wanted } of [...touched].reverse()) {
    const { table } = survey;
    try {
      if (!table.dialect.same(table.dialect.parse(await table.read()), wanted)) continue;
      // Within the units' start limit too (see WRITE_LIMIT_MS): a few attempts, not eight of 10 s each.
      await reconcile(table, survey.state, { deadline: Date.now() + ROLLBACK_LIMIT_MS });
      context.log.warn(`put ${table.label} back to the rules it had before`);
    } catch (error) {
      context.log.error(`could not put ${table.label} back: ${(error as Error).message}`);
    }
  }
}

const familyText = (families: readonly Family[]) => families.map(familyLabel).join('+');

export function summary(config: RedirectConfig, plan: ApplyPlan, netns: string | undefined, changed: boolean) {
  const exclusions =
    config.excludeInboundPorts.length +
    config.excludeOutboundPorts.length +
    config.excludeOutboundCidrs.length +
    config.excludeUids.length;
  const families: Family[] = config.dualStack ? [4, 6] : [4];
  const where = `${plan.choice.backend}, ${familyText(families)}${netns ? `, netns ${netns}` : ''}`;
  const verb = changed ? 'applied traffic redirection' : 'traffic redirection already in place, nothing changed';
  return (
    `${verb} (${where}): inbound -> ${config.inboundPort}, outbound -> ${config.outboundPort}, ` +
    `proxy uid ${config.proxyUid}, ${exclusions} exclusion${exclusions === 1 ? '' : 's'}`
  );
}

const portCovered = (port: number, exclusions: readonly PortRange[]) =>
  exclusions.some((range) => port >= range.low && port <= range.high);

/** Refuses to cut off the SSH session this runs in, unless told to. */
export function refuseSshCapture(config: RedirectConfig, allow: boolean, env: NodeJS.ProcessEnv) {
  const ssh = sshServerEndpoint(env);
  if (!ssh || allow) return;
  // An IPv4-mapped address is an IPv4 connection to a dual-stack sshd.
  const family: Family = ssh.address.includes(':') && !/^::ffff:/i.test(ssh.address) ? 6 : 4;
  if (family === 6 && !config.dualStack) return;
  if (portCovered(ssh.port, config.excludeInboundPorts)) return;
  // By port alone, -netns or not: a false refusal costs one flag, a false pass the operator's session.
  throw new ConfigError(
    `refusing to apply: this SSH session (server port ${ssh.port}) would be redirected to the proxy and cut off; ` +
      `add -exclude-inbound-port=${ssh.port}, or -allow-ssh-capture to apply anyway`,
  );
}
