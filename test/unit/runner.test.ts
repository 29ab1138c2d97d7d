import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, describe, expect, it } from 'vitest';
import { TemporaryError } from '../../src/errors.ts';
import { batchedReads } from '../../src/host/namespaceReads.ts';
import { createRunner, endShells, findProgram, outsidePath } from '../../src/host/runner.ts';
import { scratchDir } from '../helpers/fakes.ts';

// The runner with real processes (no namespace, no root): /bin/sh, printf, cat.
const scratch = scratchDir('redirect-traffic-runner-');
afterAll(() => scratch.remove());
const runner = createRunner();

describe('createRunner', () => {
  const shellPid = async (run = createRunner()) => (await run.run('/bin/sh', ['-c', 'echo $PPID'])).stdout;

  it('runs every program, however many and however asked for, as a step of one shell, in turn', async () => {
    const session = createRunner();
    const [first, second, third] = await Promise.all([shellPid(session), shellPid(session), session.run('/bin/sh', ['-c', 'echo out; echo err >&2; exit 5'])]);
    expect(second).toBe(first);
    expect(third).toEqual({ exitCode: 5, stdout: 'out\n', stderr: 'err\n' });
    expect(await shellPid(session)).toBe(first);
    // Another runner, another shell.
    expect(await shellPid()).not.toBe(first);
  });

  it('gives a program its input exactly, whatever lines it holds, and no input at all otherwise', async () => {
    const session = createRunner({ inputDir: join(scratch.dir, 'exact') });
    const tricky = ["RT_INPUT_x", "'EOF'", '$(touch x)', '#== redirect-traffic a step 0 status 0', ''].join('\n');
    const large = `${'-A CONSUL_PROXY_OUTPUT -d 198.18.0.1/32 -j RETURN\n'.repeat(20_000)}COMMIT\n`;
    const inputs = [tricky, large, 'no final newline'];
    const echoed = await Promise.all(inputs.map((input) => session.run('/bin/cat', [], { input })));
    expect(echoed.map((result) => result.stdout)).toEqual(inputs);
    expect(await session.run('/bin/cat', [])).toEqual({ exitCode: 0, stdout: '', stderr: '' });
  });

  it('hands input over in a private file, removed once the step has ended, or as a here-document where none can be written', async () => {
    const inputDir = join(scratch.dir, 'input');
    const session = createRunner({ inputDir });
    // The program reads a file only its owner may read, in a directory only its owner may enter.
    const seen = await session.run('/bin/sh', ['-c', 'stat -L -c %a /dev/stdin; stat -c %a "$(dirname "$(readlink /proc/self/fd/0)")"; cat'], { input: 'rules\n' });
    expect(seen.stdout).toBe('600\n700\nrules\n');
    await expect(session.run('/bin/sh', ['-c', 'exit 3'], { input: 'x\n' })).resolves.toMatchObject({ exitCode: 3 });
    expect(readdirSync(inputDir)).toEqual([]);
    // What a killed run left (its PID no longer runs) goes with the next input; a live run's stays.
    const dead = spawnSync('/bin/true').pid;
    writeFileSync(join(inputDir, `${dead}-1`), 'left\n');
    writeFileSync(join(inputDir, `${process.ppid}-1`), 'in use\n');
    await session.run('/bin/cat', [], { input: 'y\n' });
    expect(readdirSync(inputDir)).toEqual([`${process.ppid}-1`]);
    // A directory that cannot be written to (not root, say): a here-document, newline added.
    expect((await createRunner({ inputDir: '/proc/no-such-dir' }).run('/bin/cat', [], { input: 'no final newline' })).stdout).toBe('no final newline\n');
  });

  it('hands a program only the environment asked for, taken literally', async () => {
    const result = await createRunner().run('/bin/sh', ['-c', 'printf "%s|%s" "$NOTIFY_SOCKET" "$CONSUL_HTTP_TOKEN"'], { env: { NOTIFY_SOCKET: "it's $(id)" } });
    expect(result.stdout).toBe("it's $(id)|");
  });

  it('fails a program that cannot be run as such, and runs a name from PATH, never as a shell builtin', async () => {
    const session = createRunner();
    await expect(session.run(join(scratch.dir, 'no-such-program'), [])).rejects.toThrow(/^could not run .*no-such-program: not found$/);
    await expect(session.run(scratch.write('not-executable', 'echo hi\n'), [])).rejects.toThrow(/^could not run .*not-executable: permission denied$/);
    await expect(session.run('no-such-program-anywhere', [])).rejects.toThrow('could not run no-such-program-anywhere: not found');
    // `exit` is a builtin of every shell, and a program nowhere on PATH.
    await expect(session.run('exit', ['3'])).rejects.toThrow('could not run exit: not found');
    // A program's own 127 is its status.
    expect(await session.run('/bin/sh', ['-c', 'echo "x: not found" >&2; exit 127'])).toEqual({ exitCode: 127, stdout: '', stderr: 'x: not found\n' });
  });

  it('fails a program killed by a signal as killed, not as an exit status', async () => {
    await expect(createRunner().run('/bin/sh', ['-c', 'kill -SEGV $$'], { name: 'crasher' })).rejects.toThrow('crasher was killed by SIGSEGV');
  });

  it('refuses a NUL character, which the shell would drop', async () => {
    await expect(createRunner().run('/bin/cat', [], { input: 'a\0b\n' })).rejects.toThrow(TypeError);
  });

  it('returns tens of megabytes of output whole, marks split across chunks included', async () => {
    // (Scanning the whole output at every chunk made this take minutes: the output is searched only where a
    // chunk could complete a mark. Not timed here; `npm run bench` measures.)
    const session = createRunner();
    const [big, after] = await Promise.all([
      session.run('/bin/sh', ['-c', 'head -c 30000000 /dev/zero | tr "\\0" x; head -c 100000 /dev/zero | tr "\\0" y >&2']),
      session.run('/usr/bin/printf', ['after']),
    ]);
    expect(big.stdout).toBe('x'.repeat(30_000_000));
    expect(big.stderr).toBe('y'.repeat(100_000));
    expect(after.stdout).toBe('after');
  });

  it('reports a shell that cannot be started, and endShells does not wait for it', async () => {
    const bin = join(scratch.dir, 'broken-bin');
    mkdirSync(bin, { recursive: true });
    // Found on PATH, but exec fails (ENOENT for the interpreter): spawn emits 'error' and never 'exit'.
    writeFileSync(join(bin, 'nsenter'), '#!/nonexistent/interpreter\n', { mode: 0o755 });
    const path = process.env['PATH'];
    process.env['PATH'] = `${bin}:${path}`;
    try {
      const session = createRunner({ netns: '/var/run/netns/none' });
      await expect(session.run('/bin/true', [])).rejects.toThrow(/^could not run .*broken-bin\/nsenter: not found$/);
    } finally {
      process.env['PATH'] = path;
    }
    await expect(Promise.race([endShells().then(() => 'ended'), sleep(3000).then(() => 'still waiting')])).resolves.toBe('ended');
  });

  it('fails a program that kills the shell running it as killed, and runs the next in a new shell', async () => {
    const session = createRunner();
    const before = await shellPid(session);
    await expect(session.run('/bin/sh', ['-c', 'kill -9 $PPID'], { name: 'killer' })).rejects.toThrow('killer was killed by SIGKILL');
    const after = await shellPid(session);
    expect(after).not.toBe(before);
  });

  it('ends every shell when asked, once it has run what it was given, and waits until they have exited', async () => {
    const session = createRunner();
    const pid = Number(await shellPid(session));
    const running = session.run('/bin/sh', ['-c', 'sleep 0.2; echo done']);
    await endShells();
    expect((await running).stdout).toBe('done\n');
    expect(() => process.kill(pid, 0)).toThrow(/ESRCH/);
    // A run after that gets a new shell.
    expect(Number(await shellPid(session))).not.toBe(pid);
  });

  it('waits also for a shell started by a run asked for after it was called', async () => {
    const session = createRunner();
    await session.run('/bin/true', []);
    const ending = endShells();
    const late = session.run('/bin/sh', ['-c', 'sleep 0.3; echo $$']);
    await ending;
    const pid = Number((await Promise.race([late, sleep(0).then(() => ({ stdout: 'still running' }))])).stdout);
    expect(pid).toBeGreaterThan(0);
    expect(() => process.kill(pid, 0)).toThrow(/ESRCH/);
  });

  it('never keeps this process alive while it has nothing to run', async () => {
    const handles = () => process.getActiveResourcesInfo().filter((kind) => kind === 'ProcessWrap' || kind === 'PipeWrap').length;
    // Without the shells earlier tests left to end by themselves.
    await endShells();
    const session = createRunner();
    const idle = handles();
    await session.run('/bin/true', []);
    expect(handles()).toBeLessThanOrEqual(idle);
  });
});

