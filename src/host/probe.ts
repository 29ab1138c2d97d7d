import { CliError, ExitCode } from '../errors.ts';
import { type ProbePlan, type ProbeReport } from '../core/verification.ts';
import type { CommandRunner } from './runner.ts';
import { PROBE_SOURCE } from './probeScript.ts';

/** What a probe run came to: the observations, or why there are none (it ran out of time). */
export type ProbeOutcome = { report: ProbeReport } | { incomplete: string };

/**
 * Runs the probe (src/host/probeScript.ts) with this Node binary, through `runner`: with -netns the runner
 * enters the namespace first (nsenter --net), so listeners and client are both inside it. The probe starts
 * as root and its client drops to the plan's UID itself. Killed after HARD_LIMIT_MS whatever happens.
 */
export async function runProbe(runner: CommandRunner, plan: ProbePlan): Promise<ProbeOutcome> {
  let result;
  try {
    result = await runner.run(process.execPath, ['-e', PROBE_SOURCE, '--', 'probe', JSON.stringify(plan)], {
      timeoutMs: plan.killAfterMs,
    });
  } catch (error) {
    if (error instanceof CliError && error.exitCode === ExitCode.tempFail) {
      return { incomplete: `the probe did not finish within ${(plan.killAfterMs / 1000).toFixed(1)} s and was stopped` };
    }
    throw error;
  }
  const line = result.stdout.trim().split('\n').pop() ?? '';
  let parsed: (ProbeReport & { error?: string }) | undefined;
  try {
    parsed = JSON.parse(line) as ProbeReport & { error?: string };
  } catch {
    parsed = undefined;
  }
  if (parsed === undefined || typeof parsed !== 'object' || parsed === null) {
    const why = result.stderr.trim().split('\n').pop() || `exit status ${result.exitCode}`;
    throw new CliError(`the verify probe failed: ${why}`, ExitCode.systemCommand);
  }
  if (parsed.error !== undefined) {
    if (/did not finish/.test(parsed.error)) return { incomplete: parsed.error };
    const code = /EPERM|EACCES/.test(parsed.error) ? ExitCode.noPermission : ExitCode.systemCommand;
    throw new CliError(`the verify probe failed: ${parsed.error}`, code);
  }
  return { report: parsed };
}
