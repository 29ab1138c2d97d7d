import { lstatSync, mkdirSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { escapeLabelValue, renderMetrics, type MetricsSnapshot } from '../../src/core/metrics.ts';
import { ExitCode } from '../../src/errors.ts';
import { checkMetricsPath, writeMetricsFile } from '../../src/host/metricsFile.ts';
import { scratchDir } from '../helpers/fakes.ts';

const snapshot = (overrides: Partial<MetricsSnapshot> = {}): MetricsSnapshot => ({
  inSync: true,
  installed: true,
  repairs: 2,
  lastCheckMs: 1_733_000_000_123,
  tables: [
    {
      backend: 'nftables',
      table: 'inet consul_tproxy',
      summary: { chains: { CONSUL_PROXY_OUTPUT: 4, CONSUL_NAT_OUTPUT: 2 }, hooks: ['a', 'b'], rules: 6, sets: { excluded_v4: 3 } },
    },
    { backend: 'iptables-nft', table: 'IPv4', summary: { chains: { CONSUL_PROXY_INBOUND: 1 }, hooks: ['-A PREROUTING -p tcp -j CONSUL_PROXY_INBOUND'], rules: 2 } },
  ],
  ...overrides,
});

// The text exposition format, version 0.0.4: https://prometheus.io/docs/instrumenting/exposition_formats/
const NAME = '[a-zA-Z_:][a-zA-Z0-9_:]*';
const LABEL = `[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\\\\n]|\\\\[\\\\"n])*"`;
const SAMPLE = new RegExp(`^(${NAME})(\\{${LABEL}(?:,${LABEL})*\\})? (-?[0-9.e+]+|NaN|[+-]Inf)$`);

/** Checks every line against the format: HELP and TYPE once per family, before its samples, samples grouped. */
function parseExposition(text: string) {
  expect(text.endsWith('\n')).toBe(true);
  const families = new Map<string, { help?: string | undefined; type?: string | undefined; samples: string[] }>();
  let current: string | undefined;
  for (const line of text.slice(0, -1).split('\n')) {
    const meta = /^# (HELP|TYPE) (\S+) (.*)$/.exec(line);
    if (meta) {
      const [, kind, name = '', rest] = meta;
      expect(name).toMatch(new RegExp(`^${NAME}$`));
      const family = families.get(name) ?? { samples: [] };
      expect(family.samples, `${kind} of ${name} after its samples`).toEqual([]);
      if (kind === 'HELP') family.help = rest;
      else family.type = rest;
      families.set(name, family);
      current = name;
      continue;
    }
    const sample = SAMPLE.exec(line);
    expect(sample, `not a sample line: ${line}`).not.toBeNull();
    expect(sample?.[1], 'samples of one family are together, after its HELP and TYPE').toBe(current);
    families.get(current ?? '')?.samples.push(line);
  }
  for (const [name, family] of families) {
    expect(family.help, name).toBeDefined();
    expect(['gauge', 'counter']).toContain(family.type);
    if (family.type === 'counter') expect(name).toMatch(/_total$/);
  }
  return families;
}

describe('renderMetrics', () => {
  it('writes each family with HELP and TYPE, in the text format', () => {
    const text = renderMetrics(snapshot({ lastRepairMs: 1_733_000_000_000, agentUp: false }));
    const families = parseExposition(text);
    expect([...families.keys()]).toEqual([
      'redirect_traffic_in_sync',
      'redirect_traffic_installed',
      'redirect_traffic_repairs_total',
      'redirect_traffic_last_check_timestamp_seconds',
      'redirect_traffic_last_repair_timestamp_seconds',
      'redirect_traffic_agent_up',
      'redirect_traffic_rules',
      'redirect_traffic_hook_rules',
      'redirect_traffic_set_elements',
    ]);
    expect(text).toContain('# TYPE redirect_traffic_repairs_total counter\nredirect_traffic_repairs_total 2\n');
    expect(text).toContain('redirect_traffic_in_sync 1\n');
    expect(text).toContain('redirect_traffic_last_check_timestamp_seconds 1733000000.123\n');
    expect(text).toContain('redirect_traffic_agent_up 0\n');
    expect(text).toContain('redirect_traffic_rules{backend="nftables",table="inet consul_tproxy",chain="CONSUL_PROXY_OUTPUT"} 4\n');
    expect(text).toContain('redirect_traffic_rules{backend="iptables-nft",table="IPv4",chain="CONSUL_PROXY_INBOUND"} 1\n');
    expect(text).toContain('redirect_traffic_hook_rules{backend="iptables-nft",table="IPv4"} 1\n');
    expect(text).toContain('redirect_traffic_set_elements{backend="nftables",table="inet consul_tproxy",set="excluded_v4"} 3\n');
  });

  it('leaves out what it does not know: status has no repairs counter, an uncompared status no in_sync', () => {
    const text = renderMetrics(snapshot({ repairs: undefined, inSync: undefined, tables: [] }));
    parseExposition(text);
    expect(text).not.toContain('redirect_traffic_repairs_total');
    expect(text).not.toContain('redirect_traffic_in_sync');
    expect(text).not.toContain('redirect_traffic_rules');
    expect(text).toContain('redirect_traffic_installed 1\n');
  });

  it('escapes label values: backslash, double quote and line feed', () => {
    expect(escapeLabelValue('a\\b"c\nd')).toBe('a\\\\b\\"c\\nd');
    const text = renderMetrics(
      snapshot({ tables: [{ backend: 'nftables', table: 'inet "x"\\y\nz', summary: { chains: { 'C"1': 1 }, hooks: [], rules: 1 } }] }),
    );
    parseExposition(text);
    expect(text).toContain('redirect_traffic_rules{backend="nftables",table="inet \\"x\\"\\\\y\\nz",chain="C\\"1"} 1\n');
  });

  it('is 0 for out of sync and for no rules installed', () => {
    const text = renderMetrics(snapshot({ inSync: false, installed: false, tables: [] }));
    expect(text).toContain('redirect_traffic_in_sync 0\n');
    expect(text).toContain('redirect_traffic_installed 0\n');
  });
});

describe('the metrics file', () => {
  const scratch = scratchDir('redirect-traffic-metrics-');
  afterAll(() => scratch.remove());

  it('is replaced whole by a rename, mode 0644 whatever the umask, leaving no temporary file', () => {
    const path = join(scratch.dir, 'redirect_traffic.prom');
    const old = process.umask(0o077);
    try {
      writeMetricsFile(path, 'a 1\n');
      const inode = lstatSync(path).ino;
      writeMetricsFile(path, 'a 2\n');
      expect(readFileSync(path, 'utf8')).toBe('a 2\n');
      expect(lstatSync(path).mode & 0o777).toBe(0o644);
      // A new inode: renamed over, never rewritten in place (a reader never sees half a file).
      expect(lstatSync(path).ino).not.toBe(inode);
    } finally {
      process.umask(old);
    }
    expect(readdirSync(scratch.dir).filter((name) => name.includes('.tmp'))).toEqual([]);
  });

  it('replaces a temporary file a crashed run with this PID left', () => {
    const path = join(scratch.dir, 'left.prom');
    writeFileSync(join(scratch.dir, `.left.prom.${process.pid}.tmp`), 'stale');
    writeMetricsFile(path, 'b 1\n');
    expect(readFileSync(path, 'utf8')).toBe('b 1\n');
  });

  it('refuses a path that is a symbolic link, a directory, or in a directory that does not exist', () => {
    const target = scratch.write('target', 'keep');
    const link = join(scratch.dir, 'link.prom');
    symlinkSync(target, link);
    const directory = join(scratch.dir, 'dir.prom');
    mkdirSync(directory);
    expect(() => checkMetricsPath(link)).toThrow(/-metrics-file: is a symbolic link/);
    expect(() => checkMetricsPath(directory)).toThrow(/is a directory/);
    expect(() => checkMetricsPath(join(scratch.dir, 'nope', 'x.prom'))).toThrow(/its directory .*nope does not exist/);
    expect(() => checkMetricsPath(join(scratch.dir, 'fine.prom'))).not.toThrow();
    // And when writing, should one appear after the start: never written through.
    expect(() => writeMetricsFile(link, 'x 1\n')).toThrow(expect.objectContaining({ exitCode: ExitCode.cantCreate }));
    expect(readFileSync(target, 'utf8')).toBe('keep');
    try {
      checkMetricsPath(link);
    } catch (error) {
      expect((error as { exitCode: number }).exitCode).toBe(ExitCode.usage);
    }
  });

  it('refuses a directory reached through a symbolic link: its owner would choose where root writes', () => {
    const elsewhere = join(scratch.dir, 'root-only');
    mkdirSync(elsewhere);
    const linkedDirectory = join(scratch.dir, 'users-link');
    symlinkSync(elsewhere, linkedDirectory);
    const path = join(linkedDirectory, 'redirect_traffic.prom');
    expect(() => checkMetricsPath(path)).toThrow(/reached through a symbolic link; name the real one/);
    expect(() => writeMetricsFile(path, 'x 1\n')).toThrow(expect.objectContaining({ exitCode: ExitCode.cantCreate }));
    expect(readdirSync(elsewhere)).toEqual([]);
  });
});
