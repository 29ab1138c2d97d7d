import { fstatSync, writeSync } from 'node:fs';

/** Where the CLI writes; tests substitute their own. */
export interface Output {
  stdout(text: string): void;
  stderr(text: string): void;
}

// Plain synchronous writes: process.stdout/stderr would load the whole stream machinery, a tenth of a dry run.
export const processOutput: Output = {
  stdout: (text) => writeAll(1, text),
  stderr: (text) => writeAll(2, text),
};

function writeAll(fd: number, text: string): void {
  let rest = Buffer.from(text);
  while (rest.length > 0) {
    try {
      rest = rest.subarray(writeSync(fd, rest));
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      // The reader went away (`| head`): nobody is left to read the rest.
      if (code === 'EPIPE') return;
      // A non-blocking pipe inherited from the caller is full: wait for its reader rather than drop output.
      if (code !== 'EAGAIN') throw error;
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1);
    }
  }
}

export interface Palette {
  error(text: string): string;
  warn(text: string): string;
  dim(text: string): string;
}

const plain: Palette = { error: (t) => t, warn: (t) => t, dim: (t) => t };

/**
 * Colours for stderr: only on a terminal (or with FORCE_COLOR), never with NO_COLOR, which chalk itself
 * ignores (chalk/chalk#547). chalk, which pulls in node:tty, is loaded only when stderr is a character
 * device (a terminal, or /dev/null), and then decides about the terminal itself.
 */
export async function stderrPalette(env: NodeJS.ProcessEnv): Promise<Palette> {
  if ('NO_COLOR' in env || !(env['FORCE_COLOR'] || stderrIsCharacterDevice())) return plain;
  const { chalkStderr } = await import('chalk');
  if (chalkStderr.level === 0) return plain;
  return { error: (t) => chalkStderr.red.bold(t), warn: (t) => chalkStderr.yellow(t), dim: (t) => chalkStderr.dim(t) };
}

function stderrIsCharacterDevice(): boolean {
  try {
    return fstatSync(2).isCharacterDevice();
  } catch {
    return false;
  }
}

// journald reads a leading "<N>" as the line's priority, but only when stderr really is the journal stream.
function stderrIsJournal(env: NodeJS.ProcessEnv): boolean {
  const stream = env['JOURNAL_STREAM'];
  if (!stream) return false;
  try {
    const { dev, ino } = fstatSync(2);
    return stream === `${dev}:${ino}`;
  } catch {
    return false;
  }
}

export interface Logger {
  error(message: string): void;
  warn(message: string): void;
  info(message: string): void;
  debug(message: string): void;
}

const PROGRAM = 'redirect-traffic';

export function createLogger(
  output: Output,
  options: { debug?: boolean; palette?: Palette; env?: NodeJS.ProcessEnv } = {},
): Logger {
  const journal = options.env !== undefined && stderrIsJournal(options.env);
  const palette = options.palette ?? plain;
  const line = (priority: number, label: string, message: string) => {
    output.stderr(`${journal ? `<${priority}>` : ''}${PROGRAM}: ${label}${message}\n`);
  };
  return {
    error: (m) => line(3, palette.error('error: '), m),
    warn: (m) => line(4, palette.warn('warning: '), m),
    info: (m) => line(6, '', m),
    debug: (m) => {
      if (options.debug) line(7, palette.dim('debug: '), m);
    },
  };
}
