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
  /** What to call the program in messages, when its file is not what the operator knows it by (a shell). */
  name?: string;
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

// iptables-save of a large table can be megabytes; beyond this, something is wrong.
const MAX_OUTPUT_CHARS = 256 * 1024 * 1024;

/** How to run a program inside `netns` (through nsenter), or as it is without one: [file, arguments]. */
export function namespaceEntry(netns: string | undefined): (program: string, args: readonly string[]) => [string, readonly string[]] {
  if (netns === undefined) return (program, args) => [program, args];
  const nsenter = findProgram('nsenter');
  if (nsenter === undefined) throw notFound('nsenter', "it is needed for -netns; install the 'util-linux' package");
  return (program, args) => [nsenter, [`--net=${netns}`, '--', program, ...args]];
}

/**
 * Runs programs directly (no shell), each under a time limit; with `netns`, inside that network namespace.
 * Node's spawn rather than execa: this runs a handful of short-lived commands, and execa's start-up and
 * per-call cost measured ~20 ms of an apply that should be close to the cost of the commands alone.
 */
export function createRunner(options: { netns?: string | undefined } = {}): CommandRunner {
  // nsenter execs the program (no --fork): the child's PID is the program's, and stopping it stops the program.
  const command = namespaceEntry(options.netns);
  return {
    async run(program, args, runOptions = {}) {
      const [file, argv] = command(program, args);
      const name = runOptions.name ?? program;
      const timeout = runOptions.timeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS;
      // Loaded on first use: a dry run starts no process and should not pay for node:child_process.
      const { spawn } = await import('node:child_process');
      const ended = await new Promise<Ended>((resolve) => {
        // Its own process group: the limits below kill the whole group, so a program a shell started
        // (runChained) cannot go on writing after we have given up on it. It also keeps a terminal's Ctrl-C
        // from the children: SIGINT reaches this process alone, which finishes its writes or rolls back.
        const child = spawn(file, argv, { detached: true, env: { ...childEnv(), ...runOptions.env } });
        const output = { stdout: '', stderr: '' };
        let failure: Ended['failure'];
        const killGroup = (why: NonNullable<Ended['failure']>) => {
          if (failure !== undefined) return;
          failure = why;
          try {
            if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
          } catch {
            // exited meanwhile
          }
          // A program that left the group could hold the pipes open for ever: stop waiting for them.
          setTimeout(() => {
            child.stdout.destroy();
            child.stderr.destroy();
            resolve({ ...output, exitCode: null, signal: 'SIGKILL', failure });
          }, 2000).unref();
        };
        const timer = setTimeout(() => killGroup('timeout'), timeout);
        for (const stream of ['stdout', 'stderr'] as const) {
          child[stream].setEncoding('utf8');
          child[stream].on('data', (chunk: string) => {
            output[stream] += chunk;
            if (output[stream].length > MAX_OUTPUT_CHARS) killGroup('too much output');
          });
        }
        child.once('error', (error: NodeJS.ErrnoException) => {
          clearTimeout(timer);
          resolve({ ...output, exitCode: null, signal: null, failure, spawnError: error });
        });
        child.once('close', (exitCode, signal) => {
          clearTimeout(timer);
          resolve({ ...output, exitCode, signal, failure });
        });
        // A child that exits without reading its input closes the pipe; its exit status tells what happened.
        child.stdin.on('error', () => undefined);
        child.stdin.end(runOptions.input ?? '');
      });
      const { stdout, stderr } = ended;
      if (ended.failure === 'timeout') throw new TemporaryError(`${name} did not finish within ${timeout / 1000}s and was killed`);
      if (ended.failure === 'too much output') throw new SystemCommandError(`${name} printed more than ${MAX_OUTPUT_CHARS} characters and was killed`);
      if (ended.spawnError) {
        const reason = ended.spawnError.code === 'ENOENT' ? 'not found' : ended.spawnError.message;
        throw new SystemCommandError(`could not run ${file}: ${reason}`);
      }
      if (ended.exitCode !== null) return { exitCode: ended.exitCode, stdout, stderr };
      throw new SystemCommandError(`${name} was killed by ${ended.signal}`);
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
      // Ended with this process, however it ends: a monitor left behind would watch a namespace for nobody.
      const stopOnExit = () => child.kill('SIGTERM');
      process.once('exit', stopOnExit);
      const exited = new Promise<Awaited<LineProcess['exited']>>((resolve) => {
        child.once('error', (error) => resolve({ exitCode: null, signal: null, stderr, error: error.message }));
        child.once('close', (exitCode, signal) => resolve({ exitCode, signal, stderr }));
      }).finally(() => process.off('exit', stopOnExit));
      return {
        stop: () => {
          if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
        },
        exited,
      };
    },
  };
}

/** A program and its arguments, for a shell to run (runChained, host/namespaceReads.ts). */
export interface ShellStep {
  program: string;
  args: readonly string[];
}

