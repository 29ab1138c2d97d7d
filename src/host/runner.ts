import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';
import { SystemCommandError, MissingProgramError, TemporaryError } from '../errors.ts';

/** The one way this tool runs other programs; tests substitute fakes. */
export interface CommandRunner {
  run(program: string, args: readonly string[], options?: RunOptions): Promise<CommandResult>;
  /**
   * Starts a long-running program (`nft monitor`) and hands each line of its output to `onLine` as it
   * comes. It runs until `stop()` or until it exits by itself; `exited` says how it ended.
   */
  spawnLines(program: string, args: readonly string[], onLine: (line: string) => void): Promise<LineProcess>;
}

export interface RunOptions {
  input?: string;
  timeoutMs?: number;
  /** Added to the child's minimal environment (PATH and LC_ALL only), e.g. NOTIFY_SOCKET for systemd-notify. */
  env?: Record<string, string>;
}

export interface LineProcess {
  /** Ends the program (SIGTERM); `exited` then resolves. Calling it again does nothing. */
  stop(): void;
  /** How it ended: its exit status or signal, the last of its stderr, or why it could not start. */
  exited: Promise<{ exitCode: number | null; signal: NodeJS.Signals | null; stderr: string; error?: string }>;
}

export interface CommandResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

export const DEFAULT_COMMAND_TIMEOUT_MS = 30_000;

// systemd hands services a fixed PATH and sudo may strip sbin; iptables lives there.
const SYSTEM_DIRS = ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin'];

/** Absolute path of an executable on PATH or in the system directories, or undefined. */
export function findProgram(name: string, pathEnv = process.env['PATH'] ?? ''): string | undefined {
  const dirs = [...pathEnv.split(delimiter).filter((dir) => dir.startsWith('/')), ...SYSTEM_DIRS];
  for (const dir of dirs) {
    const candidate = join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not in this directory (or not executable by us)
    }
  }
  return undefined;
}

/** A program looked for and not found, and what to install. */
export const notFound = (program: string, hint: string) =>
  new MissingProgramError(`${program} was not found on PATH or in the system directories (/usr/sbin, /sbin, ...): ${hint}`);

// iptables-save of a large table can be megabytes; execFile's default buffer (1 MiB) would cut it off.
const MAX_OUTPUT_BYTES = 256 * 1024 * 1024;

/** How to run a program inside `netns` (through nsenter), or as it is without one: [file, arguments]. */
export function namespaceEntry(netns: string | undefined): (program: string, args: readonly string[]) => [string, readonly string[]] {
  if (netns === undefined) return (program, args) => [program, args];
  const nsenter = findProgram('nsenter');
  if (nsenter === undefined) throw notFound('nsenter', "it is needed for -netns; install the 'util-linux' package");
  return (program, args) => [nsenter, [`--net=${netns}`, '--', program, ...args]];
}

/**
 * Runs programs directly (no shell), each under a time limit; with `netns`, inside that network namespace.
 * Node's execFile rather than execa: this runs a handful of short-lived commands, and execa's start-up
 * and per-call cost measured ~20 ms of an apply that should be close to the cost of the commands alone.
 */
