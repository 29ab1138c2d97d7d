import { setTimeout as sleep } from 'node:timers/promises';
import { renderMetrics, type MetricsTable } from '../core/metrics.ts';
import type { ProxyPorts } from '../core/registration.ts';
import type { RedirectConfig } from '../core/ruleset.ts';
import { CliError, ConfigError, ExitCode } from '../errors.ts';
import { checkMetricsPath, writeMetricsFile } from '../host/metricsFile.ts';
import type { TableSurvey } from '../host/backend.ts';
import type { ChangeFeed } from '../host/monitor.ts';
import { requireNetAdmin } from '../host/system.ts';
import type { HostOptions, WatchOptions } from '../options.ts';
import { applyOnce, converge, refuseSshCapture } from './apply.ts';
import type { CommandContext } from './context.ts';
import { chooseBackend, kindOf, pinBackend, planApply, planDifferences, planNeedsWrites, type ApplyPlan } from './plan.ts';
import { configOf, flagPorts, resolveUids, type ResolvedUids } from './rulesets.ts';
import { metricsTable } from './status.ts';

// `watch`: apply, then keep the installed rules equal to the wanted ones until SIGTERM or SIGINT. Where the
// kernel reports changes (nftables, iptables-nft: `nft monitor`), a burst of them is answered by one check
// within a second; every -interval, the tables are compared anyway (the only way to see iptables-legacy's
// changes, and a safety net everywhere). A check reads under the namespace lock and writes only when our
// rules differ from the wanted ones, so changes elsewhere (Docker, an operator's own tables) and the events
// of our own writes cost one read and nothing more. With -proxy-id, the proxy's registration is
// followed with the agent's blocking queries, and a changed one is applied at once.

export interface WatchTuning {
  /** How long a burst of change events may last before the check (each new event within it is folded in). */
  debounceMs: number;
  /** How long the agent may hold a blocking query on the registration. */
  agentWaitSeconds: number;
  /** Retrying an agent that does not answer: from this delay, doubling up to the maximum. */
  agentRetryMinMs: number;
  agentRetryMaxMs: number;
  /** After `nft monitor` ends unexpectedly, it is started again after this long (polling goes on meanwhile). */
  monitorRestartMs: number;
}

export const WATCH_TUNING: WatchTuning = {
  debounceMs: 150,
  agentWaitSeconds: 60,
  agentRetryMinMs: 1_000,
  agentRetryMaxMs: 30_000,
  monitorRestartMs: 30_000,
};

/**
 * Most checks read only the kept backend's tables (one `nft` for nftables, two saves for iptables); every
 * this many checks, and whenever a check is to write, all backends are read, so that our rules appearing in
 * another one (Consul's own command, an apply with another -backend) are swept within a minute at the default -interval.
 */
const FULL_SURVEY_EVERY = 12;

/**
 * Where the kernel reports changes, polling is only a safety net (a monitor that missed something): this
 * often at most, or -interval if longer. Each check costs a process or two: every 5 s that alone was about
 * 1% of a core, against "well under 1%" idle.
 */
const SAFETY_NET_MS = 60_000;

/**
 * A repair is not repeated within this long if what it repairs comes back the same: something undoes each
 * write, or the backend reads our rules back spelled otherwise. Each write is an event that starts the next
 * check, so repeating it at once would write in a loop.
 */
const REPEAT_REPAIR_MS = 10_000;

/** A check that failed (a lock held, a table unreadable) is tried again after 1 s, doubling up to 30 s. */
const RETRY_MIN_MS = 1_000;
const RETRY_MAX_MS = 30_000;

/** At most this many differences per table in a repair's log line; the rest are counted. */
const LOGGED_DIFFERENCES = 5;

