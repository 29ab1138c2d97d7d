import type { Logger } from '../log.ts';
import type { CommandRunner } from './runner.ts';

// How a long-running command (watch) meets its service manager: told to stop by SIGTERM or SIGINT, and
// telling systemd when it is ready (Type=notify).

export interface StopRequest {
  /** Resolves with the signal that asked this process to stop. */
  stopped: Promise<NodeJS.Signals>;
  /** Removes the handlers: the default action (exit) applies again. */
  dispose(): void;
}

/**
 * Listens for SIGTERM and SIGINT until disposed. While it listens, neither signal ends the process by
 * itself: the command finishes what it is doing (a repair under way) and returns.
 */
export function untilSignalled(): StopRequest {
  let resolveStop: (signal: NodeJS.Signals) => void = () => undefined;
  const stopped = new Promise<NodeJS.Signals>((resolve) => (resolveStop = resolve));
  const onSignal = (signal: NodeJS.Signals) => resolveStop(signal);
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  return {
    stopped,
    dispose() {
      process.off('SIGTERM', onSignal);
      process.off('SIGINT', onSignal);
    },
  };
}

/**
 * Tells systemd that start-up is complete, when it asked to be told (NOTIFY_SOCKET, Type=notify), by running
 * `systemd-notify --ready`. `--pid` names this process as the service's main one (the message comes from
 * systemd-notify's PID, so the unit needs NotifyAccess=all). systemd-notify waits until systemd has read the
 * message (it has since 246; --no-block would not), so the message is never lost with its sender gone.
 * A failure is logged, not fatal: the rules are in place either way, and systemd's start timeout says the rest.
 */
export async function notifySystemdReady(runner: CommandRunner, env: NodeJS.ProcessEnv, log: Logger): Promise<boolean> {
  const socket = env['NOTIFY_SOCKET'];
  if (!socket) return false;
  try {
    const result = await runner.run('systemd-notify', ['--ready', `--pid=${process.pid}`], { env: { NOTIFY_SOCKET: socket }, timeoutMs: 10_000 });
    if (result.exitCode === 0) return true;
    log.warn(`systemd-notify --ready failed (exit ${result.exitCode}): ${result.stderr.trim() || 'no output'}`);
  } catch (error) {
    log.warn(`could not tell systemd the rules are in place: ${(error as Error).message} (is the 'systemd' package installed?)`);
  }
  return false;
}