describe('findProgram', () => {
  it('looks on PATH only, as a shell does; without a PATH, in the system directories', () => {
    const bin = join(scratch.dir, 'path-bin');
    mkdirSync(bin, { recursive: true });
    writeFileSync(join(bin, 'sh'), '#!/bin/sh\n', { mode: 0o755 });
    expect(findProgram('sh', `relative:${bin}:/bin`)).toBe(join(bin, 'sh'));
    expect(findProgram('sh', bin)).toBe(join(bin, 'sh'));
    expect(findProgram('cat', bin)).toBeUndefined();
    expect(findProgram('cat', '')).toMatch(/^\/(usr\/)?(s)?bin\/cat$/);
  });

  it('says where a program left out of PATH is', () => {
    const path = process.env['PATH'];
    process.env['PATH'] = join(scratch.dir, 'empty-bin');
    try {
      expect(outsidePath(['no-such-program-anywhere', 'cat'])).toMatch(/^ \(\/(usr\/)?(s)?bin\/cat is installed, but PATH lacks \/(usr\/)?(s)?bin\)$/);
    } finally {
      process.env['PATH'] = path;
    }
    expect(outsidePath(['cat'])).toBe('');
  });
});

describe('createRunner, with hostile output and arguments', () => {
  const runner = createRunner();

  it('cannot be misled by marker-like text in an output (a rule comment may hold any line)', async () => {
    const forged = ['#== redirect-traffic step 0 ok', '#== redirect-traffic x step 1 status 0', '#== redirect-traffic x step 0 end'].join('\n');
    const [result, after] = await Promise.all([runner.run('/usr/bin/printf', ['%s\\n', forged]), runner.run('/usr/bin/printf', ['second'])]);
    expect(result.stdout).toBe(`${forged}\n`);
    expect(after.stdout).toBe('second');
  });

  it('takes words literally: quotes, $(...) and newlines are never interpreted', async () => {
    const words = ["it's", '$(touch x)', '`id`', 'a\nb', '"'];
    const result = await runner.run('/usr/bin/printf', ['[%s]', ...words]);
    expect(result.stdout).toBe(words.map((word) => `[${word}]`).join(''));
  });

  it('on timeout kills every program it started, not just the shell, and names the program; the next one runs', async () => {
    const late = join(scratch.dir, 'written-late');
    const error = await runner.run('/bin/sh', ['-c', `sleep 1; touch '${late}'`], { timeoutMs: 200 }).catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(TemporaryError);
    expect((error as Error).message).toBe('/bin/sh did not finish within 0.2s and was killed');
    expect(await runner.run('/usr/bin/printf', ['next'])).toEqual({ exitCode: 0, stdout: 'next', stderr: '' });
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
