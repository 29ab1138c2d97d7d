import { execFileSync } from 'node:child_process';
import { mkdirSync, symlinkSync, truncateSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { tlsSettings } from '../../src/consul/tls.ts';
import { CliError, ConfigError, ExitCode, UsageError } from '../../src/errors.ts';
import { applyOptions } from '../../src/options.ts';
import { FILE_LIMITS, readUserFile } from '../../src/userFile.ts';
import { runCli, scratchDir } from '../helpers/fakes.ts';

// Defect 3: a file named by the user is read only if it is a regular file within a size limit; anything else
// fails at once (a FIFO used to block forever, /dev/zero to fill memory).

const scratch = scratchDir();
afterAll(() => scratch.remove());

const fifo = join(scratch.dir, 'fifo');
execFileSync('mkfifo', [fifo]);

/** A sparse file of `size` bytes: instant to make, whatever its size. */
function sparseFile(name: string, size: number): string {
  const path = scratch.write(name, '');
  truncateSync(path, size);
  return path;
}

const messageOf = (fn: () => unknown) => {
  try {
    fn();
  } catch (error) {
    return error as Error;
  }
  throw new Error('expected an error');
};

describe('readUserFile', () => {
  it('reads a regular file, and one behind a symbolic link', () => {
    const path = scratch.write('plain.txt', 'content\n');
    const link = join(scratch.dir, 'link.txt');
    symlinkSync(path, link);
    expect(readUserFile(path, '-token-file', 100)).toBe('content\n');
    expect(readUserFile(link, '-token-file', 100)).toBe('content\n');
  });

  it.each([
    ['a FIFO', fifo, 'is a FIFO, not a regular file'],
    ['/dev/zero', '/dev/zero', 'is a character device, not a regular file'],
    ['a directory', scratch.dir, 'is a directory, not a regular file'],
    ['a missing file', join(scratch.dir, 'absent'), 'does not exist'],
  ])('refuses %s at once, naming the setting and the path', (_, path, problem) => {
    const error = messageOf(() => readUserFile(path, 'CONSUL_HTTP_TOKEN_FILE', FILE_LIMITS.token));
    expect(error).toBeInstanceOf(UsageError);
    expect(error.message).toBe(`CONSUL_HTTP_TOKEN_FILE ${JSON.stringify(path)} ${problem}`);
  });

  it('refuses a file over the limit, saying the limit; one at the limit is read', () => {
    const atLimit = scratch.write('at-limit', 'x'.repeat(1024));
    expect(readUserFile(atLimit, '-ca-file', 1024)).toHaveLength(1024);
    const over = scratch.write('over-limit', 'x'.repeat(1025));
    expect(messageOf(() => readUserFile(over, '-ca-file', 1024)).message).toBe(`-ca-file ${JSON.stringify(over)} is larger than the 1 KiB limit`);
  });

  it('a 1 GB config file fails at once, without reading it, as a config error', () => {
    const huge = sparseFile('huge.json', 1024 ** 3);
    const start = performance.now();
    const error = messageOf(() => readUserFile(huge, '-config', FILE_LIMITS.config, ConfigError));
    // Reading 1 GB takes seconds here: refusing it unread takes a few milliseconds, even on a loaded machine.
    expect(performance.now() - start).toBeLessThan(2000);
    expect(error).toBeInstanceOf(ConfigError);
    expect(error.message).toContain('is larger than the 16 MiB limit');
  });

  it('reads a file exactly its size, and a /proc file, which reports size 0', () => {
    const path = scratch.write('sized', 'abc');
    expect(readUserFile(path, '-config', 3)).toBe('abc');
    // The buffer grows as it reads.
    expect(readUserFile('/proc/self/status', '-config', FILE_LIMITS.config)).toMatch(/^Name:/);
  });
});

describe('through the CLI: one line with the exit code of the setting', () => {
  it('-config: a FIFO, /dev/zero or an oversized file exit 78 at once', async () => {
    const big = sparseFile('big.json', FILE_LIMITS.config + 1);
    for (const [path, problem] of [[fifo, 'is a FIFO, not a regular file'], ['/dev/zero', 'is a character device, not a regular file'], [big, 'is larger than the 16 MiB limit']] as const) {
      const result = await runCli(['--dry-run', `-config=${path}`]);
      expect(result.code).toBe(ExitCode.config);
      expect(result.stderrLines).toEqual([`redirect-traffic: error: -config ${JSON.stringify(path)} ${problem}`]);
    }
  });

  it('a token file: -token-file and CONSUL_HTTP_TOKEN_FILE exit 64, named', async () => {
    const flag = await runCli(['--dry-run', '-proxy-uid=1', '-proxy-id=web', `-token-file=${fifo}`]);
    expect(flag.code).toBe(ExitCode.usage);
    expect(flag.stderrLines).toEqual([`redirect-traffic: error: -token-file ${JSON.stringify(fifo)} is a FIFO, not a regular file`]);
    const env = await runCli(['--dry-run', '-proxy-uid=1', '-proxy-id=web'], { env: { CONSUL_HTTP_TOKEN_FILE: '/dev/zero' } });
    expect(env.code).toBe(ExitCode.usage);
    expect(env.stderrLines[0]).toContain('CONSUL_HTTP_TOKEN_FILE "/dev/zero" is a character device, not a regular file');
  });

  it('a token file named inside -config exits 78, like the config file itself', async () => {
    const config = scratch.write('names-files.json', JSON.stringify({ 'token-file': fifo }));
    const token = await runCli(['--dry-run', '-proxy-uid=1', '-proxy-id=web', `-config=${config}`]);
    expect(token.code).toBe(ExitCode.config);
    expect(token.stderrLines).toEqual([`redirect-traffic: error: key "token-file" in ${config} ${JSON.stringify(fifo)} is a FIFO, not a regular file`]);
  });

  it('a token file over 64 KiB is refused', async () => {
    const big = scratch.write('big-token', 'x'.repeat(64 * 1024 + 1));
    const result = await runCli(['--dry-run', '-proxy-uid=1', '-proxy-id=web', `-token-file=${big}`]);
    expect(result.stderrLines[0]).toContain('is larger than the 64 KiB limit');
  });
});

describe('TLS files: the same reader, named by the setting that gave them', () => {
  const WITH_ID = { 'proxy-uid': '1', 'proxy-id': 'web' };
  const rejection = async (flags: Record<string, string>, env: NodeJS.ProcessEnv) => {
    const agent = applyOptions({ ...WITH_ID, ...flags }, { CONSUL_HTTP_SSL: 'true', ...env }).agent;
    if (!agent) throw new Error('expected agent options');
    return tlsSettings(agent).then(
      () => {
        throw new Error('expected a rejection');
      },
      (error: Error) => error,
    );
  };

  it('a TLS file named inside -config is a config error (78)', async () => {
    const config = scratch.write('names-ca.json', JSON.stringify({ 'ca-file': fifo }));
    const error = (await rejection({ config }, {})) as CliError;
    expect(error.message).toBe(`key "ca-file" in ${config} ${JSON.stringify(fifo)} is a FIFO, not a regular file`);
    expect(error.exitCode).toBe(ExitCode.config);
  });

  it('-ca-file and CONSUL_CACERT naming a FIFO', async () => {
    expect((await rejection({ 'ca-file': fifo }, {})).message).toBe(`-ca-file ${JSON.stringify(fifo)} is a FIFO, not a regular file`);
    expect((await rejection({}, { CONSUL_CACERT: fifo })).message).toBe(`CONSUL_CACERT ${JSON.stringify(fifo)} is a FIFO, not a regular file`);
  });

  it('a file in -ca-path (CONSUL_CAPATH) linking to a FIFO', async () => {
    const dir = join(scratch.dir, 'ca-dir');
    mkdirSync(dir);
    symlinkSync(fifo, join(dir, 'ca.pem'));
    const error = await rejection({}, { CONSUL_CAPATH: dir });
    expect(error.message).toBe(`CONSUL_CAPATH ${JSON.stringify(join(dir, 'ca.pem'))} is a FIFO, not a regular file`);
  });

  it('-client-cert over 1 MiB; CONSUL_CLIENT_KEY a FIFO', async () => {
    const big = sparseFile('big.pem', FILE_LIMITS.tls + 1);
    const key = scratch.write('key.pem', 'not a key');
    expect((await rejection({ 'client-cert': big, 'client-key': key }, {})).message).toBe(
      `-client-cert ${JSON.stringify(big)} is larger than the 1 MiB limit`,
    );
    const cert = scratch.write('cert.pem', 'not a cert');
    expect((await rejection({ 'client-cert': cert }, { CONSUL_CLIENT_KEY: fifo })).message).toBe(
      `CONSUL_CLIENT_KEY ${JSON.stringify(fifo)} is a FIFO, not a regular file`,
    );
  });
});