export async function watch(options: WatchOptions, context: CommandContext, tuning: WatchTuning = WATCH_TUNING): Promise<number> {
  if (options.metricsFile !== undefined) checkMetricsPath(options.metricsFile);
  requireNetAdmin('keeping traffic redirection rules in place', false);
  const netns = options.host.netns;
  const where = netns === undefined ? 'this network namespace' : `netns ${netns}`;
  let claim;
  try {
    claim = await context.claimWatch(netns);
  } catch (error) {
    // Two watches would fight over the same rules; no retry helps until the other one stops (see README).
    if (!(error instanceof CliError)) throw error;
    throw new ConfigError(`${error.message}: one watch per network namespace; stop the other one first`);
  }
  const stop = context.untilStopped();
  // Writes under way, so that a signal during the first apply lets the write finish (and roll back) first.
  let writing: Promise<unknown> = Promise.resolve();
  const tracked: CommandContext = {
    ...context,
    deferSignals: (work) => {
      const running = context.deferSignals(work);
      writing = running.catch(() => undefined);
      return running;
    },
  };
  try {
    const uids = await resolveUids(options.rules, context);
    let version: string | undefined;
    const resolve = async () => {
      const { agent } = options;
      const proxyId = options.rules.proxyId;
      if (proxyId === undefined || agent === undefined) return configOf(options.rules, uids, flagPorts(options.rules));
      const read = await context.readProxyPorts(agent, proxyId, context.log);
      version = read.version;
      return configOf(options.rules, uids, read.ports);
    };
    const first = applyOnce(options, tracked, resolve);
    first.catch(() => undefined);
    const early = await Promise.race([first.then(() => undefined), stop.stopped]);
    if (early !== undefined) {
      await writing;
      context.log.info(`received ${early} before the rules were in place: stopping`);
      return ExitCode.ok;
    }
    const applied = await first;
    context.output.stdout(`${applied.summary}\n`);
    const watcher = new Watcher(options, tracked, tuning, {
      config: applied.config,
      // The backend the first apply chose stays the one kept: after `nft flush ruleset`, auto would choose anew.
      host: pinBackend(options.host, applied.plan.choice.backend),
      uids,
      version,
      plan: applied.plan,
    });
    const signal = await watcher.run(stop.stopped, () => context.notifyReady());
    // The stop signal may reach a check's child too (systemd signals the whole unit): that check is unfinished.
    const left = watcher.lastCheckInSync()
      ? 'the rules stay in place (cleanup removes them)'
      : 'the last check could not finish; the rules are left as they are (cleanup removes them)';
    context.log.info(`received ${signal}: stopped watching ${where}; ${left}`);
    return ExitCode.ok;
  } finally {
    stop.dispose();
    claim.release();
  }
}

interface WatchStart {
  config: RedirectConfig;
  host: HostOptions;
  uids: ResolvedUids;
  /** The registration's version the first apply read, for the first blocking query. */
  version: string | undefined;
  plan: ApplyPlan;
}

/** The loop: checks on events and on a timer, one at a time, repairs when needed, follows the agent. */
export class Watcher {
  private config: RedirectConfig;
  private readonly host: HostOptions;
  private repairs = 0;
  private lastRepairMs: number | undefined;
  /** What the last repair found wrong, and when: a repair of the very same is held back (REPEAT_REPAIR_MS). */
  private lastRepair: { drift: string; atMs: number } | undefined;
  private heldBack: string | undefined;
  private inSync = true;
  private tables: MetricsTable[];
  private agentUp: boolean | undefined;
  /** A changed registration waiting to be applied by the next check: applied, not repaired. */
  private update: string | undefined;
  private checking: Promise<void> | undefined;
  private checks = 0;
  private checkAgain = false;
  private debounce: NodeJS.Timeout | undefined;
  private poll: NodeJS.Timeout | undefined;
  private feed: ChangeFeed | undefined;
  private readonly stopping = new AbortController();
  private failCheck: string | undefined;
  /** After a failed check: the next try, and the delay before the one after. */
  private retry: NodeJS.Timeout | undefined;
  private retryMs = RETRY_MIN_MS;
  private failMetrics: string | undefined;
  private fatal: (error: unknown) => void = () => undefined;

  private readonly options: WatchOptions;
  private readonly context: CommandContext;
  private readonly tuning: WatchTuning;
  private readonly start: WatchStart;

  constructor(options: WatchOptions, context: CommandContext, tuning: WatchTuning, start: WatchStart) {
    this.options = options;
    this.context = context;
    this.tuning = tuning;
    this.start = start;
    this.config = start.config;
    this.host = start.host;
    this.tables = tablesAfter(start.plan);
    this.agentUp = options.rules.proxyId !== undefined && options.agent !== undefined ? true : undefined;
  }

  /** Whether the last check finished, finding (or leaving) the rules as wanted. */
  lastCheckInSync(): boolean {
    return this.inSync;
  }

  /** Repairs made so far. */
  get repairCount(): number {
    return this.repairs;
  }

