import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import { accessSync, constants, readdirSync, unlinkSync, writeFileSync } from 'node:fs';
import { delimiter, dirname, join } from 'node:path';
import { SystemCommandError, MissingProgramError, TemporaryError } from '../errors.ts';
import { RECORD_DIR } from './record.ts';
import { makeDirAndParent } from './runtimeDir.ts';

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

/** Where programs are looked for without a PATH (an emptied environment), and where a hint looks. */
const SYSTEM_DIRS = ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin'];

/**
 * Absolute path of an executable on PATH, or undefined. PATH decides, as it does for Consul and any shell:
 * an operator or a test can put a program first, or leave one out. Without a PATH, the system directories.
 */
export function findProgram(name: string, pathEnv = process.env['PATH'] ?? ''): string | undefined {
  const onPath = pathEnv.split(delimiter).filter((dir) => dir.startsWith('/'));
  for (const dir of onPath.length > 0 ? onPath : SYSTEM_DIRS) {
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

/** A program looked for and not found (`programs`: its files), and what to install. */
export const notFound = (program: string, hint: string, programs = [program]) =>
  new MissingProgramError(`${program} was not found on PATH${outsidePath(programs)}: ${hint}`);

/**
 * " (/usr/sbin/nft is installed, but PATH lacks /usr/sbin)" when one of `programs` is in a system directory
 * PATH leaves out (cron's PATH, /usr/bin:/bin, does), else nothing.
 */
export function outsidePath(programs: readonly string[]): string {
  for (const program of programs) {
    const file = findProgram(program, SYSTEM_DIRS.join(delimiter));
    if (file !== undefined && findProgram(program) === undefined) return ` (${file} is installed, but PATH lacks ${dirname(file)})`;
  }
  return '';
}

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
 * Runs programs, each under a time limit; with `netns`, inside that network namespace. They run as the steps
 * of one shell (ShellSession), however many an apply needs. Node's spawn rather than execa: this runs a handful
 * of short-lived commands, and execa's start-up and per-call cost measured ~20 ms of an apply that should be
 * close to the cost of the commands alone.
 */
export function createRunner(options: { netns?: string | undefined; inputDir?: string } = {}): CommandRunner {
  const command = namespaceEntry(options.netns);
  const session = new ShellSession(command('/bin/sh', ['-s']), options.inputDir ?? INPUT_DIR);
  return {
    async run(program, args, runOptions = {}) {
      const name = runOptions.name ?? program;
      const timeout = runOptions.timeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS;
      // By path, never by name: a name could be one of the shell's builtins (echo, kill, exit, ...). Checked
      // here, as spawn did: each shell words its failure to run a file otherwise, and with a status (126, 127)
      // a program could exit with too.
      const file = program.includes('/') ? program : findProgram(program);
      if (file === undefined) throw new SystemCommandError(`could not run ${program}: not found`);
      // findProgram checked a file it found already.
      if (file === program) {
        try {
          accessSync(file, constants.X_OK);
        } catch (error) {
          const code = (error as NodeJS.ErrnoException).code;
          throw new SystemCommandError(`could not run ${file}: ${code === 'ENOENT' ? 'not found' : code === 'EACCES' ? 'permission denied' : code}`);
        }
      }
      const ended = await session.run(file, args, runOptions, timeout);
      const { stdout, stderr } = ended;
      if (ended.failure === 'timeout') throw new TemporaryError(`${name} did not finish within ${timeout / 1000}s and was killed`);
      if (ended.failure === 'too much output') throw new SystemCommandError(`${name} printed more than ${MAX_OUTPUT_CHARS} characters and was killed`);
      if (ended.spawnError) {
        const reason = ended.spawnError.code === 'ENOENT' ? 'not found' : ended.spawnError.message;
        throw new SystemCommandError(`could not run ${session.file}: ${reason}`);
      }
      if (ended.failure === 'shell ended') throw new SystemCommandError(`${name} did not finish: the shell running it ended (exit ${ended.exitCode})`);
      if (ended.exitCode === null) throw new SystemCommandError(`${name} was killed by ${ended.signal}`);
      // The shell reports a program killed by signal N as status 128 + N; none of the programs run here exits so.
      const signal = ended.exitCode > 128 ? signalName(ended.exitCode - 128) : undefined;
      if (signal !== undefined) throw new SystemCommandError(`${name} was killed by ${signal}`);
      return { exitCode: ended.exitCode, stdout, stderr };
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

/** A program and its arguments, for a shell to run. */
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
 * Steps run one after another by one shell, their outputs told apart by marker lines on both streams: each
 * program the runner runs is a step of its session's shell, and a survey's reads are one step that is itself
 * such a script (host/namespaceReads.ts). The steps run in turn, so each one's stderr lies between its own
 * marks too. What a step prints can hold anyone's text (a rule's comment may contain newlines), so each
 * script's marks carry a token that text written before the run cannot contain. Nothing here is secret:
 * Math.random will do (node:crypto would add ~8 ms to every start).
 */
export class StepScript {
  private readonly token = `${Math.random().toString(36).slice(2)}${Math.random().toString(36).slice(2)}`;

  private mark(index: number): string {
    return `#== redirect-traffic ${this.token} step ${index}`;
  }

  /** What ends step `index` on each stream; on stdout its status and a newline follow. */
  ends(index: number): { stdout: string; stderr: string } {
    const mark = this.mark(index);
    return { stdout: `\n${mark} status `, stderr: `\n${mark} end\n` };
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
    let at = { stdout: 0, stderr: 0 };
    return Array.from({ length: count }, (_, index) => {
      const found = this.find(index, stdout, stderr, at);
      if (found === undefined) return undefined;
      at = found.next;
      return found.result;
    });
  }

  /** Step `index`, if it has ended, searched for from `from` on: its result and where its marks end. */
  find(index: number, stdout: string, stderr: string, from = { stdout: 0, stderr: 0 }): { result: StepResult; next: { stdout: number; stderr: number } } | undefined {
    const start = `${this.mark(index)}\n`;
    const ends = this.ends(index);
    const startAt = stdout.indexOf(start, from.stdout);
    if (startAt < 0) return undefined;
    const endAt = stdout.indexOf(ends.stdout, startAt + start.length);
    const nextStart = stdout.indexOf(`${this.mark(index + 1)}\n`, startAt + start.length);
    const status = /^(\d+)\n/.exec(stdout.slice(endAt + ends.stdout.length, endAt + ends.stdout.length + 8));
    if (endAt < 0 || status === null || (nextStart >= 0 && nextStart < endAt)) return undefined;
    const errorsStart = stderr.indexOf(start, from.stderr);
    const errorsEnd = stderr.indexOf(ends.stderr, errorsStart + start.length);
    if (errorsStart < 0 || errorsEnd < 0) return undefined;
    return {
      result: {
        exitCode: Number(status[1]),
        stdout: stdout.slice(startAt + start.length, endAt),
        stderr: stderr.slice(errorsStart + start.length, errorsEnd),
      },
      next: { stdout: endAt + ends.stdout.length + status[0].length, stderr: errorsEnd + ends.stderr.length },
    };
  }

  /** Whether step `index` has begun on stdout. */
  began(index: number, stdout: string): boolean {
    return stdout.includes(`${this.mark(index)}\n`);
  }

  /** What a stream held before the first step's mark: a shell's own complaint, or what ran before the steps. */
  before(stream: string): string {
    const at = stream.indexOf(`${this.mark(0)}\n`);
    return at < 0 ? stream : stream.slice(0, at);
  }
}

/** SIGKILL for 9; undefined for a number that is no signal. */
const signalName = (number: number) =>
  Object.entries(process.getBuiltinModule('node:os').constants.signals).find(([, value]) => value === number)?.[0];

/** A minimal environment: children never see CONSUL_HTTP_TOKEN or anything else of ours. */
const childEnv = (): Record<string, string> => ({ PATH: process.env['PATH'] ?? SYSTEM_DIRS.join(delimiter), LC_ALL: 'C' });

/** How a child ended: its status or signal, what it printed, and whether a limit or the start failed it. */
interface Ended {
  stdout: string;
  stderr: string;
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  failure?: 'timeout' | 'too much output' | 'shell ended' | undefined;
  spawnError?: NodeJS.ErrnoException;
}

/** Whether the shell and its pipes keep this process's event loop going (they are sockets underneath). */
function keepsProcessAlive(shell: ChildProcessWithoutNullStreams, keeps: boolean) {
  for (const handle of [shell, shell.stdin, shell.stdout, shell.stderr] as { ref(): void; unref(): void }[]) {
    if (keeps) handle.ref();
    else handle.unref();
  }
}

/** What a stream brought: its chunks, joined only when asked, and its last characters, where a mark may begin. */
class StreamOutput {
  private chunks: string[];
  private tail: string;
  length: number;

  constructor(text = '') {
    this.chunks = text === '' ? [] : [text];
    this.tail = text.slice(-MARK_WINDOW);
    this.length = text.length;
  }

  /** Adds a chunk; true if `mark` is in it, or begins in what came before it. */
  add(chunk: string, mark: string): boolean {
    this.chunks.push(chunk);
    this.length += chunk.length;
    const window = this.tail + chunk;
    this.tail = window.slice(-MARK_WINDOW);
    return window.includes(mark);
  }

  text(): string {
    const joined = this.chunks.join('');
    this.chunks = joined === '' ? [] : [joined];
    return joined;
  }
}

/** Longer than any end mark. */
const MARK_WINDOW = 256;

/** Where steps' inputs are written: under the runtime directory (records, locks), root's alone. */
const INPUT_DIR = join(RECORD_DIR, 'input');

let inputsWritten = 0;

/** `input` in a new file of the input directory (0700, the file 0600); undefined if it cannot be written there. */
function writeInput(dir: string, input: string): string | undefined {
  const file = join(dir, `${process.pid}-${++inputsWritten}`);
  try {
    makeDirAndParent(dir);
    removeLeftInputs(dir);
    // A file left by a killed run of the same PID is overwritten: the directory is root's alone.
    writeFileSync(file, input, { mode: 0o600 });
    return file;
  } catch {
    removeInput(file);
    return undefined;
  }
}

/** Removes the inputs of runs that were killed before their steps ended (named by PID: one no longer running). */
function removeLeftInputs(dir: string) {
  for (const name of readdirSync(dir)) {
    const pid = Number(name.slice(0, name.indexOf('-')));
    if (!Number.isInteger(pid) || pid <= 0 || pid === process.pid) continue;
    try {
      process.kill(pid, 0);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ESRCH') removeInput(join(dir, name));
    }
  }
}

function removeInput(file: string) {
  try {
    unlinkSync(file);
  } catch {
    // never written, or gone
  }
}

/** How long a shell with nothing to run waits for the next program before it is ended. */
const SESSION_IDLE_MS = 1000;

interface Step {
  /** The step's line, and its input as a here-document after it where no input file could be written. */
  text: (marks: StepScript, index: number) => string;
  timeoutMs: number;
  resolve(ended: Ended): void;
}

interface Running {
  step: Step;
  timer: NodeJS.Timeout;
  /** Whether each stream's end mark has come (only then is the step looked for). */
  ended: { stdout: boolean; stderr: boolean };
  failure?: Ended['failure'];
}

/**
 * One shell (inside the namespace) running the programs asked of it one after another, StepScript marks
 * telling their outputs and statuses apart. Each process this one starts costs a fork of its heap (~10 ms
 * here) and nsenter's start; the shell pays that once and starts each program for the price of a fork of
 * dash. It starts with the first program, ends once idle for SESSION_IDLE_MS (it holds the namespace
 * open), and never keeps this process alive by itself. It is its own process group: a limit kills the
 * group, so no program it started can go on writing after we have given up on it, and a terminal's Ctrl-C
 * reaches this process alone, which finishes its writes or rolls back. What it costs: a step's time limit
 * runs from when the shell gets it, not while it waits its turn; and what a program leaves running in the
 * background writes into the steps after it (none of the programs run here does).
 */
class ShellSession {
  private shell: ChildProcessWithoutNullStreams | undefined;
  private marks = new StepScript();
  private index = 0;
  private output = { stdout: new StreamOutput(), stderr: new StreamOutput() };
  private running: Running | undefined;
  private readonly queue: Step[] = [];
  private idle: NodeJS.Timeout | undefined;
  private ending = false;

  private readonly entry: [string, readonly string[]];
  private readonly inputDir: string;

  constructor(entry: [string, readonly string[]], inputDir: string) {
    this.entry = entry;
    this.inputDir = inputDir;
  }

  get file(): string {
    return this.entry[0];
  }

  /**
   * Runs `program` as the next step. Its input, if any, is a file of its own in the input directory (root's
   * alone, on /run's tmpfs), removed once the step has ended: a shell reading its script from a pipe may read
   * it one byte at a time (bash, /bin/sh on RHEL: 10,000 rules took twice as long), so megabytes of input do
   * not go through the shell. Where the directory cannot be written (not root), it goes as a here-document
   * all the same (a final newline is then added if missing).
   */
  run(program: string, args: readonly string[], options: RunOptions, timeoutMs: number): Promise<Ended> {
    // The shell would drop them silently; spawn refused them.
    if ([program, ...args, ...Object.values(options.env ?? {}), options.input ?? ''].some((text) => text.includes('\0'))) {
      throw new TypeError(`a NUL character in what ${program} was to be given`);
    }
    const env = Object.entries(options.env ?? {}).map(([key, value]) => {
      if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(key)) throw new Error(`not an environment variable name: ${key}`);
      return `${key}=${shellWord(value)} `;
    });
    const command = `${env.join('')}${shellCommand({ program, args })}`;
    const input = options.input ?? '';
    const inputFile = input === '' ? undefined : writeInput(this.inputDir, input);
    let text: Step['text'];
    if (input === '') text = (marks, index) => `${marks.step(index, `${command} </dev/null`)}\n`;
    else if (inputFile !== undefined) text = (marks, index) => `${marks.step(index, `${command} <${shellWord(inputFile)}`)}\n`;
    else {
      const lines = input.endsWith('\n') ? input : `${input}\n`;
      let end = '';
      // A terminator the input does not hold as a line (with a random part, it never does).
      do end = `RT_INPUT_${Math.random().toString(36).slice(2)}`;
      while (`\n${lines}`.includes(`\n${end}\n`));
      text = (marks, index) => `${marks.step(index, `${command} <<'${end}'`)}\n${lines}${end}\n`;
    }
    return new Promise<Ended>((resolve) => {
      const ended = (result: Ended) => {
        if (inputFile !== undefined) removeInput(inputFile);
        resolve(result);
      };
      this.queue.push({ text, timeoutMs, resolve: ended });
      this.next();
    });
  }

  private next() {
    if (this.running !== undefined) return;
    const step = this.queue.shift();
    if (step === undefined) {
      this.rest();
      return;
    }
    clearTimeout(this.idle);
    let shell = this.shell;
    if (shell === undefined) {
      try {
        shell = this.start();
      } catch (error) {
        step.resolve({ stdout: '', stderr: '', exitCode: null, signal: null, spawnError: error as NodeJS.ErrnoException });
        this.next();
        return;
      }
    }
    keepsProcessAlive(shell, true);
    this.running = { step, timer: setTimeout(() => this.kill('timeout'), step.timeoutMs), ended: { stdout: false, stderr: false } };
    shell.stdin.write(step.text(this.marks, this.index));
  }

  private start(): ChildProcessWithoutNullStreams {
    // Loaded on first use: a dry run starts no process and should not pay for node:child_process.
    const { spawn } = process.getBuiltinModule('node:child_process');
    const [file, argv] = this.entry;
    const shell = spawn(file, argv, { detached: true, env: childEnv() });
    this.shell = shell;
    // A shell that could not be started emits 'error' and no 'exit'.
    const exited = new Promise<void>((resolve) => {
      shell.once('exit', () => resolve());
      shell.once('error', () => resolve());
    });
    const live = { shell, session: this, exited };
    LIVE_SHELLS.add(live);
    void exited.then(() => LIVE_SHELLS.delete(live));
    this.marks = new StepScript();
    this.index = 0;
    this.output = { stdout: new StreamOutput(), stderr: new StreamOutput() };
    for (const stream of ['stdout', 'stderr'] as const) {
      shell[stream].setEncoding('utf8');
      shell[stream].on('data', (chunk: string) => shell === this.shell && this.received(stream, chunk));
    }
    // A shell that is gone closes the pipe; its exit says what happened.
    shell.stdin.on('error', () => undefined);
    shell.once('error', (error: NodeJS.ErrnoException) => this.closed(shell, { exitCode: null, signal: null, spawnError: error }));
    shell.once('close', (exitCode, signal) => this.closed(shell, { exitCode, signal }));
    return shell;
  }

  private received(stream: 'stdout' | 'stderr', chunk: string) {
    const running = this.running;
    const output = this.output[stream];
    // Only a chunk that brings an end mark can end the step: the output is joined and searched once, not
    // at every chunk (that is quadratic in megabytes of output).
    const markCame = output.add(chunk, this.marks.ends(this.index)[stream]);
    if (running === undefined || running.failure !== undefined) return;
    if (output.length > MAX_OUTPUT_CHARS) return this.kill('too much output');
    running.ended[stream] ||= markCame;
    if (!running.ended.stdout || !running.ended.stderr) return;
    const stdout = this.output.stdout.text();
    const stderr = this.output.stderr.text();
    const found = this.marks.find(this.index, stdout, stderr);
    if (found === undefined) return;
    clearTimeout(running.timer);
    this.output = { stdout: new StreamOutput(stdout.slice(found.next.stdout)), stderr: new StreamOutput(stderr.slice(found.next.stderr)) };
    this.index += 1;
    this.running = undefined;
    running.step.resolve({ ...found.result, signal: null });
    this.next();
  }

  /** Kills the shell and whatever it runs; the step ends when they have (or 2 s later, see below). */
  private kill(why: NonNullable<Ended['failure']>) {
    const shell = this.shell;
    if (this.running === undefined || shell === undefined) return;
    this.running.failure = why;
    try {
      if (shell.pid !== undefined) process.kill(-shell.pid, 'SIGKILL');
    } catch {
      // exited meanwhile
    }
    // A program that left the group could hold the pipes open for ever: stop waiting for them.
    setTimeout(() => {
      shell.stdout.destroy();
      shell.stderr.destroy();
      this.closed(shell, { exitCode: null, signal: 'SIGKILL' });
    }, 2000).unref();
  }

  /** The shell is gone: the step it was running ends with it, and the next step gets a new shell. */
  private closed(shell: ChildProcessWithoutNullStreams, how: Pick<Ended, 'exitCode' | 'signal' | 'spawnError'>) {
    if (shell !== this.shell) return;
    this.shell = undefined;
    const running = this.running;
    this.running = undefined;
    if (running !== undefined) {
      clearTimeout(running.timer);
      const stdout = this.output.stdout.text();
      const stderr = this.output.stderr.text();
      // A shell that never began the step (nsenter could not enter the namespace) reports as the program would.
      const began = this.marks.began(this.index, stdout);
      const failure = running.failure ?? (began && how.exitCode !== null ? 'shell ended' : undefined);
      running.step.resolve({ stdout, stderr, ...how, failure });
    }
    this.next();
  }

  /** Nothing to run: the shell may not keep this process alive, and ends if nothing comes soon. */
  private rest() {
    const shell = this.shell;
    if (shell === undefined) return;
    clearTimeout(this.idle);
    const end = () => {
      if (shell !== this.shell || this.running !== undefined) return;
      this.shell = undefined;
      shell.stdin.end();
    };
    if (this.ending) return end();
    keepsProcessAlive(shell, false);
    this.idle = setTimeout(end, SESSION_IDLE_MS).unref();
  }

  /**
   * Ends the shell once what it was given has run (its exit is awaited through LIVE_SHELLS); a later run
   * gets a shell of its own, ended as soon as it is done.
   */
  end() {
    this.ending = true;
    if (this.running === undefined) this.rest();
  }
}

/** Every shell not yet exited (reaped: its pipes may close a little later), with its session. */
const LIVE_SHELLS = new Set<{ shell: ChildProcessWithoutNullStreams; session: ShellSession; exited: Promise<void> }>();

/**
 * Ends every runner's shell, once each has run what it was given, and resolves when they have all exited.
 * Called before this process exits: a shell left to end by itself once this process is gone would outlive a
 * systemd service's main process, and systemd (on cgroup v1 without release notifications, as in a container)
 * then waits out TimeoutStopSec for the cgroup to empty.
 */
export async function endShells(): Promise<void> {
  // Until none is left: a run still under way may start one more step, and its session a shell for it
  // (which, its session ending, it ends as soon as that step is done).
  while (LIVE_SHELLS.size > 0) {
    const shells = [...LIVE_SHELLS];
    for (const { shell, session } of shells) {
      // Awaited, so they must keep the event loop going until they have exited.
      keepsProcessAlive(shell, true);
      session.end();
    }
    await Promise.all(shells.map((live) => live.exited));
  }
}
