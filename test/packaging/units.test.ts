import { spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

// Every unit in systemd/ must pass `systemd-analyze verify` with nothing on stderr: unknown keys and bad
// values are only warnings (exit 0), and an operator would see them in the journal on every boot.

const UNIT_DIR = fileURLToPath(new URL('../../systemd/', import.meta.url));
const UNIT_FILE = /\.(service|socket|timer|path|mount|target)$/;
/** `ExecStartPre=+-/usr/bin/tool args`: the key, systemd's prefix characters, the absolute program. */
const EXEC_LINE = /^(Exec[A-Za-z]+=)([-+!@:|]*)(\/\S+)/gm;
/** The installed binary path every unit uses (README tells /usr/local users to change it in one place). */
const INSTALLED_BINARY = '/usr/bin/redirect-traffic';

const analyzerFound = spawnSync('systemd-analyze', ['--version']).status === 0;
const unitNames = readdirSync(UNIT_DIR).filter((name) => UNIT_FILE.test(name));

/** Template units are checked as an instance, the way they are enabled (`envoy-sidecar@web.service`). */
const instanceName = (unit: string) => unit.replace(/@\./, '@web.');

if (!analyzerFound) {
  const reason = 'systemd-analyze not found; install the "systemd" package to verify the unit files';
  if (process.env['CI'] === 'true') {
    it('finds systemd-analyze (required under CI)', () => {
      expect.fail(reason);
    });
  } else {
    console.warn(`\n*** SKIPPING systemd unit verification: ${reason} ***\n`);
  }
}

describe('systemd units', () => {
  it('ships the sidecar template and the oneshot template', () => {
    expect(unitNames).toEqual(expect.arrayContaining(['envoy-sidecar@.service', 'redirect-traffic@.service']));
  });

  it('calls redirect-traffic by the same absolute path in every unit', () => {
    for (const unit of unitNames) {
      const programs = [...readFileSync(join(UNIT_DIR, unit), 'utf8').matchAll(EXEC_LINE)].map((m) => m[3]);
      for (const program of programs.filter((path) => path?.endsWith('/redirect-traffic'))) {
        expect(program, unit).toBe(INSTALLED_BINARY);
      }
    }
  });
});

describe.skipIf(!analyzerFound)('systemd-analyze verify', () => {
  let workDir = '';

  beforeAll(() => {
    workDir = mkdtempSync(join(tmpdir(), 'rt-units-'));
  });
  afterAll(() => {
    rmSync(workDir, { recursive: true, force: true });
  });

  /**
   * verify fails when an Exec program does not exist, so each absolute program is pointed at a stub of the
   * same path under workDir/stubs (keeping paths distinct), and the unit is copied next to the others.
   */
  function stageUnit(unit: string): string {
    const text = readFileSync(join(UNIT_DIR, unit), 'utf8').replace(EXEC_LINE, (_line, key, prefix, program) => {
      const stub = join(workDir, 'stubs', program);
      mkdirSync(dirname(stub), { recursive: true });
      writeFileSync(stub, '#!/bin/sh\nexit 0\n');
      chmodSync(stub, 0o755);
      return `${key}${prefix}${stub}`;
    });
    writeFileSync(join(workDir, unit), text);
    return join(workDir, instanceName(unit));
  }

  it.each(unitNames)('%s: no errors, no warnings', (unit) => {
    const target = stageUnit(unit);
    const result = spawnSync('systemd-analyze', ['verify', '--man=no', target], { cwd: workDir, encoding: 'utf8' });
    const report = `exit ${result.status}\nstdout:\n${result.stdout}\nstderr:\n${result.stderr}`;
    expect(result.error, report).toBeUndefined();
    expect(result.stderr, report).toBe('');
    expect(result.status, report).toBe(0);
  });
});