  /**
   * Watches until `stopped` resolves; returns its signal once a check or repair under way has finished.
   * `ready` is called once the watch is set up (the metrics written, the events heard).
   */
  async run(stopped: Promise<NodeJS.Signals>, ready: () => Promise<void>): Promise<NodeJS.Signals> {
    const failed = new Promise<never>((_, reject) => (this.fatal = reject));
    failed.catch(() => undefined);
    try {
      this.publish(Date.now());
      await this.listen();
      this.repoll();
      // Whatever changed between the first apply and the monitor's start is seen now.
      this.schedule();
      if (this.options.rules.proxyId !== undefined && this.options.agent !== undefined) {
        this.follow().catch((error) => this.fatal(error));
      }
      await ready();
      const how = this.feed ? `on change events and every ${seconds(this.pollMs())}` : `every ${seconds(this.pollMs())}`;
      this.context.log.info(`watching the rules (${this.start.plan.choice.backend}): checking ${how}`);
      return await Promise.race([stopped, failed]);
    } finally {
      this.stopping.abort();
      clearTimeout(this.debounce);
      clearTimeout(this.retry);
      clearInterval(this.poll);
      this.feed?.stop();
      // A check or repair under way finishes first: a write is never cut off.
      await this.checking;
    }
  }

  private pollMs(): number {
    return this.feed ? Math.max(this.options.intervalMs, SAFETY_NET_MS) : this.options.intervalMs;
  }

  /** (Re)starts polling at the period that fits: often without change events, seldom with them. */
  private repoll(): void {
    clearInterval(this.poll);
    // The only timer that keeps the process alive: the watch lasts until a signal ends it.
    this.poll = setInterval(() => this.runCheck(), this.pollMs());
  }

  /** Starts hearing the chosen backend's changes; where it cannot, polling alone watches. */
  private async listen(): Promise<void> {
    if (this.stopping.signal.aborted) return;
    const backend = this.start.plan.choice.backend;
    let feed: ChangeFeed | undefined;
    try {
      feed = await this.context.backends.listen(this.options.host.netns, backend, (event) => {
        this.context.log.debug(`change event: ${event}`);
        this.schedule();
      });
    } catch (error) {
      if (!(error instanceof CliError)) throw error;
      this.context.log.warn(`cannot hear ${backend}'s changes (${error.message}): checking every ${seconds(this.options.intervalMs)} only`);
    }
    if (feed === undefined) {
      this.context.log.debug(`${backend} reports no changes: polling every ${seconds(this.options.intervalMs)}`);
      return;
    }
    this.feed = feed;
    if (this.poll !== undefined) this.repoll();
    void feed.ended.then((reason) => {
      if (this.stopping.signal.aborted) return;
      this.feed = undefined;
      this.repoll();
      const again = seconds(this.tuning.monitorRestartMs);
      this.context.log.warn(`${reason}: checking every ${seconds(this.options.intervalMs)} only; listening again in ${again}`);
      sleep(this.tuning.monitorRestartMs, undefined, { signal: this.stopping.signal, ref: false })
        .then(() => this.listen())
        .then(() => this.schedule())
        .catch(() => undefined);
    });
  }

  /** A check after the debounce delay; further events meanwhile are folded into it. */
  private schedule(): void {
    if (this.stopping.signal.aborted || this.debounce !== undefined) return;
    this.debounce = setTimeout(() => {
      this.debounce = undefined;
      this.runCheck();
    }, this.tuning.debounceMs);
    this.debounce.unref();
  }

  /** One check at a time: asked for during one, another follows it (after the debounce delay, folding our own write's events). */
  private runCheck(): void {
    if (this.stopping.signal.aborted) return;
    if (this.checking) {
      this.checkAgain = true;
      return;
    }
    this.checking = this.check()
      .catch((error) => this.fatal(error))
      .finally(() => {
        this.checking = undefined;
        if (this.checkAgain) {
          this.checkAgain = false;
          this.schedule();
        }
      });
  }

