import { ExitCode } from '../errors.ts';
import { HARD_LIMIT_MS, judge, planProbe, probeFailed, renderResult, type VerifyResult } from '../core/verification.ts';
import { readPasswd, requireNetAdmin } from '../host/system.ts';
import type { VerifyOptions } from '../options.ts';
import type { CommandContext } from './context.ts';
import { resolveConfig } from './rulesets.ts';

/**
 * Proves the redirection with real traffic: resolves the configuration as an apply would, then lets an
 * ordinary UID connect to a documentation address (never local) inside the namespace, and checks that it
 * arrived on the proxy's outbound port (and DNS on Consul DNS). Returns 0 redirected, 5 not, 75 when the
 * probe could not finish in time to tell.
 */
export async function verify(options: VerifyOptions, context: CommandContext): Promise<number> {
  // Entering a namespace and switching users needs root; verify has no --dry-run to offer instead.
  requireNetAdmin('verifying the redirection', false);
  const beforeAgent = context.elapsedMs();
  const config = await resolveConfig(options.rules, options.agent, context);
  // The 3 s count from this run's start, the agent's answer aside (-timeout and -wait bound that).
  const agentMs = options.agent === undefined ? 0 : context.elapsedMs() - beforeAgent;
  const spent = context.elapsedMs() - agentMs;
  const netns = options.host.netns;
  const planned = planProbe(config, readPasswd(), { budgetMs: HARD_LIMIT_MS - spent });
  let result: VerifyResult;
  // The probe that ran out of time before it could tell anything (a busy machine) proves nothing either way.
  let inconclusive = false;
  if ('unusable' in planned) {
    result = {
      redirected: false,
      netns: netns ?? null,
      uid: null,
      address: null,
      checks: {
        outbound: { status: 'failed', detail: planned.unusable },
        dns: { status: 'skipped', detail: planned.unusable },
      },
    };
  } else {
    context.log.debug(`probing as uid ${planned.plan.uid}: ${JSON.stringify(planned.plan)}`);
    const outcome = await context.probe(netns, planned.plan);
    result = 'report' in outcome ? judge(planned, outcome.report, netns) : probeFailed(planned, netns, outcome.incomplete);
    inconclusive = !('report' in outcome);
  }
  if (options.json) context.output.stdout(`${JSON.stringify(result, null, 2)}\n`);
  else if (result.redirected) context.output.stdout(`${renderResult(result)}\n`);
  if (inconclusive) {
    context.log.error(`${renderResult(result)}: the machine may be too busy to tell; try again`);
    return ExitCode.tempFail;
  }
  if (!result.redirected) context.log.error(renderResult(result));
  return result.redirected ? ExitCode.ok : ExitCode.notRedirected;
}
