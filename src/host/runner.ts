import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';
import { CliError, ExitCode } from '../errors.ts';

/** The one way this tool runs other programs; tests substitute fakes. */
export interface CommandRunner {
  run(program: string, args: readonly string[], options?: { input?: string; timeoutMs?: number }): Promise<CommandResult>;
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
      // not here; try the next directory
    }
  }
  return undefined;
}

export class MissingProgramError extends CliError {
  constructor(program: string, hint: string) {
    super(`${program} was not found on PATH or in /usr/sbin, /sbin: ${hint}`, ExitCode.missingProgram);
  }
}

/** Runs programs directly (no shell), each under a time limit; with `netns`, inside that network namespace. */
export function createRunner(options: { netns?: string | undefined; timeoutMs?: number } = {}): CommandRunner {
  const nsenter = options.netns === undefined ? undefined : findProgram('nsenter');
  if (options.netns !== undefined && nsenter === undefined) {
    throw new MissingProgramError('nsenter', "it is needed for -netns; install the 'util-linux' package");
  }
  return {
    async run(program, args, runOptions = {}) {
      const [file, argv] =
        nsenter === undefined ? [program, args] : [nsenter, [`--net=${options.netns}`, '--', program, ...args]];
      const timeout = runOptions.timeoutMs ?? options.timeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS;
      const { execa } = await import('./exec.ts');
      const result = await execa(file, argv, {
        input: runOptions.input ?? '',
        timeout,
        killSignal: 'SIGKILL',
        reject: false,
        stripFinalNewline: false,
        // A minimal environment: children never see CONSUL_HTTP_TOKEN or anything else of ours.
        extendEnv: false,
        env: { PATH: process.env['PATH'] ?? SYSTEM_DIRS.join(delimiter), LC_ALL: 'C' },
      });
      if (result.timedOut) {
        throw new CliError(`${program} did not finish within ${timeout / 1000}s and was killed`, ExitCode.tempFail);
      }
      if (result.signal !== undefined) {
        throw new CliError(`${program} was killed by ${result.signal}`, ExitCode.systemCommand);
      }
      if (result.exitCode === undefined) {
        const reason = (result as { code?: string }).code === 'ENOENT' ? 'not found' : result.shortMessage;
        throw new CliError(`could not run ${file}: ${reason}`, ExitCode.systemCommand);
      }
      return { exitCode: result.exitCode, stdout: String(result.stdout), stderr: String(result.stderr) };
    },
  };
}
