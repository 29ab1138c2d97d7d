import { Chalk, chalkStderr } from 'chalk';
import { fstatSync } from 'node:fs';

/** Where the CLI writes; tests substitute their own. */
export interface Output {
  stdout(text: string): void;
  stderr(text: string): void;
}

export const processOutput: Output = {
  stdout: (text) => process.stdout.write(text),
  stderr: (text) => process.stderr.write(text),
};

// chalk ignores NO_COLOR (chalk/chalk#547), so the policy lives here.
const colour = new Chalk({ level: 'NO_COLOR' in process.env ? 0 : chalkStderr.level });

// journald reads a leading "<N>" as the line's priority, but only when stderr really is the journal stream.
function stderrIsJournal(): boolean {
  const stream = process.env['JOURNAL_STREAM'];
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

export function createLogger(output: Output, options: { debug?: boolean; quiet?: boolean } = {}): Logger {
  const journal = stderrIsJournal();
  const line = (priority: number, label: string, paint: (s: string) => string, message: string) => {
    const prefix = journal ? `<${priority}>` : '';
    output.stderr(`${prefix}${PROGRAM}: ${paint(label)}${message}\n`);
  };
  return {
    error: (m) => line(3, 'error: ', colour.red.bold, m),
    warn: (m) => line(4, 'warning: ', colour.yellow, m),
    info: (m) => {
      if (!options.quiet) line(6, '', (s) => s, m);
    },
    debug: (m) => {
      if (options.debug) line(7, 'debug: ', colour.dim, m);
    },
  };
}
