import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, describe, expect, it } from 'vitest';
import { TemporaryError } from '../../src/errors.ts';
import { batchedReads } from '../../src/host/namespaceReads.ts';
import { createRunner, runChained } from '../../src/host/runner.ts';
import { scratchDir } from '../helpers/fakes.ts';

// runChained with real processes (no namespace, no root): /bin/sh, printf, cat.
const scratch = scratchDir('redirect-traffic-runner-');
afterAll(() => scratch.remove());
const runner = createRunner();
const printf = (...args: string[]) => ({ program: '/usr/bin/printf', args });

describe('runChained', () => {
  it('feeds the first program its input and returns each later output apart, byte for byte', async () => {
    const sink = scratch.write('sink', '');
    const result = await runChained(runner, { program: '/bin/sh', args: ['-c', `cat > '${sink}'`] }, [printf('a\\nb\\n'), printf(''), printf('no newline')], {
      input: 'the transaction\n',
    });
    expect(result.exitCode).toBe(0);
    expect(result.outputs).toEqual(['a\nb\n', '', 'no newline']);
    expect(readFileSync(sink, 'utf8')).toBe('the transaction\n');
  });

  it('cannot be misled by marker-like text in an output (a rule comment may hold any line)', async () => {
    const forged = ['#== redirect-traffic step 0 ok', '#== redirect-traffic x step 1 start', '#== redirect-traffic x step 0 ok'].join('\n');
    const result = await runChained(runner, printf(''), [printf('%s\\n', forged), printf('second')]);
    expect(result.outputs).toEqual([`${forged}\n`, 'second']);
  });

  it('takes words literally: quotes, $(...) and newlines are never interpreted', async () => {
    const words = ["it's", '$(touch x)', '`id`', 'a\nb', '"'];
    const result = await runChained(runner, printf(''), [printf('[%s]', ...words)]);
    expect(result.outputs).toEqual([words.map((word) => `[${word}]`).join('')]);
  });

  it("gives the first program's failure (status and stderr), and runs nothing after it", async () => {
    const result = await runChained(runner, { program: '/bin/sh', args: ['-c', 'echo refused >&2; exit 4'] }, [printf('never')]);
    expect(result).toEqual({ exitCode: 4, stderr: 'refused\n', outputs: [undefined] });
  });

  it('marks a later step that failed as missing, and keeps the status of the first', async () => {
    const result = await runChained(runner, printf(''), [{ program: '/bin/sh', args: ['-c', 'echo partial; exit 1'] }, printf('after')]);
    expect(result.exitCode).toBe(0);
    expect(result.outputs).toEqual([undefined, 'after']);
  });

  it('on timeout kills every program it started, not just the shell, and names the first program', async () => {
    const late = join(scratch.dir, 'written-late');
    const first = { program: '/bin/sh', args: ['-c', `sleep 1; touch '${late}'`] };
    const error = await runChained(runner, first, [], { timeoutMs: 200 }).catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(TemporaryError);
    expect((error as Error).message).toBe('/bin/sh did not finish within 0.2s and was killed');
    await sleep(1300);
    expect(existsSync(late)).toBe(false);
  });
});

describe('batchedReads', () => {
  it('runs every read asked for in one turn in one shell, each caller getting its own part', async () => {
    const calls: string[] = [];
    const counting = { ...runner, run: (program: string, args: readonly string[], options?: Parameters<typeof runner.run>[2]) => (calls.push(program), runner.run(program, args, options)) };
    const reads = batchedReads(counting);
    const file = scratch.write('names', 'nat\nfilter');
    const [first, second, text, missing] = await Promise.all([
      reads.run('/usr/bin/printf', ['one\\n']),
      reads.run('/bin/sh', ['-c', 'echo out; echo err >&2; exit 3']),
      reads.file(file),
      reads.file(join(scratch.dir, 'no such file')),
    ]);
    expect(calls).toEqual(['/bin/sh']);
    expect(first).toEqual({ exitCode: 0, stdout: 'one\n', stderr: '' });
    expect(second).toEqual({ exitCode: 3, stdout: 'out\n', stderr: 'err\n' });
    expect(text).toBe('nat\nfilter\n');
    expect(missing).toBe('');
    // A later turn is a new batch.
    expect(await reads.run('/usr/bin/printf', ['two'])).toEqual({ exitCode: 0, stdout: 'two', stderr: '' });
    expect(calls).toEqual(['/bin/sh', '/bin/sh']);
  });

  it('a file holding marker-like lines comes back whole', async () => {
    const forged = scratch.write('forged', '#== redirect-traffic x step 1\n#== redirect-traffic x step 0 status 0\n');
    const reads = batchedReads(runner);
    const [text, after] = await Promise.all([reads.file(forged), reads.run('/usr/bin/printf', ['after'])]);
    expect(text).toBe('#== redirect-traffic x step 1\n#== redirect-traffic x step 0 status 0\n');
    expect(after.stdout).toBe('after');
  });

  it('keeps the streams apart: a warning on stderr never lands in a dump, however long', async () => {
    const reads = batchedReads(runner);
    const long = 'x'.repeat(5000);
    const result = await reads.run('/bin/sh', ['-c', `printf '%s' '${long}'; echo '# Warning: on stderr' >&2; printf '%s\\n' '${long}'`]);
    expect(result).toEqual({ exitCode: 0, stdout: `${long}${long}\n`, stderr: '# Warning: on stderr\n' });
  });

  it('rejects every read, each saying so, when the shell cannot even enter the namespace', async () => {
    const failing = { ...runner, run: async () => ({ exitCode: 1, stdout: '', stderr: "nsenter: reassociate to namespace 'ns/net' failed: Invalid argument\n" }) };
    const reads = batchedReads(failing);
    const outcomes = await Promise.allSettled([reads.run('/usr/sbin/nft', ['-j']), reads.file('/proc/net/if_inet6')]);
    expect(outcomes.map((outcome) => (outcome.status === 'rejected' ? (outcome.reason as Error).message : 'resolved'))).toEqual([
      "could not enter the namespace to read /usr/sbin/nft (exit 1): nsenter: reassociate to namespace 'ns/net' failed: Invalid argument",
      "could not enter the namespace to read /proc/net/if_inet6 (exit 1): nsenter: reassociate to namespace 'ns/net' failed: Invalid argument",
    ]);
  });

  it('fails every read of the batch, naming them, when the shell is killed', async () => {
    const reads = batchedReads(runner);
    const outcomes = await Promise.allSettled([reads.run('/usr/bin/printf', ['first']), reads.run('/bin/sh', ['-c', 'kill -9 $PPID'])]);
    for (const outcome of outcomes) {
      expect(outcome.status).toBe('rejected');
      expect(((outcome as PromiseRejectedResult).reason as Error).message).toBe('sh (reading /usr/bin/printf, /bin/sh) was killed by SIGKILL');
    }
  });
});
