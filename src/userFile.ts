import { closeSync, constants, fstatSync, openSync, readSync, type Stats } from 'node:fs';
import { UsageError, ConfigError } from './errors.ts';

const KiB = 1024;
const MiB = 1024 * KiB;

/** Size limits, far above any real file of each kind, so a wrong path fails at once instead of filling memory. */
export const FILE_LIMITS = { config: 16 * MiB, token: 64 * KiB, tls: 1 * MiB } as const;

const sizeText = (bytes: number) => (bytes >= MiB ? `${bytes / MiB} MiB` : `${bytes / KiB} KiB`);

/** Why a path could not be opened or looked at, worded to follow the path: "does not exist", "cannot be opened (EACCES)". */
export function openFailureText(error: unknown): string {
  const code = (error as NodeJS.ErrnoException).code ?? 'unreadable';
  return code === 'ENOENT' ? 'does not exist' : `cannot be opened (${code})`;
}

function kindOf(stats: Stats): string {
  if (stats.isDirectory()) return 'a directory';
  if (stats.isFIFO()) return 'a FIFO';
  if (stats.isCharacterDevice()) return 'a character device';
  if (stats.isBlockDevice()) return 'a block device';
  if (stats.isSocket()) return 'a socket';
  return 'not a regular file';
}

/** The whole file, or undefined once it holds more than `limit` bytes (it may grow after fstat). */
function readAtMost(fd: number, expectedSize: number, limit: number): Buffer | undefined {
  let buffer = Buffer.allocUnsafe(Math.min(expectedSize, limit) + 1);
  let length = 0;
  for (;;) {
    const read = readSync(fd, buffer, length, buffer.length - length, null);
    if (read === 0) return buffer.subarray(0, length);
    length += read;
    if (length > limit) return undefined;
    if (length === buffer.length) buffer = Buffer.concat([buffer], Math.min(buffer.length * 2, limit + 1));
  }
}

/**
 * Reads a text file a user named through `setting` (a flag, variable or config key): a regular file (symbolic
 * links followed) of at most `limit` bytes. Anything else fails at once with one line naming the setting and
 * the path: a FIFO would block forever, /dev/zero would never end.
 */
export function readUserFile(
  path: string,
  setting: string,
  limit: number,
  errorKind: typeof UsageError | typeof ConfigError = UsageError,
): string {
  const failure = (problem: string) => new errorKind(`${setting} ${JSON.stringify(path)} ${problem}`);
  let fd: number;
  try {
    // Non-blocking, so opening a FIFO returns at once (and fstat refuses it); never a controlling terminal.
    fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY);
  } catch (error) {
    throw failure(openFailureText(error));
  }
  try {
    const stats = fstatSync(fd);
    if (!stats.isFile()) throw failure(`is ${kindOf(stats)}, not a regular file`);
    const tooLarge = () => failure(`is larger than the ${sizeText(limit)} limit`);
    if (stats.size > limit) throw tooLarge();
    let content: Buffer | undefined;
    try {
      content = readAtMost(fd, stats.size, limit);
    } catch (error) {
      throw failure(`cannot be read (${(error as NodeJS.ErrnoException).code ?? 'unreadable'})`);
    }
    if (content === undefined) throw tooLarge();
    return content.toString('utf8');
  } finally {
    closeSync(fd);
  }
}
