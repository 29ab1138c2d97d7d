import { mkdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { Server } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { CannotWriteError, TemporaryError } from '../errors.ts';
import { makeDirAndParent } from './runtimeDir.ts';

// One writer per network namespace at a time. The lock is a unix socket a run listens on, in a directory
// only root may write (/run/redirect-traffic/locks, 0700): no other user can take it or squat on it, as
// anyone could on a name in the abstract namespace. The kernel closes it the instant its holder dies,
// however it dies; the socket file then left behind refuses connections, and the next run removes it.

export const LOCK_DIR = '/run/redirect-traffic/locks';

/** The identity of a network namespace: the nsfs inode its path (or this process's) names. */
export function namespaceKey(netns: string | undefined): string {
  const stats = statSync(netns ?? '/proc/self/ns/net');
  return `${stats.dev}-${stats.ino}`;
}

export interface NamespaceLock {
  release(): void;
}

/** The socket a lock is held on. */
export const lockPath = (netns: string | undefined, purpose: LockPurpose) => join(LOCK_DIR, `${namespaceKey(netns)}.${purpose}`);

export type LockPurpose = 'write' | 'watch';

const MAX_ANSWER = 16;

/**
 * Who holds the lock: the holder answers with its PID. `undefined` when nobody answers: nobody holds it
 * (the socket file of a holder that died refuses at once), or the holder did not answer in time.
 */
async function holderPid(path: string): Promise<{ pid: number | undefined; refused: boolean }> {
  const { connect } = await import('node:net');
  return new Promise((resolve) => {
    const socket = connect({ path });
    let text = '';
    const done = (pid: number | undefined, refused = false) => {
      clearTimeout(deadline);
      socket.destroy();
      resolve({ pid, refused });
    };
    // A whole answer within 200 ms, and no more than a PID's worth of it.
    const deadline = setTimeout(() => done(undefined), 200);
    socket.on('data', (chunk) => {
      text += chunk.toString();
      if (text.length > MAX_ANSWER) done(undefined);
    });
    socket.on('end', () => done(/^\d+$/.test(text.trim()) ? Number(text.trim()) : undefined));
    // Refused: a socket file nobody listens on (its holder died). No file at all is no holder, and nothing to clean.
    socket.on('error', (error: NodeJS.ErrnoException) => done(undefined, error.code === 'ECONNREFUSED'));
  });
}

// node:net is loaded on first use: a dry run takes no lock and should not pay for it.
async function listenAt(path: string): Promise<Server | undefined> {
  const { createServer } = await import('node:net');
  return new Promise((resolve, reject) => {
    const server = createServer((socket) => {
      // An asker that leaves before the answer is no concern of the holder's.
      socket.on('error', () => undefined);
      socket.end(`${process.pid}\n`);
    });
    server.once('error', (error: NodeJS.ErrnoException) => (error.code === 'EADDRINUSE' ? resolve(undefined) : reject(error)));
    server.listen({ path, exclusive: true }, () => {
      // The lock must never keep this process alive by itself.
      server.unref();
      resolve(server);
    });
  });
}

/** How old a stale-socket cleaner's guard may grow before it counts as left by a cleaner that died. */
const CLEANER_GUARD_MAX_AGE_MS = 10_000;

/**
 * The lock taken, or undefined while someone has it. Binding the path is atomic, so of two runs only one
 * can. A socket file left by a holder that died (it refuses connections) must go before anyone can bind:
 * it is removed by one cleaner at a time (a directory beside it is the guard), who checks it still refuses
 * first; nobody can bind a new socket there while it exists, so a cleaner never removes a live one.
 */
async function tryLock(path: string): Promise<NamespaceLock | undefined> {
  let server = await listenAt(path);
  if (server === undefined && (await holderPid(path)).refused) {
    // Left by a holder that died: once it is gone, the path may be ours at once (a watch waits for nothing).
    await removeDeadSocket(path);
    server = await listenAt(path);
  }
  if (server === undefined) return undefined;
  // close() removes the socket file, then closes it (libuv unlinks first, so it never removes a newer one).
  const listening = server;
  return { release: () => listening.close() };
}

async function removeDeadSocket(path: string): Promise<void> {
  const guard = `${path}.cleaning`;
  try {
    mkdirSync(guard);
  } catch {
    // Another cleaner is at it, or died at it: its guard is removed once old enough, and the caller tries again.
    try {
      if (Date.now() - statSync(guard).mtimeMs > CLEANER_GUARD_MAX_AGE_MS) rmSync(guard, { recursive: true, force: true });
    } catch {
      // gone meanwhile
    }
    return;
  }
  try {
    if ((await holderPid(path)).refused) rmSync(path, { force: true });
  } catch (error) {
    // Not a socket (a directory someone made there): nobody can hold the lock until it is removed.
    throw new CannotWriteError(`cannot remove ${path}, where this namespace's lock goes: ${(error as NodeJS.ErrnoException).code ?? 'failed'}`);
  } finally {
    rmSync(guard, { recursive: true, force: true });
  }
}

/** A wait shorter than this goes unmentioned: runs queued behind each other's fast writes are normal. */
const QUIET_WAIT_MS = 750;

/**
 * Takes the lock named `purpose` for a namespace, waiting up to `waitMs` for another run to finish;
 * `onWait` is told who holds it, where, and the lock's path, once the wait has lasted QUIET_WAIT_MS. With
 * `waitMs` 0, a held lock fails at once.
 */
export async function lockNamespace(
  netns: string | undefined,
  purpose: LockPurpose,
  options: { waitMs: number; onWait?: (holder: string, where: string, lock: string) => void },
): Promise<NamespaceLock> {
  try {
    makeDirAndParent(LOCK_DIR);
  } catch (error) {
    throw new CannotWriteError(`cannot create the lock directory ${LOCK_DIR}: ${(error as NodeJS.ErrnoException).code ?? 'failed'}`);
  }
  const path = lockPath(netns, purpose);
  const where = netns === undefined ? 'this network namespace' : `netns ${netns}`;
  const start = Date.now();
  const deadline = start + options.waitMs;
  let holder: string | undefined;
  let told = false;
  for (;;) {
    const lock = await tryLock(path);
    if (lock) return lock;
    const waited = Date.now() - start;
    if (holder === undefined || (!told && waited >= QUIET_WAIT_MS)) {
      const { pid } = await holderPid(path);
      holder = pid === undefined ? 'another redirect-traffic run' : `redirect-traffic (pid ${pid})`;
    }
    if (!told && waited >= QUIET_WAIT_MS && options.waitMs > 0) {
      told = true;
      options.onWait?.(holder, where, path);
    }
    if (Date.now() >= deadline) {
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