const shellWord = (word: string) => `'${word.replaceAll("'", `'\\''`)}'`;

/** Shell text running `step`: every word quoted, never interpreted. */
export const shellCommand = (step: ShellStep) => [step.program, ...step.args].map(shellWord).join(' ');

/** What one step of a StepScript printed on each stream, and its exit status. */
export interface StepResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

/**
 * Steps run one after another by one shell, their outputs told apart by marker lines on both streams: one
 * process started from this one rather than one per program (each costs a fork of this process's heap). The
 * steps run in turn, so each one's stderr lies between its own marks too. What a step prints can hold anyone's
 * text (a rule's comment may contain newlines), so each script's marks carry a token that text written before
 * the run cannot contain. Nothing here is secret: Math.random will do (node:crypto would add ~8 ms to every
 * start).
 */
export class StepScript {
  private readonly token = `${Math.random().toString(36).slice(2)}${Math.random().toString(36).slice(2)}`;

  private mark(index: number): string {
    return `#== redirect-traffic ${this.token} step ${index}`;
  }

  /** Shell text running `command` (shell text) as step `index`: marks around its output and its status. */
  step(index: number, command: string): string {
    const mark = this.mark(index);
    return [
      `printf '%s\\n' '${mark}'; printf '%s\\n' '${mark}' >&2`,
      command,
      `printf '\\n%s %s\\n' '${mark} status' "$?"; printf '\\n%s\\n' '${mark} end' >&2`,
    ].join('; ');
  }

  /** Each step's streams and status, read in the order written; undefined for a step that did not end. */
  results(stdout: string, stderr: string, count: number): (StepResult | undefined)[] {
    let at = 0;
    let errorsAt = 0;
    return Array.from({ length: count }, (_, index) => {
      const start = `${this.mark(index)}\n`;
      const startAt = stdout.indexOf(start, at);
      if (startAt < 0) return undefined;
      const end = `\n${this.mark(index)} status `;
      const endAt = stdout.indexOf(end, startAt + start.length);
      const nextStart = stdout.indexOf(`${this.mark(index + 1)}\n`, startAt + start.length);
      const status = /^(\d+)\n/.exec(stdout.slice(endAt + end.length, endAt + end.length + 8));
      if (endAt < 0 || status === null || (nextStart >= 0 && nextStart < endAt)) return undefined;
      at = endAt + end.length;
      const errorsStart = stderr.indexOf(start, errorsAt);
      const errorsEnd = stderr.indexOf(`\n${this.mark(index)} end\n`, errorsStart + start.length);
      if (errorsStart < 0 || errorsEnd < 0) return undefined;
      errorsAt = errorsEnd;
      return {
        exitCode: Number(status[1]),
        stdout: stdout.slice(startAt + start.length, endAt),
        stderr: stderr.slice(errorsStart + start.length, errorsEnd),
      };
    });
  }

  /** What a stream held before the first step's mark: a shell's own complaint, or what ran before the steps. */
  before(stream: string): string {
    const at = stream.indexOf(`${this.mark(0)}\n`);
    return at < 0 ? stream : stream.slice(0, at);
  }
}

/**
 * Runs `first` with `input` on stdin and, once it has succeeded, each of `then` in turn, in one shell (see
 * StepScript). Resolves to `first`'s exit status and stderr (its stdout is discarded), and the stdout of each
 * later step that succeeded (undefined for one that failed). A timeout kills them all (the runner kills the
 * process group).
 */
export async function runChained(
  runner: CommandRunner,
  first: ShellStep,
  then: readonly ShellStep[],
  options: RunOptions = {},
): Promise<{ exitCode: number; stderr: string; outputs: (string | undefined)[] }> {
  const steps = new StepScript();
  const script = [
    `${shellCommand(first)} >/dev/null || exit $?`,
    ...then.map((step, index) => steps.step(index, shellCommand(step))),
    // The status is the first program's: a later step's failure shows as its missing output.
    'exit 0',
  ].join('\n');
  const result = await runner.run('/bin/sh', ['-c', script], { name: first.program, ...options });
  const outputs = steps.results(result.stdout, result.stderr, then.length).map((step) => (step?.exitCode === 0 ? step.stdout : undefined));
  return { exitCode: result.exitCode, stderr: steps.before(result.stderr), outputs };
}

/** A minimal environment: children never see CONSUL_HTTP_TOKEN or anything else of ours. */
const childEnv = (): Record<string, string> => ({ PATH: process.env['PATH'] ?? SYSTEM_DIRS.join(delimiter), LC_ALL: 'C' });

/** How a child ended: its status or signal, what it printed, and whether a limit or the start failed it. */
interface Ended {
  stdout: string;
  stderr: string;
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  failure?: 'timeout' | 'too much output' | undefined;
  spawnError?: NodeJS.ErrnoException;
}
