import { spawnSync, type SpawnSyncOptions } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

// What operators get: `npm pack` → copy the tarball → `npm install -g` with no registry at all.

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const manifest = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as {
  version: string;
  dependencies?: Record<string, string>;
};
/** Every file under these directories is part of what runs (the build empties dist/ first). */
const SHIPPED_DIRS = ['bin', 'dist', 'systemd'];

/** Exactly what runs, plus the documents npm always ships; never src/, test/ or node_modules/. */
function expectedFiles(): string[] {
  const built = SHIPPED_DIRS.flatMap((dir) =>
    readdirSync(join(ROOT, dir), { recursive: true, withFileTypes: true })
      .filter((entry) => entry.isFile())
      .map((entry) => relative(ROOT, join(entry.parentPath, entry.name))),
  );
  return ['LICENSE', 'README.md', 'package.json', ...built].sort();
}

/** Nothing listens here: any attempt to reach a registry fails at once instead of going out. */
const UNREACHABLE_REGISTRY = 'http://127.0.0.1:9';

/** Runs a program (no shell) and returns stdout; a non-zero exit fails the test with the program's output. */
function runOk(program: string, args: readonly string[], options: SpawnSyncOptions = {}): string {
  const result = spawnSync(program, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], ...options });
  const report = `${program} ${args.join(' ')}: exit ${result.status}\n${String(result.stdout)}\n${String(result.stderr)}`;
  expect(result.error, report).toBeUndefined();
  expect(result.status, report).toBe(0);
  return String(result.stdout);
}

describe('npm package', () => {
  let workDir = '';
  let tarball = '';
  let prefix = '';

  beforeAll(() => {
    // Packs the bundle that is already built (`npm test` builds first) instead of rebuilding dist/ under
    // the feet of tests that run it in parallel.
    const dist = join(ROOT, 'dist');
    expect(existsSync(dist) && readdirSync(dist).length > 0, 'dist/ is empty: run `npm run build` first').toBe(true);
    workDir = mkdtempSync(join(tmpdir(), 'rt-pack-'));
    const cache = join(workDir, 'npm-cache');
    runOk('npm', ['pack', '--ignore-scripts', '--pack-destination', workDir, '--cache', cache], { cwd: ROOT });
    tarball = join(workDir, `redirect-traffic-${manifest.version}.tgz`);

    // An empty cache plus --offline plus an unreachable registry: the install can only succeed if the
    // package needs nothing but itself.
    prefix = join(workDir, 'prefix');
    runOk(
      'npm',
      ['install', '--global', '--prefix', prefix, '--offline', '--registry', UNREACHABLE_REGISTRY, '--cache', cache, '--no-audit', '--no-fund', tarball],
      { cwd: workDir },
    );
  }, 120_000);

  afterAll(() => {
    if (workDir) rmSync(workDir, { recursive: true, force: true });
  });

  it('ships only what runs', () => {
    const listed = runOk('tar', ['-tzf', tarball])
      .split('\n')
      .filter(Boolean)
      .map((path) => path.replace(/^package\//, ''))
      .sort();
    expect(listed).toEqual(expectedFiles());
    expect(listed).toContain('bin/redirect-traffic');
    expect(listed.filter((path) => /^(src|test|bench|node_modules)\/|\.ts$/.test(path))).toEqual([]);
  });

  it('has no runtime dependencies: everything is in the bundle', () => {
    expect(manifest.dependencies ?? {}).toEqual({});
    expect(existsSync(join(prefix, 'lib/node_modules/redirect-traffic/node_modules'))).toBe(false);
  });

  it('installs a working redirect-traffic into <prefix>/bin', () => {
    const installed = join(prefix, 'bin/redirect-traffic');
    expect(runOk(installed, ['--version'], { cwd: workDir }).trim()).toBe(manifest.version);
    const rules = runOk(installed, ['--dry-run', '-proxy-uid=101', '-proxy-inbound-port=20000'], { cwd: workDir });
    expect(rules).toMatch(/^\*nat$/m);
    expect(rules).toMatch(/^COMMIT$/m);
  });
});
