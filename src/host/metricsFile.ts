import { closeSync, constants, fchmodSync, lstatSync, openSync, realpathSync, renameSync, statSync, unlinkSync, writeSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { CannotWriteError, UsageError } from '../errors.ts';

// -metrics-file: written for node_exporter's textfile collector, which may read it at any moment. The text
// goes to a temporary file in the same directory (same file system), which is then renamed over the path:
// a reader sees the old file or the new one, never half of one. The path is the user's: the file there is
// replaced, never written through, anything but a regular file there is refused, and so is a directory
// reached through a symbolic link.

/** What is at `path`, when it is something a metrics file must not replace. */
function refusal(path: string): string | undefined {
  try {
    const stats = lstatSync(path);
    if (stats.isFile()) return undefined;
    if (stats.isSymbolicLink()) return 'is a symbolic link; name the file itself';
    if (stats.isDirectory()) return 'is a directory, not a file';
    return 'is not a regular file';
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    return (error as Error).message;
  }
}

/**
 * What is wrong with the directory the file goes in: missing, or reached through a symbolic link (whoever
 * owns the link would choose where root writes).
 */
function directoryRefusal(directory: string): string | undefined {
  try {
    if (!statSync(directory).isDirectory()) return `${directory} is not a directory`;
    if (realpathSync(directory) !== directory) return `its directory ${directory} is reached through a symbolic link; name the real one (${realpathSync(directory)})`;
    return undefined;
  } catch {
    return `its directory ${directory} does not exist`;
  }
}

/** Refuses, before anything runs, a path whose directory is missing or linked, or that names something other than a regular file. */
export function checkMetricsPath(path: string): void {
  const problem = directoryRefusal(dirname(resolve(path))) ?? refusal(path);
  if (problem !== undefined) throw new UsageError(`invalid value ${JSON.stringify(path)} for -metrics-file: ${problem}`);
}

/** Replaces the file at `path` with `text`, atomically, mode 0644 (whatever the umask). */
export function writeMetricsFile(path: string, text: string): void {
  const target = resolve(path);
  const temporary = join(dirname(target), `.${basename(target)}.${process.pid}.tmp`);
  const failure = (reason: string) => new CannotWriteError(`cannot write the metrics file ${path}: ${reason}`);
  const problem = directoryRefusal(dirname(target)) ?? refusal(target);
  if (problem !== undefined) throw failure(problem);
  const flags = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
  let fd: number;
  try {
    fd = openSync(temporary, flags, 0o644);
  } catch (error) {
    // Left by a crashed run that had our PID: ours to remove, if it is a plain file.
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST' || refusal(temporary) !== undefined) {
      throw failure((error as Error).message);
    }
    try {
      unlinkSync(temporary);
      fd = openSync(temporary, flags, 0o644);
    } catch (retryError) {
      throw failure((retryError as Error).message);
    }
  }
  try {
    try {
      fchmodSync(fd, 0o644);
      let rest = Buffer.from(text);
      while (rest.length > 0) rest = rest.subarray(writeSync(fd, rest));
    } finally {
      closeSync(fd);
    }
    // rename replaces whatever name is there without following it; refusal() above turned away all but files.
    renameSync(temporary, target);
  } catch (error) {
    try {
      unlinkSync(temporary);
    } catch {
      // already gone
    }
    throw failure((error as Error).message);
  }
}
