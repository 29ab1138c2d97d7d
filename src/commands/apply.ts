import { CliError, ExitCode } from '../errors.ts';
import {
  desiredState,
  EMPTY_STATE,
  ownedState,
  parseNatTable,
  renderTransaction,
  stateMatches,
  type OwnedState,
} from '../core/natTable.ts';
import type { RedirectConfig, Ruleset } from '../core/ruleset.ts';
import type { Family } from '../core/values.ts';
import { familyLabel, requireSomeBackend } from '../host/iptables.ts';
import { reconcile } from '../host/reconcile.ts';
import { chooseBackend, surveyTables, type TableSurvey } from '../host/survey.ts';
import { hasGlobalIpv6, requireNetAdmin, sshServerEndpoint } from '../host/system.ts';
import type { ApplyOptions } from '../options.ts';
import { resolveRulesets } from './rulesets.ts';
import type { CommandContext } from './context.ts';

export async function apply(options: ApplyOptions, context: CommandContext): Promise<void> {
  if (options.dryRun) {
    const { rulesets } = await resolveRulesets(options.rules, options.agent, context);
    context.output.stdout(renderDryRun(rulesets, context.version));
    return;
  }
  // Before anything else, the agent included: waiting for it only to then fail on permissions helps nobody.
  requireNetAdmin('applying traffic redirection rules');
  const { log } = context;
  const netns = options.host.netns;
  const runner = context.runner(netns);
  const startReads = () => {
    const surveying = surveyTables(runner, netns !== undefined);
    // Observed at once: a read failing while the rules are still being worked out must not go unhandled.
    surveying.catch(() => undefined);
    const bypassingIpv6 = options.rules.dualStack ? Promise.resolve(false) : hasGlobalIpv6(runner, netns);
    return { surveying, bypassingIpv6 };
  };
  // With no agent to wait for, the tables are read while the rules are worked out: with thousands of
  // exclusions, that takes as long as the reads. After an agent's answer instead: -wait may last a minute,
  // and a failed apply is rolled back to what the read found.
  const early = options.agent === undefined ? startReads() : undefined;
  let resolved: Awaited<ReturnType<typeof resolveRulesets>>;
  try {
    resolved = await resolveRulesets(options.rules, options.agent, context);
    refuseSshCapture(resolved.config, resolved.rulesets, options.allowSshCapture, context.env);
  } catch (error) {
    // Nothing is written; the reads are let finish rather than left running.
    await Promise.allSettled([early?.surveying]);
    throw error;
  }
  const { config, rulesets } = resolved;
  const { surveying, bypassingIpv6 } = early ?? startReads();
  // Rendered while the tables are read.
  const wanted = new Map(rulesets.map((ruleset) => [ruleset.family, desiredState(ruleset)]));
  const surveys = await surveying;
  requireSomeBackend(surveys.map((s) => s.table));
  const choice = chooseBackend(surveys, options.host.iptablesMode);
  log.debug(`using iptables-${choice.backend}: ${choice.reason}`);

  const targets = surveys
    .filter((s) => s.table.backend === choice.backend)
    .filter((s) => wanted.has(s.table.family) || s.holdsOurs);
  for (const family of wanted.keys()) {
    if (!targets.some((s) => s.table.family === family)) {
      throw new CliError(
        `the ${familyLabel(family)} programs of iptables-${choice.backend} (iptables, -save, -restore) are not installed: ` +
          "install the 'iptables' package (on RHEL, 'iptables-legacy' for the legacy backend)",
        ExitCode.missingProgram,
      );
    }
  }

  // Every family of the chosen backend goes to its target (a family no longer asked for is emptied). If one
  // fails, every table touched so far, the failing one included, is put back as the survey found it.
  const touched: TableSurvey[] = [];
  let anyChange = false;
  for (const survey of targets) {
    touched.push(survey);
    try {
      const result = await reconcile(survey.table, wanted.get(survey.table.family) ?? EMPTY_STATE, {
        firstSave: survey.dump,
        onRetry: (reason) => log.debug(`retrying ${familyLabel(survey.table.family)}: ${reason}`),
      });
      anyChange ||= result.changed;
    } catch (error) {
      await rollBack(touched, wanted, context);
      throw error;
    }
  }

  // Rules in the other backend would be evaluated too, and silently disagree with ours.
  for (const stale of surveys.filter((s) => s.table.backend !== choice.backend && s.holdsOurs)) {
    const where = `iptables-${stale.table.backend} (${familyLabel(stale.table.family)})`;
    try {
      await reconcile(stale.table, EMPTY_STATE, { firstSave: stale.dump });
      log.info(`removed stale rules from ${where}`);
      anyChange = true;
    } catch (error) {
      log.warn(`applied, but could not remove the stale rules in ${where}: ${(error as Error).message}`);
    }
  }

  if (await bypassingIpv6) {
    log.warn('this host has a global IPv6 address, and its IPv6 traffic bypasses the proxy: add -dual-stack to redirect it too');
  }
  context.output.stdout(`${summary(config, rulesets, choice.backend, netns, anyChange)}\n`);
}