  /**
   * Reads; writes only when our rules differ from the wanted ones. Under the namespace lock, so that what is
   * read is still what is there when a repair writes (a check holds it for one read; an apply waits that long).
   * A failure is logged and the next check tries again.
   */
  private async check(): Promise<void> {
    const { context } = this;
    const netns = this.options.host.netns;
    try {
      const lock = await context.lockNamespace(netns);
      let converged;
      try {
        this.checks += 1;
        const full = this.checks % FULL_SURVEY_EVERY === 0 || this.update !== undefined;
        let surveys = (await context.backends.survey(netns, full ? undefined : [kindOf(this.start.plan.choice.backend)])).tables;
        const planFor = (tables: TableSurvey[]) => planApply(tables, this.config, chooseBackend(tables, this.host, context.backends.systemDefault()));
        let plan = planFor(surveys);
        // A repair plans from every backend's tables: it also sweeps our rules from the others.
        if (!full && planNeedsWrites(plan)) {
          surveys = (await context.backends.survey(netns)).tables;
          plan = planFor(surveys);
        }
        const drift = planNeedsWrites(plan) && this.update === undefined ? planDifferences(plan).join('\n') : undefined;
        const sinceRepairMs = Date.now() - (this.lastRepair?.atMs ?? 0);
        if (drift !== undefined && drift === this.lastRepair?.drift && sinceRepairMs < REPEAT_REPAIR_MS) {
          this.holdBack(drift, REPEAT_REPAIR_MS - sinceRepairMs);
          return;
        }
        converged = await converge(surveys, this.config, this.host, context);
        if (converged.changed && drift !== undefined) this.lastRepair = { drift, atMs: Date.now() };
      } finally {
        lock.release();
      }
      const update = this.update;
      this.update = undefined;
      if (update !== undefined) {
        context.log.info(`applied the changed registration (${update})${converged.changed ? '' : ': the rules already matched it'}`);
      } else if (converged.changed) {
        this.repairs += 1;
        this.lastRepairMs = Date.now();
        context.log.warn(`repaired ${repairText(converged.differences())}`);
      }
      this.settled(converged.plan);
    } catch (error) {
      if (!(error instanceof CliError)) throw error;
      this.inSync = false;
      // Tried again soon, backing off, whatever the poll period: with events, that may be a minute.
      const retryMs = this.retryMs;
      this.retryMs = Math.min(retryMs * 2, RETRY_MAX_MS);
      clearTimeout(this.retry);
      this.retry = setTimeout(() => this.runCheck(), retryMs);
      if (this.failCheck !== error.message) {
        context.log.warn(`checking the rules failed, trying again in ${seconds(retryMs)} (and on the next change): ${error.message}`);
      }
      this.failCheck = error.message;
      this.publish(Date.now());
    }
  }

  /** A repair of the same drift as the last one, so soon after it, is left until `waitMs` has passed. */
  private holdBack(drift: string, waitMs: number): void {
    if (this.heldBack !== drift) {
      this.context.log.error(
        `the rules drifted the same way again right after a repair (something undoes each write, or the backend reads our ` +
          `rules back spelled otherwise); not repairing it again for ${Math.ceil(waitMs / 1000)}s; see \`redirect-traffic status\``,
      );
    }
    this.heldBack = drift;
    this.inSync = false;
    clearTimeout(this.retry);
    this.retry = setTimeout(() => this.runCheck(), waitMs);
    this.publish(Date.now());
  }

  /** After a check that found (or made) the rules as wanted. */
  private settled(plan: ApplyPlan): void {
    if (this.failCheck !== undefined) this.context.log.info('checking the rules works again');
    this.failCheck = undefined;
    this.heldBack = undefined;
    this.retryMs = RETRY_MIN_MS;
    clearTimeout(this.retry);
    this.inSync = true;
    this.tables = tablesAfter(plan);
    this.publish(Date.now());
  }

  /** Follows the proxy's registration with blocking queries; an agent that goes away is retried with backoff. */
  private async follow(): Promise<void> {
    const { context, options } = this;
    const agent = options.agent;
    const proxyId = options.rules.proxyId;
    if (agent === undefined || proxyId === undefined) return;
    let since = this.start.version;
    let delay = this.tuning.agentRetryMinMs;
    let outage = false;
    const signal = this.stopping.signal;
    while (!signal.aborted) {
      try {
        const block = since === undefined ? undefined : { since, waitSeconds: this.tuning.agentWaitSeconds };
        const read = await context.readProxyPorts(agent, proxyId, context.log, block);
        if (signal.aborted) return;
        if (outage) context.log.info(`the Consul agent answers again for ${proxyId}`);
        outage = false;
        delay = this.tuning.agentRetryMinMs;
        this.setAgentUp(true);
        this.registration(read.ports);
        since = read.version;
        // An agent that sends no version cannot block: ask again at the watch's pace rather than in a busy loop.
        if (since === undefined) await sleep(this.options.intervalMs, undefined, { signal, ref: false }).catch(() => undefined);
      } catch (error) {
        if (signal.aborted) return;
        if (!(error instanceof CliError)) throw error;
        this.setAgentUp(false);
        if (!outage) {
          context.log.warn(
            `${error.message}; the rules in place stay as they are; asking again, every ${seconds(delay)} at first, then up to every ${seconds(this.tuning.agentRetryMaxMs)}`,
          );
        } else context.log.debug(`the agent still does not answer: ${error.message}`);
        outage = true;
        // The first question after an outage does not block: it hears at once that the agent is back, and
        // what the registration became meanwhile.
        since = undefined;
        await sleep(delay, undefined, { signal, ref: false }).catch(() => undefined);
        delay = Math.min(delay * 2, this.tuning.agentRetryMaxMs);
      }
    }
  }

