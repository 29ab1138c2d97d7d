import { statSync } from 'node:fs';
import type { Server } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { TemporaryError } from '../errors.ts';

// One writer per network namespace at a time. The lock is an abstract unix socket bound under a name
// derived from the namespace: the kernel frees it the instant its holder dies, however it dies, so no
// stale lock file can outlive a crash, and no file system (a read-only one under a sandbox) is involved.

/** The identity of a network namespace: the nsfs inode its path (or this process's) names. */
export function namespaceKey(netns: string | undefined): string {
  const stats = statSync(netns ?? '/proc/self/ns/net');
  return `${stats.dev}-${stats.ino}`;
}

export interface NamespaceLock {
  release(): void;
}

/** Who holds the lock: the holder answers with its PID. Undefined when it does not answer in time. */
async function holderPid(name: string): Promise<number | undefined> {
  const { connect } = await import('node:net');
  return new Promise((resolve) => {
    const socket = connect({ path: name });
    let text = '';
    const done = (pid: number | undefined) => {
      socket.destroy();
      resolve(pid);
    };
    socket.setTimeout(200, () => done(undefined));
    socket.on('data', (chunk) => (text += chunk.toString()));
    socket.on('end', () => done(/^\d+$/.test(text.trim()) ? Number(text.trim()) : undefined));
    socket.on('error', () => done(undefined));
  });
}

// node:net is loaded on first use: a dry run takes no lock and should not pay for it.
async function tryListen(name: string): Promise<Server | undefined> {
  const { createServer } = await import('node:net');
  return new Promise((resolve, reject) => {
    const server = createServer((socket) => {
      // An asker that leaves before the answer is no concern of the holder's.
      socket.on('error', () => undefined);
      socket.end(`${process.pid}\n`);
    });
    server.once('error', (error: NodeJS.ErrnoException) => (error.code === 'EADDRINUSE' ? resolve(undefined) : reject(error)));
    server.listen({ path: name, exclusive: true }, () => {
      // The lock must never keep this process alive by itself.
      server.unref();
      resolve(server);
    });
  });
}

/** A wait shorter than this goes unmentioned: runs queued behind each other's fast writes are normal. */
const QUIET_WAIT_MS = 750;

/**
 * Takes the lock named `purpose` for a namespace, waiting up to `waitMs` for another run to finish;
 * `onWait` is told who holds it once the wait has lasted QUIET_WAIT_MS. With `waitMs` 0, a held lock
 * fails at once.
 */
export async function lockNamespace(
  netns: string | undefined,
  purpose: 'write' | 'watch',
  options: { waitMs: number; onWait?: (holder: string) => void },
): Promise<NamespaceLock> {
  const name = `\0redirect-traffic/${namespaceKey(netns)}/${purpose}`;
  const start = Date.now();
  const deadline = start + options.waitMs;
  let holder: string | undefined;
  let told = false;
  for (;;) {
    const server = await tryListen(name);
    if (server) return { release: () => server.close() };
    const waited = Date.now() - start;
    if (holder === undefined || (!told && waited >= QUIET_WAIT_MS)) {
      const pid = await holderPid(name);
      holder = pid === undefined ? 'another redirect-traffic run' : `redirect-traffic (pid ${pid})`;
    }
    if (!told && waited >= QUIET_WAIT_MS && options.waitMs > 0) {
      told = true;
      options.onWait?.(holder);
    }
    if (Date.now() >= deadline) {
      const where = netns === undefined ? 'this network namespace' : `netns ${netns}`;
      throw new TemporaryError(
        `${holder} is ${purpose === 'watch' ? 'already watching' : 'changing the rules of'} ${where}` +
          (options.waitMs > 0 ? `, and did not finish within ${Math.round(options.waitMs / 1000)}s` : ''),
      );
    }
    await sleep(50 + Math.random() * 50);
  }
}

/**
 * Runs `work` with SIGTERM and SIGINT held back: a transaction sequence is finished (and rolled back on
 * failure by `work` itself) rather than cut in the middle. The signal is reported once `work` is done.
 */
export async function withSignalsDeferred<T>(work: () => Promise<T>, onDeferred: (signal: NodeJS.Signals) => void): Promise<T> {
  const received: NodeJS.Signals[] = [];
  const hold = (signal: NodeJS.Signals) => {
    if (received.length === 0) onDeferred(signal);
    received.push(signal);
  };
  process.on('SIGTERM', hold);
  process.on('SIGINT', hold);
  try {
    return await work();
  } finally {
    process.off('SIGTERM', hold);
    process.off('SIGINT', hold);
  }
}
