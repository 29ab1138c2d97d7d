import { SystemCommandError } from '../errors.ts';
import { stderrExcerpt } from './backend.ts';
import { shellCommand, StepScript, type CommandRunner, type StepResult } from './runner.ts';

// The reads of a survey are taken together: whatever the backends ask for before the event loop turns is one
// step of the runner's shell inside the namespace (a script running the reads one after another), and each
// caller gets its own part back. Files are read by that script's builtins, as only a process inside the
// namespace can see its /proc/net: one process for all of them rather than one per file. The first step
// of a run, it is also where a namespace that cannot be entered shows.

export interface NamespaceReads {
  /** A program's output on each stream, and its exit status. */
  run(program: string, args: readonly string[]): Promise<StepResult>;
  /** A file's text; empty when it does not exist or cannot be read. */
  file(path: string): Promise<string>;
}

interface Request {
  command: string;
  what: string;
  resolve(result: StepResult): void;
  reject(error: unknown): void;
}

/** Reads through `runner` (inside its namespace), batched as above. */
export function batchedReads(runner: CommandRunner): NamespaceReads {
  let pending: Request[] | undefined;
  const flush = async (batch: Request[]) => {
    const steps = new StepScript();
    const script = batch.map((request, index) => steps.step(index, request.command)).join('\n');
    try {
      const result = await runner.run('/bin/sh', ['-c', script], { name: `sh (reading ${batch.map((request) => request.what).join(', ')})` });
      const results = steps.results(result.stdout, result.stderr, batch.length);
      // The first step without its end mark is where the shell stopped; with no mark at all, it never ran
      // (nsenter could not enter the namespace).
      const stopped = results.findIndex((step) => step === undefined);
      const why = (request: Request) =>
        steps.before(result.stdout) === result.stdout
          ? `could not enter the namespace to read ${request.what} (exit ${result.exitCode}): ${stderrExcerpt(steps.before(result.stderr)) || 'no output'}`
          : `could not read ${request.what}: the reading shell stopped (exit ${result.exitCode}) at ${batch[stopped]?.what ?? 'its end'}`;
      batch.forEach((request, index) => {
        const step = results[index];
        if (step) request.resolve(step);
        else request.reject(new SystemCommandError(why(request)));
      });
    } catch (error) {
      for (const request of batch) request.reject(error);
    }
  };
  const enqueue = (command: string, what: string) =>
    new Promise<StepResult>((resolve, reject) => {
      if (pending === undefined) {
        const batch: Request[] = [];
        pending = batch;
        setImmediate(() => {
          pending = undefined;
          void flush(batch);
        });
      }
      pending.push({ command, what, resolve, reject });
    });
  return {
    run: (program, args) => enqueue(shellCommand({ program, args }), program),
    file(path) {
      const file = shellCommand({ program: path, args: [] });
      // The last line may lack its newline; a missing file reads as empty.
      const loop = `while IFS= read -r line || [ -n "$line" ]; do printf '%s\\n' "$line"; done < ${file}`;
      return enqueue(`if [ -r ${file} ]; then ${loop}; fi`, path).then((result) => result.stdout);
    },
  };
}