/**
 * Puts each touched table back as the survey found it, but only if it still holds what this run wrote:
 * a table showing anything else was never changed by us, or has since been set by another run.
 */
async function rollBack(touched: readonly TableSurvey[], wanted: Map<Family, OwnedState>, context: CommandContext) {
  for (const { table, owned } of [...touched].reverse()) {
    const where = `iptables-${table.backend} ${familyLabel(table.family)}`;
    try {
      const now = ownedState(parseNatTable(await table.saveNat()));
      if (!stateMatches(now, wanted.get(table.family) ?? EMPTY_STATE)) continue;
      await reconcile(table, owned);
      context.log.warn(`put ${where} back to the rules it had before`);
    } catch (error) {
      context.log.error(`could not put ${where} back: ${(error as Error).message}`);
    }
  }
}

function summary(config: RedirectConfig, rulesets: Ruleset[], backend: string, netns: string | undefined, changed: boolean) {
  const families = rulesets.map((r) => familyLabel(r.family)).join('+');
  const exclusions =
    config.excludeInboundPorts.length +
    config.excludeOutboundPorts.length +
    config.excludeOutboundCidrs.length +
    config.excludeUids.length;
  const where = `iptables-${backend}, ${families}${netns ? `, netns ${netns}` : ''}`;
  const verb = changed ? 'applied traffic redirection' : 'traffic redirection already in place, nothing changed';
  return (
    `${verb} (${where}): inbound -> ${config.inboundPort}, outbound -> ${config.outboundPort}, ` +
    `proxy uid ${config.proxyUid}, ${exclusions} exclusion${exclusions === 1 ? '' : 's'}`
  );
}

/** The restore input for a host without these rules, one block per family. */
function renderDryRun(rulesets: readonly Ruleset[], version: string): string {
  return rulesets
    .map((ruleset) => {
      const tool = ruleset.family === 4 ? 'iptables-restore' : 'ip6tables-restore';
      return (
        `# redirect-traffic ${version} --dry-run: ${tool} --noflush input (${familyLabel(ruleset.family)}).\n` +
        '# On a host that already has these chains, the jumps found in PREROUTING/OUTPUT are also deleted (-D).\n' +
        renderTransaction(EMPTY_STATE, desiredState(ruleset))
      );
    })
    .join('\n');
}

function portCovered(port: number, exclusions: readonly string[]): boolean {
  return exclusions.some((entry) => {
    const [low, high = low] = entry.split(':').map(Number);
    return low !== undefined && high !== undefined && port >= low && port <= high;
  });
}

/** Refuses to cut off the SSH session this runs in, unless told to. */
function refuseSshCapture(config: RedirectConfig, rulesets: readonly Ruleset[], allow: boolean, env: NodeJS.ProcessEnv) {
  const ssh = sshServerEndpoint(env);
  if (!ssh || allow) return;
  // An IPv4-mapped address is an IPv4 connection to a dual-stack sshd.
  const family: Family = ssh.address.includes(':') && !/^::ffff:/i.test(ssh.address) ? 6 : 4;
  if (!rulesets.some((r) => r.family === family)) return;
  if (portCovered(ssh.port, config.excludeInboundPorts)) return;
  // By port alone, -netns or not: a false refusal costs one flag, a false pass the operator's session.
  throw new CliError(
    `refusing to apply: this SSH session (server port ${ssh.port}) would be redirected to the proxy and cut off; ` +
      `add -exclude-inbound-port=${ssh.port}, or -allow-ssh-capture to apply anyway`,
    ExitCode.config,
  );
}

