import type { CommandRunner, LineProcess } from './runner.ts';

// Hearing the kernel's changes to the rules as they are committed: `nft monitor` prints one line per
// change to any nf_tables table (iptables-nft's included), e.g. `delete rule ip nat OUTPUT handle 3` or
// `delete table inet consul_tproxy`, and `# new generation N by process PID (nft)` after each transaction.
// iptables-legacy's changes produce no events at all: those tables can only be polled.

/** A running source of change events; the watch polls anyway, so a feed that ends is only a slower watch. */
export interface ChangeFeed {
  stop(): void;
  /** Resolves, with why, when the feed ends without being stopped. */
  ended: Promise<string>;
}

/**
 * The table a monitor line is about: `ip nat` in `add rule ip nat OUTPUT ...`, `inet consul_tproxy` in
 * `delete table inet consul_tproxy`. Undefined for comments, blank lines and lines of another shape.
 */
export function monitoredTable(line: string): string | undefined {
  const match = /^(?:add|create|delete|destroy|flush|insert|replace|update|reset) [a-z]+ (ip6?|inet|arp|bridge|netdev) (\S+)/.exec(line);
  return match ? `${match[1]} ${match[2]}` : undefined;
}

/** Whether a line may concern `tables`: any change line of a shape we do not know counts, to be safe. */
export function concerns(line: string, tables: readonly string[]): boolean {
  const text = line.trim();
  if (text === '' || text.startsWith('#')) return false;
  const table = monitoredTable(text);
  return table === undefined || tables.includes(table);
}

/**
 * Runs `nft monitor` (inside the runner's namespace) and calls `onChange` for each change to one of
 * `tables` ("ip nat", "inet consul_tproxy"). Changes elsewhere (Docker's filter rules, an operator's own
 * table) are not reported: they cannot make ours differ.
 */
export async function nftMonitor(
  runner: CommandRunner,
  nft: string,
  tables: readonly string[],
  onChange: (line: string) => void,
): Promise<ChangeFeed> {
  let stopped = false;
  const child: LineProcess = await runner.spawnLines(nft, ['monitor'], (line) => {
    if (!stopped && concerns(line, tables)) onChange(line);
  });
  const ended = child.exited.then(({ exitCode, signal, stderr, error }) => {
    const detail = stderr.trim().split('\n').at(-1) ?? '';
    if (error !== undefined) return `could not start nft monitor: ${error}`;
    return `nft monitor ended (${signal ? `killed by ${signal}` : `exit ${exitCode}`})${detail ? `: ${detail}` : ''}`;
  });
  return {
    stop() {
      stopped = true;
      child.stop();
    },
    // Never resolves once stopped: the end was asked for.
    ended: ended.then((reason) => (stopped ? new Promise<string>(() => undefined) : reason)),
  };
}
