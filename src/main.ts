import { CommanderError } from 'commander';
import { createProgram, normaliseArgv } from './cli.ts';
import { apply } from './commands/apply.ts';
import { cleanup } from './commands/cleanup.ts';
import type { CommandContext } from './commands/context.ts';
import { status } from './commands/status.ts';
import { verify } from './commands/verify.ts';
import { watch } from './commands/watch.ts';
import { CliError, ExitCode } from './errors.ts';
import { installedBackends } from './host/backends.ts';
import { lockNamespace, withSignalsDeferred } from './host/exclusive.ts';
import { readRecord, removeRecord, writeRecord } from './host/record.ts';
import { notifySystemdReady, untilSignalled } from './host/lifecycle.ts';
import { createRunner, endShells } from './host/runner.ts';
import { createLogger, processOutput, stderrPalette, type Output } from './log.ts';
import {
  applyOptions,
  cleanupOptions,
  statusOptions,
  verifyOptions,
  watchOptions,
  type CommandName,
  type RawOptions,
} from './options.ts';

/** Each command: validated options in, exit code out. */
const COMMANDS: Record<CommandName, (flags: RawOptions, context: CommandContext) => Promise<number>> = {
  apply: (flags, context) => apply(applyOptions(flags, context.env), context),
  cleanup: (flags, context) => cleanup(cleanupOptions(flags, context.env), context),
  status: (flags, context) => status(statusOptions(flags, context.env), context),
  watch: (flags, context) => watch(watchOptions(flags, context.env), context),
  verify: (flags, context) => verify(verifyOptions(flags, context.env), context),
};

declare const __VERSION__: string;
export const VERSION = typeof __VERSION__ === 'string' ? __VERSION__ : '0.0.0-dev';

/** How long a run waits for another run on the same namespace; with -wait, within the units' start limit. */
const LOCK_WAIT_MS = 20_000;

/** Runs the CLI and returns its exit code; the only place that turns errors into exit codes. */
export async function run(
  argv: readonly string[],
  overrides: Partial<CommandContext> & { output?: Output } = {},
): Promise<number> {
  const output = overrides.output ?? processOutput;
  let args: string[] = [];
  let argvError: unknown;
  try {
    args = normaliseArgv(argv);
  } catch (error) {
    argvError = error;
  }
  const debug = args.includes('--debug');
  const env = overrides.env ?? process.env;
  const palette = output === processOutput ? await stderrPalette(env) : undefined;
  const log = overrides.log ?? createLogger(output, { debug, env, ...(palette ? { palette } : {}) });
  const runner = overrides.runner ?? ((netns?: string) => createRunner({ netns }));
  const context: CommandContext = {
    output,
    log,
    env,
    version: VERSION,
    runner,
    backends: overrides.backends ?? installedBackends(runner, (message) => log.warn(message)),
    lockNamespace:
      overrides.lockNamespace ??
      ((netns) =>
        lockNamespace(netns, 'write', {
          waitMs: LOCK_WAIT_MS,
          onWait: (holder, where, lock) =>
            log.warn(`waiting up to ${LOCK_WAIT_MS / 1000}s for ${holder} to finish with the rules of ${where} (lock ${lock})`),
        })),
    records: overrides.records ?? { read: readRecord, write: writeRecord, remove: removeRecord },
    deferSignals: (work) =>
      withSignalsDeferred(work, (signal) => log.warn(`received ${signal}: finishing the rule changes under way first`)),
    // The agent client and its schemas are loaded only by runs that ask the agent (-proxy-id).
    fetchProxyPorts:
      overrides.fetchProxyPorts ?? (async (...args) => (await import('./consul/agent.ts')).fetchProxyPorts(...args)),
    // Only verify probes; the probe's source is loaded with it.
    elapsedMs: overrides.elapsedMs ?? (() => process.uptime() * 1000),
    probe: overrides.probe ?? (async (netns, plan) => (await import('./host/probe.ts')).runProbe(netns, plan)),
    readProxyPorts: overrides.readProxyPorts ?? (async (...args) => (await import('./consul/agent.ts')).readProxyPorts(...args)),
    claimWatch: overrides.claimWatch ?? ((netns) => lockNamespace(netns, 'watch', { waitMs: 0 })),
    untilStopped: overrides.untilStopped ?? untilSignalled,
    notifyReady: overrides.notifyReady ?? (async () => void (await notifySystemdReady(runner(), env, log))),
  };
  let exitCode: number = ExitCode.ok;
  const handle = async (name: CommandName, flags: RawOptions) => {
    exitCode = await COMMANDS[name](flags, context);
  };
  const program = createProgram(VERSION, handle, args);
  program.configureOutput({
    writeOut: (text) => output.stdout(text),
    writeErr: (text) => output.stderr(text),
    // One line whatever the argument held (control characters escaped), and never the value of an unknown
    // `--flag=value`: it may be a token given to a command that takes none.
    outputError: (text) => {
      const message = text.replace(/^error: /, '').trim().replace(/(unknown option '[^'=]*)=[\s\S]*'/, "$1=...'");
      log.error(`${escapeControls(message)} (see --help)`);
    },
  });
  for (const sub of program.commands) sub.configureOutput(program.configureOutput());
  try {
    if (argvError !== undefined) throw argvError;
    await program.parseAsync(args, { from: 'user' });
    return exitCode;
  } catch (error) {
    if (error instanceof CommanderError) {
      return error.exitCode === 0 ? ExitCode.ok : ExitCode.usage;
    }
    if (error instanceof CliError) {
      log.error(escapeControls(error.message));
      if (debug && error.stack) output.stderr(`${error.stack}\n`);
      return error.exitCode;
    }
    log.error(escapeControls(`internal error, please report it: ${(error as Error)?.message ?? String(error)}`));
    if (debug) output.stderr(`${(error as Error)?.stack ?? ''}\n`);
    return ExitCode.internal;
  }
}

const escapeControls = (text: string) =>
  text.replace(/[\u0000-\u001f\u007f]/g, (c) => JSON.stringify(c).slice(1, -1));

// Runs only as the bundled program, not when tests import this module.
if (typeof __VERSION__ === 'string') {
  // Output is written synchronously, so nothing is left to flush: exiting at once spares tearing down a heap
  // that may hold thousands of rules. The runners' shells go first (see endShells).
  const exit = (code: number) => void endShells().then(() => process.exit(code));
  // A promise nobody awaited that fails is a bug here, not a crash with a stack dump and exit 1: report it
  // as one, with the internal error's code.
  process.on('unhandledRejection', (error) => {
    processOutput.stderr(`redirect-traffic: internal error, please report it: ${escapeControls((error as Error)?.message ?? String(error))}\n`);
    exit(ExitCode.internal);
  });
  void run(process.argv.slice(2)).then(
    exit,
    // Only if even reporting failed (stderr closed, say): there is nothing left to tell.
    () => exit(ExitCode.internal),
  );
}