export function createRunner(options: { netns?: string | undefined } = {}): CommandRunner {
  // nsenter execs the program (no --fork): the child's PID is the program's, and stopping it stops the program.
  const command = namespaceEntry(options.netns);
  return {
    async run(program, args, runOptions = {}) {
      const [file, argv] = command(program, args);
      const timeout = runOptions.timeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS;
      // Loaded on first use: a dry run starts no process and should not pay for node:child_process.
      const { execFile } = await import('node:child_process');
      const outcome = await new Promise<{ error: ExecFileError | null; stdout: string; stderr: string }>((resolve) => {
        const child = execFile(
          file,
          argv,
          {
            timeout,
            killSignal: 'SIGKILL',
            maxBuffer: MAX_OUTPUT_BYTES,
            encoding: 'utf8',
            env: { ...childEnv(), ...runOptions.env },
          },
          (error, stdout, stderr) => resolve({ error: error as ExecFileError | null, stdout, stderr }),
        );
        // A child that exits without reading its input closes the pipe; its exit status tells what happened.
        child.stdin?.on('error', () => undefined);
        child.stdin?.end(runOptions.input ?? '');
      });
      const { error, stdout, stderr } = outcome;
      if (error === null) return { exitCode: 0, stdout, stderr };
      if (typeof error.code === 'number') return { exitCode: error.code, stdout, stderr };
      if (error.killed && error.signal === 'SIGKILL' && error.code === null) {
        throw new TemporaryError(`${program} did not finish within ${timeout / 1000}s and was killed`);
      }
      if (error.signal) throw new SystemCommandError(`${program} was killed by ${error.signal}`);
      const reason = error.code === 'ENOENT' ? 'not found' : error.message;
      throw new SystemCommandError(`could not run ${file}: ${reason}`);
    },

    async spawnLines(program, args, onLine) {
      const [file, argv] = command(program, args);
      const { spawn } = await import('node:child_process');
      const child = spawn(file, argv, { stdio: ['ignore', 'pipe', 'pipe'], env: childEnv() });
      let stderr = '';
      let pending = '';
      child.stdout.setEncoding('utf8');
      child.stdout.on('data', (chunk: string) => {
        const lines = (pending + chunk).split('\n');
        pending = lines.pop() ?? '';
        for (const line of lines) onLine(line);
      });
      child.stderr.setEncoding('utf8');
      // Only the end matters, for the message when it stops unexpectedly.
      child.stderr.on('data', (chunk: string) => (stderr = (stderr + chunk).slice(-2000)));
      const exited = new Promise<Awaited<LineProcess['exited']>>((resolve) => {
        child.once('error', (error) => resolve({ exitCode: null, signal: null, stderr, error: error.message }));
        child.once('close', (exitCode, signal) => resolve({ exitCode, signal, stderr }));
      });
      return {
        stop: () => {
          if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
        },
        exited,
      };
    },
  };
}

/** A program and its arguments, for `runChained`. */
export interface ChainStep {
  program: string;
  args: readonly string[];
}

const shellWord = (word: string) => `'${word.replaceAll("'", `'\\''`)}'`;
const STEP_MARK = '#== redirect-traffic step ';

/**
 * Runs `first` with `input` on stdin and, once it has succeeded, each of `then` in turn, all from one shell:
 * one process started from this one rather than one per program (each costs a fork of this process's heap).
 * Resolves to `first`'s exit status and stderr (its output is discarded), and the output of each later step
 * that succeeded (undefined for one that failed). Words are quoted, never interpreted.
 */
export async function runChained(
  runner: CommandRunner,
  first: ChainStep,
  then: readonly ChainStep[],
  options: RunOptions = {},
): Promise<{ exitCode: number; stderr: string; outputs: (string | undefined)[] }> {
  const command = (step: ChainStep) => [step.program, ...step.args].map(shellWord).join(' ');
  const script = [
    `${command(first)} >/dev/null || exit $?`,
    ...then.map((step, index) => `printf '%s\\n' '${STEP_MARK}${index}'; ${command(step)} && printf '\\n%s\\n' '${STEP_MARK}${index} ok'`),
    // The status is the first program's: a later step's failure shows as its missing output.
    'exit 0',
  ].join('\n');
  const result = await runner.run('/bin/sh', ['-c', script], options);
  const outputs = then.map((_, index) => {
    const start = result.stdout.indexOf(`${STEP_MARK}${index}\n`);
    const end = result.stdout.indexOf(`\n${STEP_MARK}${index} ok\n`);
    return start < 0 || end < start ? undefined : result.stdout.slice(start + `${STEP_MARK}${index}\n`.length, end);
  });
  return { exitCode: result.exitCode, stderr: result.stderr, outputs };
}

/** A minimal environment: children never see CONSUL_HTTP_TOKEN or anything else of ours. */
const childEnv = (): Record<string, string> => ({ PATH: process.env['PATH'] ?? SYSTEM_DIRS.join(delimiter), LC_ALL: 'C' });

/** What execFile hands its callback: `code` is the exit status, or an errno string when it never ran. */
type ExecFileError = Error & { code?: number | string | null; killed?: boolean; signal?: NodeJS.Signals | null };
