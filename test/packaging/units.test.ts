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

/** Exposure `systemd-analyze security` may rate each unit at most (0 = locked down, 10 = UNSAFE). */
const MAX_EXPOSURE: Record<string, number> = {
  // Only the redirection runs in it: the tighter sandbox (1.9 as a oneshot, 2.1 with NotifyAccess=all for watch).
  'redirect-traffic@.service': 3.5,
  // Shared with Envoy (the main process), which some settings would break; 3.6 when written, 3.7 with verify's CAP_SETUID/CAP_SETGID.
  'envoy-sidecar@.service': 4.0,
};
/** Consul's inbound ports every agent listens on (Serf LAN), plus SSH: never sent to Envoy by default. */
const DEFAULT_EXCLUSIONS = '-exclude-uid=consul -exclude-inbound-port=22,8301';
const README = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');

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
  it('ships the sidecar template and the watch template', () => {
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

  const redirectUnits = ['envoy-sidecar@.service', 'redirect-traffic@.service'];
  const unitText = (unit: string) => readFileSync(join(UNIT_DIR, unit), 'utf8');
  /** The default a unit gives a variable: `Environment="NAME=value"` or `Environment=NAME=value`. */
  const defaultOf = (unit: string, name: string) =>
    new RegExp(`^Environment="?${name}=(.*?)"?$`, 'm').exec(unitText(unit))?.[1];

  it.each(redirectUnits)("%s: excludes SSH, the agent's UID and Serf LAN (8301) by default, as the README says", (unit) => {
    expect(defaultOf(unit, 'REDIRECT_TRAFFIC_EXCLUDE')).toBe(DEFAULT_EXCLUSIONS);
    // The README states the same default and the server ports, in words an operator copies.
    expect(README).toContain(`| \`REDIRECT_TRAFFIC_EXCLUDE\` | \`${DEFAULT_EXCLUSIONS}\` |`);
    expect(README).toContain('REDIRECT_TRAFFIC_EXCLUDE=-exclude-uid=consul -exclude-inbound-port=22,8300,8301,8302');
  });

  it("documents the server's ports (8300, 8302) in the environment example", () => {
    const example = readFileSync(join(UNIT_DIR, 'redirect-traffic.env.example'), 'utf8');
    expect(example).toContain(`#REDIRECT_TRAFFIC_EXCLUDE=${DEFAULT_EXCLUSIONS}\n`);
    expect(example).toMatch(/^#REDIRECT_TRAFFIC_EXCLUDE=-exclude-uid=consul -exclude-inbound-port=22,8300,8301,8302$/m);
  });

  const FLAGS = '-proxy-uid=envoy $REDIRECT_TRAFFIC_PROXY $REDIRECT_TRAFFIC_EXCLUDE $REDIRECT_TRAFFIC_HOST';
  /** The value of every `Key=` line of a unit, in order. */
  const valuesOf = (unit: string, key: string) =>
    [...unitText(unit).matchAll(new RegExp(`^${key}=(.*)$`, 'gm'))].map((m) => m[1] ?? '');

  it.each(redirectUnits)('%s: both units default the three variables alike, so one environment file serves both', (unit) => {
    const text = unitText(unit);
    expect(defaultOf(unit, 'REDIRECT_TRAFFIC_PROXY')).toBe('-proxy-id=%i-sidecar-proxy -wait=60s');
    expect(defaultOf(unit, 'REDIRECT_TRAFFIC_HOST')).toBe('');
    // The file may replace the defaults only if it is read after them.
    expect(text.indexOf('EnvironmentFile=')).toBeGreaterThan(text.indexOf('Environment="REDIRECT_TRAFFIC_EXCLUDE='));
    expect(valuesOf(unit, 'EnvironmentFile')).toEqual(['-/etc/consul.d/redirect-traffic.env']);
  });

  it('redirect-traffic@.service: a long-running watch, ready once applied; cleanup after it has stopped, with the same variables', () => {
    const unit = 'redirect-traffic@.service';
    expect(valuesOf(unit, 'Type')).toEqual(['notify']);
    // READY=1 comes from systemd-notify, a child of watch.
    expect(valuesOf(unit, 'NotifyAccess')).toEqual(['all']);
    expect(valuesOf(unit, 'RemainAfterExit')).toEqual([]);
    expect(valuesOf(unit, 'ExecStart')).toEqual([`/usr/bin/redirect-traffic watch ${FLAGS}`]);
    // Not ExecStop=: that runs while watch lives, and watch would put the rules back as a repair.
    expect(valuesOf(unit, 'ExecStop')).toEqual([]);
    expect(valuesOf(unit, 'ExecStopPost')).toEqual(['-/usr/bin/redirect-traffic cleanup $REDIRECT_TRAFFIC_HOST']);
    expect(valuesOf(unit, 'Restart')).toEqual(['on-failure']);
    expect(valuesOf(unit, 'RestartSec')).toEqual(['5']);
    // A bad flag (64) and another watch on the namespace (78) do not get better by retrying.
    expect(valuesOf(unit, 'RestartPreventExitStatus')).toEqual(['64 78']);
    // -wait=60s + 20 s namespace lock + 30 s of writes fit before systemd gives up on READY=1.
    expect(valuesOf(unit, 'TimeoutStartSec')).toEqual(['120']);
    expect(valuesOf(unit, 'TimeoutStopSec')).toEqual(['60']);
  });

  it('envoy-sidecar@.service: pulls in the watch, verifies before Envoy starts, leaves the rules to the watch unit', () => {
    const unit = 'envoy-sidecar@.service';
    expect(valuesOf(unit, 'Requires')).toEqual(['redirect-traffic@%i.service']);
    expect(valuesOf(unit, 'After')).toContain('redirect-traffic@%i.service');
    expect(valuesOf(unit, 'PropagatesStopTo')).toEqual(['redirect-traffic@%i.service']);
    // Root ("!") inside the sandbox, the same flags as the watch's apply.
    expect(valuesOf(unit, 'ExecStartPre')).toEqual([`!/usr/bin/redirect-traffic verify ${FLAGS}`]);
    // No apply or cleanup of its own: the watch unit owns the rules.
    const hooks = [...valuesOf(unit, 'ExecStartPre'), ...valuesOf(unit, 'ExecStartPost'), ...valuesOf(unit, 'ExecStop'), ...valuesOf(unit, 'ExecStopPost')];
    expect(hooks.filter((line) => /redirect-traffic (?!verify)/.test(line))).toEqual([]);
    // verify's client half switches to an ordinary UID (setgroups/setgid/setuid) as root.
    expect(valuesOf(unit, 'CapabilityBoundingSet').join(' ').split(' ')).toEqual(expect.arrayContaining(['CAP_SETUID', 'CAP_SETGID', 'CAP_NET_ADMIN']));
  });

  it('documents the same metrics drop-in in the README and the environment example', () => {
    const example = readFileSync(join(UNIT_DIR, 'redirect-traffic.env.example'), 'utf8');
    const execStart = `ExecStart=/usr/bin/redirect-traffic watch -proxy-uid=envoy -metrics-file=/var/lib/prometheus/node-exporter/redirect_traffic.prom $REDIRECT_TRAFFIC_PROXY $REDIRECT_TRAFFIC_EXCLUDE $REDIRECT_TRAFFIC_HOST`;
    for (const line of [execStart, 'ReadWritePaths=/var/lib/prometheus/node-exporter']) {
      expect(README).toContain(`\n${line}\n`);
      expect(example).toContain(`#   ${line}\n`);
    }
  });

  it.each(redirectUnits)('%s: the redirect-traffic hooks never run outside the sandbox ("+")', (unit) => {
    const prefixes = [...unitText(unit).matchAll(EXEC_LINE)].filter((m) => m[3] === INSTALLED_BINARY).map((m) => m[2]);
    expect(prefixes.length).toBeGreaterThan(0);
    for (const prefix of prefixes) expect(prefix, unit).not.toContain('+');
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

  it.each(Object.keys(MAX_EXPOSURE))('%s: systemd-analyze security rates it within its limit', (unit) => {
    const limit = MAX_EXPOSURE[unit] ?? 0;
    const target = stageUnit(unit);
    // --threshold is in tenths: the command itself fails above the limit, and the figure is checked too.
    const result = spawnSync(
      'systemd-analyze',
      ['security', '--offline=true', `--threshold=${Math.round(limit * 10)}`, '--no-pager', target],
      { cwd: workDir, encoding: 'utf8' },
    );
    const report = `exit ${result.status}\nstdout:\n${result.stdout}\nstderr:\n${result.stderr}`;
    const exposure = /Overall exposure level for \S+: (\d+\.\d)/.exec(result.stdout)?.[1];
    expect(exposure, report).toBeDefined();
    expect(Number(exposure), report).toBeLessThanOrEqual(limit);
    expect(result.status, report).toBe(0);
  });

  it.each(unitNames)('%s: no errors, no warnings', (unit) => {
    const target = stageUnit(unit);
    const result = spawnSync('systemd-analyze', ['verify', '--man=no', target], { cwd: workDir, encoding: 'utf8' });
    const report = `exit ${result.status}\nstdout:\n${result.stdout}\nstderr:\n${result.stderr}`;
    expect(result.error, report).toBeUndefined();
    expect(result.stderr, report).toBe('');
    expect(result.status, report).toBe(0);
  });
});