  /** A registration as the agent answered: applied by the next check when it asks for other rules. */
  private registration(ports: ProxyPorts): void {
    const config = configOf(this.options.rules, this.start.uids, ports);
    if (JSON.stringify(config) === JSON.stringify(this.config)) return;
    try {
      refuseSshCapture(config, this.options.allowSshCapture, this.context.env);
    } catch (error) {
      if (!(error instanceof CliError)) throw error;
      this.context.log.error(`not applying the changed registration: ${error.message}`);
      return;
    }
    this.update = changedPorts(this.config, config);
    this.context.log.info(`the registration of ${this.options.rules.proxyId} changed: ${this.update}`);
    this.config = config;
    this.runCheck();
  }

  private setAgentUp(up: boolean): void {
    if (this.agentUp === up) return;
    this.agentUp = up;
    this.publish(undefined);
  }

  /** Writes the metrics file, when there is one; `checkedMs` is the time of the check it reports, if any. */
  private lastCheckMs = Date.now();
  private publish(checkedMs: number | undefined): void {
    if (checkedMs !== undefined) this.lastCheckMs = checkedMs;
    const path = this.options.metricsFile;
    if (path === undefined) return;
    const text = renderMetrics({
      inSync: this.inSync,
      installed: this.tables.length > 0,
      repairs: this.repairs,
      lastCheckMs: this.lastCheckMs,
      lastRepairMs: this.lastRepairMs,
      agentUp: this.agentUp,
      tables: this.tables,
    });
    try {
      writeMetricsFile(path, text);
      if (this.failMetrics !== undefined) this.context.log.info(`writing the metrics file ${path} works again`);
      this.failMetrics = undefined;
    } catch (error) {
      if (!(error instanceof CliError)) throw error;
      if (this.failMetrics !== error.message) this.context.log.warn(`${error.message}; the watch goes on`);
      this.failMetrics = error.message;
    }
  }
}

/**
 * The tables holding our rules once a check has found or made them as wanted: the wanted states (a write is
 * checked before it counts as done). Tables the plan leaves empty are left out.
 */
function tablesAfter(plan: ApplyPlan): MetricsTable[] {
  return plan.writes
    .map(({ survey, wanted }) => ({ table: survey.table, state: wanted }))
    .filter(({ table, state }) => !table.dialect.isEmpty(state))
    .map(metricsTable);
}

/** "iptables-nft IPv4: chain CONSUL_PROXY_OUTPUT is missing, ...; iptables-nft IPv6: ...". */
export function repairText(differences: readonly string[]): string {
  const byTable = new Map<string, string[]>();
  for (const line of differences) {
    const split = line.indexOf(': ');
    const table = split < 0 ? '' : line.slice(0, split);
    // One space wherever status aligns its columns: `missing    -A ...` reads as `missing -A ...` in one line.
    const text = (split < 0 ? line : line.slice(split + 2)).replace(/\s+/g, ' ');
    const lines = byTable.get(table);
    if (lines) lines.push(text);
    else byTable.set(table, [text]);
  }
  return [...byTable]
    .map(([table, lines]) => {
      const shown = lines.slice(0, LOGGED_DIFFERENCES).join(', ');
      const more = lines.length > LOGGED_DIFFERENCES ? `, and ${lines.length - LOGGED_DIFFERENCES} more` : '';
      return `${table}${table ? ': ' : ''}${shown}${more}`;
    })
    .join('; ');
}

/** What a changed registration changes in the rules: "inbound port 21000 -> 21001". */
export function changedPorts(before: RedirectConfig, after: RedirectConfig): string {
  const ports = (config: RedirectConfig) =>
    config.excludeInboundPorts.map((range) => (range.low === range.high ? `${range.low}` : `${range.low}-${range.high}`)).join(',') || 'none';
  const changes: string[] = [];
  if (before.inboundPort !== after.inboundPort) changes.push(`inbound port ${before.inboundPort} -> ${after.inboundPort}`);
  if (before.outboundPort !== after.outboundPort) changes.push(`outbound port ${before.outboundPort} -> ${after.outboundPort}`);
  if (ports(before) !== ports(after)) changes.push(`excluded inbound ports ${ports(before)} -> ${ports(after)}`);
  return changes.join(', ') || 'the rules it asks for changed';
}

const seconds = (ms: number) => `${ms / 1000}s`;
