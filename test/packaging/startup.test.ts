import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

// The build records a V8 code cache with the Node that ran it; the tarball then meets whatever Node the host
// has. Node 20.19.0 once accepted a cache made by 20.20.2 (same V8 version) and died with SIGSEGV at every
// start. Every Node this repository can run under must start the same build, using the cache or not.

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const CLI = join(ROOT, 'bin/redirect-traffic');
const CACHE = join(ROOT, 'dist/cli.cjs.cache');
const FLAGS = ['--dry-run', '-proxy-uid=999', '-proxy-inbound-port=20000', '-exclude-uid=998', '-exclude-inbound-port=22,8301'];

const which = (program: string) =>
  (process.env['PATH'] ?? '').split(':').map((dir) => join(dir, program)).find((path) => existsSync(path));
const nodes = [
  ...new Set(
    [process.execPath, which('node'), ...['node20', 'node22', 'node24'].map((alias) => join(ROOT, 'node_modules', alias, 'bin/node'))].filter(
      (path): path is string => path !== undefined && existsSync(path),
    ),
  ),
];

describe('start-up under every Node at hand', () => {
  it('has a built bundle with its code cache (`npm run build`)', () => {
    expect(existsSync(CACHE), 'dist/cli.cjs.cache is missing: run `npm run build` first').toBe(true);
    // The cache names the bundle and the exact Node it was made by.
    expect(readFileSync(CACHE).subarray(0, 200).toString('latin1')).toMatch(/^\/\/ redirect-traffic build \w+ node v\d+\.\d+\.\d+ v8 \S+ \w+ \d+\n/);
  });

  const run = (node: string) => spawnSync(node, [CLI, ...FLAGS], { encoding: 'utf8', env: { PATH: process.env['PATH'] ?? '' } });
  const expected = run(process.execPath).stdout;

  it.each(nodes)('%s prints the same dry run and exits 0', (node) => {
    const result = run(node);
    const version = spawnSync(node, ['--version'], { encoding: 'utf8' }).stdout.trim();
    expect({ version, status: result.status, signal: result.signal, stderr: result.stderr }).toEqual({
      version,
      status: 0,
      signal: null,
      stderr: '',
    });
    expect(result.stdout).toBe(expected);
    expect(result.stdout).toContain('-A CONSUL_PROXY_INBOUND -p tcp -m tcp --dport 8301 -j RETURN');
  });
});
