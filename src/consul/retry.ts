import pRetry from 'p-retry';
import { AgentUnavailableError, CliError } from '../errors.ts';

/** A failure time may fix (agent still starting, proxy not registered yet): -wait retries these, and only these. */
export class TransientAgentError extends CliError {
  /** What a retry waits for, for the progress line: `the Consul agent at ... (connection refused)`. */
  readonly waitingFor: string;
  constructor(message: string, waitingFor: string) {
    super(message, 'unavailable');
    this.waitingFor = waitingFor;
  }
}

// Short steps and a hard stop: under systemd the whole -wait has to fit in the unit's TimeoutStartSec.
const BACKOFF = { minTimeout: 250, maxTimeout: 2_000, factor: 2 };

export function formatDuration(ms: number): string {
  return ms < 1000 ? `${Math.round(ms)}ms` : `${Math.round(ms / 100) / 10}s`;
}

/**
 * Runs `attempt` once, or with a wait, again and again with backoff while it fails transiently and the
 * wait lasts. The last attempt may start just before the deadline, so the whole takes at most wait + one attempt.
 */
export async function retryWhileTransient<T>(
  attempt: () => Promise<T>,
  waitMs: number,
  onWait: (message: string) => void,
): Promise<T> {
  if (waitMs <= 0) return attempt();
  const start = performance.now();
  try {
    return await pRetry(attempt, {
      ...BACKOFF,
      retries: Number.POSITIVE_INFINITY,
      maxRetryTime: waitMs,
      shouldRetry: ({ error }) => error instanceof TransientAgentError,
      onFailedAttempt: ({ error }) => {
        const left = waitMs - (performance.now() - start);
        if (error instanceof TransientAgentError && left > 0) {
          onWait(`waiting for ${error.waitingFor}; retrying for up to ${formatDuration(left)}`);
        }
      },
    });
  } catch (error) {
    if (!(error instanceof TransientAgentError)) throw error;
    throw new AgentUnavailableError(`after waiting ${formatDuration(waitMs)}, ${error.message}`);
  }
}
