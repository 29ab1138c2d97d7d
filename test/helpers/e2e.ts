import { spawnSync } from 'node:child_process';
import { accessSync, constants, mkdirSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import {
  createNamespace,
  createTopology,
  deleteAllNamespaces,
  deleteNamespace,
  removeStaleNamespaces,
  runCommand,
  type Netns,
  type Topology,
} from './netns.ts';
import { PYTHON, stopServers } from './traffic.ts';

// End-to-end plumbing: gating on root and the tools, running the built CLI, reading iptables state, and
// installing rules the way `consul connect redirect-traffic` does (one iptables process per rule).

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const CLI = join(ROOT, 'bin/redirect-traffic');
const DIST = join(ROOT, 'dist');
const CLI_TIMEOUT_MS = 45_000;

const SYSTEM_DIRS = ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin'];

/** A program's file on PATH or in the system directories. */
export function findProgram(name: string): string | undefined {
  if (name.startsWith('/')) return isExecutable(name) ? name : undefined;
  const dirs = [...(process.env['PATH'] ?? '').split(delimiter).filter(Boolean), ...SYSTEM_DIRS];
  return dirs.map((dir) => join(dir, name)).find(isExecutable);
}

function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** Programs every end-to-end test needs. */
const BASE_REQUIREMENTS = ['ip', 'nsenter', 'iptables', 'ip6tables', 'iptables-save', 'ip6tables-save', PYTHON];

/** What keeps the end-to-end tests from running here, or an empty list. */
export function missingPrerequisites(extraPrograms: readonly string[] = []): string[] {
  const missing: string[] = [];
  if (process.platform !== 'linux') missing.push(`Linux (this is ${process.platform})`);
  if (process.getuid?.() !== 0) missing.push(`root (running as uid ${process.getuid?.() ?? '?'})`);
  for (const program of [...BASE_REQUIREMENTS, ...extraPrograms]) {
    if (!findProgram(program)) missing.push(`program ${program}`);
  }
  if (missing.length === 0 && !canCreateNamespaces()) missing.push('a working `ip netns add` (CAP_SYS_ADMIN, a writable /run/netns)');
  return missing;
}

let namespacesWork: boolean | undefined;

/** Whether `ip netns add` works here (a container may lack the privilege); checked once per process. */
function canCreateNamespaces(): boolean {
  if (namespacesWork === undefined) {
    const name = `rt-e2e-${process.pid}-0-probe`;
    const add = spawnSync('ip', ['netns', 'add', name], { timeout: 10_000, stdio: 'ignore' });
    namespacesWork = add.status === 0;
    if (namespacesWork) spawnSync('ip', ['netns', 'del', name], { timeout: 10_000, stdio: 'ignore' });
  }
  return namespacesWork;
}

/**
 * `describe` for end-to-end tests. Runs `fn` only as root with the tools installed, cleaning up this
 * file's namespaces and listeners afterwards. Otherwise it says so loudly and skips, except under
 * CI=true, where a test that cannot run is a failure.
 */
export function describeE2E(name: string, fn: () => void, options: { requires?: readonly string[] } = {}): void {
  const missing = missingPrerequisites(options.requires);
  if (missing.length > 0) {
    const banner = [
      '',
      '='.repeat(78),
      `END-TO-END TESTS "${name}" CANNOT RUN: missing ${missing.join(', ')}.`,
      'They need root, iptables (nft and legacy), nft (nftables), iproute2 (ip netns), nsenter and /usr/bin/python3.',
      process.env['CI'] === 'true' ? 'CI=true: this is a FAILURE, not a skip.' : 'SKIPPED. Run them as root (e.g. sudo npx vitest run test/e2e).',
      '='.repeat(78),
      '',
    ].join('\n');
    console.warn(banner);
    if (process.env['CI'] === 'true') {
      describe(name, () => {
        it('has what end-to-end tests need (root, iptables, ip netns)', () => {
          throw new Error(`end-to-end tests cannot run: missing ${missing.join(', ')}`);
        });
      });
    } else {
      describe.skip(name, fn);
    }
    return;
  }
  describe(name, () => {
    beforeAll(async () => {
      await removeStaleNamespaces();
      await ensureBuilt();
    });
    afterAll(async () => {
      await stopServers();
      await deleteAllNamespaces();
    });
    fn();
  });
}

/** A namespace deleted when the current test ends, pass or fail. */
export async function testNamespace(role = 'vm'): Promise<Netns> {
  const ns = await createNamespace(role);
  onTestFinished(() => deleteNamespace(ns.name));
  return ns;
}

/** A VM/PEER pair deleted when the current test ends, pass or fail. */
export async function testTopology(): Promise<Topology> {
  const topology = await createTopology();
  onTestFinished(async () => {
    await stopServers([topology.vm, topology.peer]);
    await deleteNamespace(topology.vm.name);
    await deleteNamespace(topology.peer.name);
  });
  return topology;
}

// ---------------------------------------------------------------------------------------------------
// The CLI

function newestMtime(path: string): number {
  const stats = statSync(path, { throwIfNoEntry: false });
  if (!stats?.isDirectory()) return stats?.mtimeMs ?? 0;
  return Math.max(0, ...readdirSync(path).map((entry) => newestMtime(join(path, entry))));
}

/** True when dist/ is missing or older than the sources or the build script. */
function bundleIsStale(): boolean {
  const built = newestMtime(DIST);
  return built === 0 || built < Math.max(newestMtime(join(ROOT, 'src')), newestMtime(join(ROOT, 'build.mjs')));
}

/** Rebuilds dist/ when src is newer, one builder at a time across test workers. */
async function ensureBuilt(): Promise<void> {
  if (!bundleIsStale()) return;
  const lock = join(tmpdir(), 'redirect-traffic-e2e-build.lock');
  const deadline = Date.now() + 60_000;
  for (;;) {
    try {
      mkdirSync(lock);
      break;
    } catch {
      if (Date.now() > deadline) throw new Error(`could not take the build lock ${lock}`);
      // A lock older than two minutes belongs to a crashed run.
      if (Date.now() - statSync(lock, { throwIfNoEntry: false })!.mtimeMs > 120_000) rmSync(lock, { recursive: true, force: true });
      await sleep(200);
    }
  }
  try {
    if (!bundleIsStale()) return;
    const result = await runCommand(process.execPath, [join(ROOT, 'build.mjs')], { timeoutMs: 60_000 });
    if (result.exitCode !== 0) throw new Error(`npm run build failed: ${result.stderr}`);
  } finally {
    rmSync(lock, { recursive: true, force: true });
  }
}

export interface CliResult {
  exitCode: number;
  stdout: string;
  stderr: string;
  /** Non-empty stderr lines. */
  stderrLines: string[];
}

/**
 * Runs bin/redirect-traffic with a clean environment (no SSH_CONNECTION, no colour) plus `env`. Never
 * throws for a non-zero exit.
 */
export async function runCli(args: readonly string[], options: { env?: Record<string, string> } = {}): Promise<CliResult> {
  const env: Record<string, string> = {
    PATH: process.env['PATH'] ?? SYSTEM_DIRS.join(delimiter),
    HOME: process.env['HOME'] ?? '/root',
    NO_COLOR: '1',
    ...options.env,
  };
  const result = await runCommand(process.execPath, [CLI, ...args], { env, timeoutMs: CLI_TIMEOUT_MS });
  return { ...result, stderrLines: result.stderr.split('\n').filter((line) => line.trim() !== '') };
}

/** Describes a CLI run for assertion messages. */
export const describeRun = (args: readonly string[], result: CliResult) =>
  `redirect-traffic ${args.join(' ')}\nexit ${result.exitCode}\nstdout: ${result.stdout}\nstderr: ${result.stderr}`;

/**
 * Runs the CLI expecting it to fail and change nothing: exit `code` (any non-zero when omitted), nothing
 * on stdout, exactly one error line on stderr (warnings, when allowed, aside), every table of `ns` as before.
 */
export async function expectFailureChangesNothing(
  ns: Netns,
  args: readonly string[],
  options: { code?: number; env?: Record<string, string>; allowWarnings?: boolean } = {},
): Promise<CliResult> {
  const before = await saveEverything(ns);
  const result = await runCli(args, options.env ? { env: options.env } : {});
  const context = describeRun(args, result);
  if (options.code === undefined) expect(result.exitCode, context).not.toBe(0);
  else expect(result.exitCode, context).toBe(options.code);
  expect(result.stdout, context).toBe('');
  const errors = options.allowWarnings ? result.stderrLines.filter((line) => !/^redirect-traffic: warning: /.test(line)) : result.stderrLines;
  expect(errors, context).toHaveLength(1);
  expect(await saveEverything(ns)).toEqual(before);
  // Nothing left running in it either: no shell or program outlives a failed run.
  expect(await ns.processes(), context).toEqual([]);
  return result;
}

/**
 * Other software's rules: nat OUTPUT/PREROUTING/POSTROUTING rules, a nat chain of its own with a jump
 * into it, filter rules, and IPv6 ones.
 */
export async function addForeignRules(ns: Netns): Promise<void> {
  const rules: [string, ...string[]][] = [
    ['iptables', '-t', 'nat', '-A', 'OUTPUT', '-d', '198.18.7.7/32', '-p', 'tcp', '-j', 'RETURN'],
    ['iptables', '-t', 'nat', '-A', 'PREROUTING', '-s', '198.18.7.0/24', '-p', 'tcp', '-j', 'RETURN'],
    ['iptables', '-t', 'nat', '-N', 'FOREIGN_NAT'],
    ['iptables', '-t', 'nat', '-A', 'FOREIGN_NAT', '-d', '198.18.7.8/32', '-j', 'RETURN'],
    ['iptables', '-t', 'nat', '-A', 'OUTPUT', '-j', 'FOREIGN_NAT'],
    ['iptables', '-t', 'nat', '-A', 'POSTROUTING', '-s', '198.18.7.0/24', '-j', 'MASQUERADE'],
    ['iptables', '-A', 'INPUT', '-s', '198.18.7.7/32', '-j', 'DROP'],
    ['ip6tables', '-t', 'nat', '-A', 'OUTPUT', '-d', '2001:db8:7::7/128', '-p', 'tcp', '-j', 'RETURN'],
    ['ip6tables', '-A', 'INPUT', '-s', '2001:db8:7::7/128', '-j', 'DROP'],
  ];
  for (const [program, ...args] of rules) await ns.must(program, ...args);
}

/** Runs the CLI and fails the test, with its output, unless it exits with `expected`. */
export async function cli(args: readonly string[], expected = 0, options: { env?: Record<string, string> } = {}): Promise<CliResult> {
  const result = await runCli(args, options);
  expect(result.exitCode, describeRun(args, result)).toBe(expected);
  return result;
}

// ---------------------------------------------------------------------------------------------------
// Flags, in both the CLI's consul-style form and as Consul's own per-rule commands

export interface RedirectFlags {
  proxyUid: number;
  inboundPort: number;
  outboundPort?: number;
  excludeInboundPorts?: readonly string[];
  excludeOutboundPorts?: readonly string[];
  excludeOutboundCidrs?: readonly string[];
  excludeUids?: readonly number[];
  dnsIp?: string;
  dnsPort?: number;
  dualStack?: boolean;
}

/** The flags as a consul-style command line (`-proxy-uid=1234 ...`), one flag per repeated value. */
export function cliFlags(flags: RedirectFlags): string[] {
  const args = [`-proxy-uid=${flags.proxyUid}`, `-proxy-inbound-port=${flags.inboundPort}`];
  if (flags.outboundPort !== undefined) args.push(`-proxy-outbound-port=${flags.outboundPort}`);
  for (const port of flags.excludeInboundPorts ?? []) args.push(`-exclude-inbound-port=${port}`);
  for (const port of flags.excludeOutboundPorts ?? []) args.push(`-exclude-outbound-port=${port}`);
  for (const cidr of flags.excludeOutboundCidrs ?? []) args.push(`-exclude-outbound-cidr=${cidr}`);
  for (const uid of flags.excludeUids ?? []) args.push(`-exclude-uid=${uid}`);
  if (flags.dnsIp !== undefined) args.push(`-consul-dns-ip=${flags.dnsIp}`);
  if (flags.dnsPort !== undefined) args.push(`-consul-dns-port=${flags.dnsPort}`);
  if (flags.dualStack) args.push('-dual-stack');
  return args;
}

/** `redirect-traffic -netns <ns> <flags>` arguments. */
export const applyArgs = (ns: Netns, flags: RedirectFlags, ...extra: string[]) => ['-netns', ns.path, ...cliFlags(flags), ...extra];

/**
 * The iptables argument lists `consul connect redirect-traffic` runs for these flags, one process each,
 * in its order (reference §3.2 and §3.3, classic IPv4 setup).
 */
export function consulCommands(flags: RedirectFlags): string[][] {
  const nat = (...args: string[]) => ['-t', 'nat', ...args];
  const commands: string[][] = [
    'CONSUL_PROXY_INBOUND',
    'CONSUL_PROXY_IN_REDIRECT',
    'CONSUL_PROXY_OUTPUT',
    'CONSUL_PROXY_REDIRECT',
    'CONSUL_DNS_REDIRECT',
  ].map((chain) => nat('-N', chain));
  commands.push(nat('-A', 'CONSUL_PROXY_REDIRECT', '-p', 'tcp', '-j', 'REDIRECT', '--to-port', String(flags.outboundPort ?? 15001)));
  if (flags.dnsPort !== undefined) {
    const ip = flags.dnsIp ?? '127.0.0.1';
    for (const proto of ['udp', 'tcp']) {
      commands.push(nat('-A', 'CONSUL_DNS_REDIRECT', '-p', proto, '-d', ip, '--dport', '53', '-j', 'DNAT', '--to-destination', `${ip}:${flags.dnsPort}`));
    }
    for (const proto of ['udp', 'tcp']) commands.push(nat('-A', 'OUTPUT', '-p', proto, '-d', ip, '--dport', '53', '-j', 'CONSUL_DNS_REDIRECT'));
  } else if (flags.dnsIp !== undefined) {
    for (const proto of ['udp', 'tcp']) {
      commands.push(nat('-A', 'CONSUL_DNS_REDIRECT', '-p', proto, '--dport', '53', '-j', 'DNAT', '--to-destination', flags.dnsIp));
    }
    for (const proto of ['udp', 'tcp']) commands.push(nat('-A', 'OUTPUT', '-p', proto, '--dport', '53', '-j', 'CONSUL_DNS_REDIRECT'));
  }
  commands.push(
    nat('-A', 'OUTPUT', '-p', 'tcp', '-j', 'CONSUL_PROXY_OUTPUT'),
    nat('-A', 'CONSUL_PROXY_OUTPUT', '-m', 'owner', '--uid-owner', String(flags.proxyUid), '-j', 'RETURN'),
    nat('-A', 'CONSUL_PROXY_OUTPUT', '-d', '127.0.0.1/32', '-j', 'RETURN'),
    nat('-A', 'CONSUL_PROXY_OUTPUT', '-j', 'CONSUL_PROXY_REDIRECT'),
  );
  for (const port of flags.excludeOutboundPorts ?? []) {
    commands.push(nat('-I', 'CONSUL_PROXY_OUTPUT', '-p', 'tcp', '--dport', port, '-j', 'RETURN'));
  }
  for (const cidr of flags.excludeOutboundCidrs ?? []) commands.push(nat('-I', 'CONSUL_PROXY_OUTPUT', '-d', cidr, '-j', 'RETURN'));
  for (const uid of flags.excludeUids ?? []) {
    commands.push(nat('-I', 'CONSUL_PROXY_OUTPUT', '-m', 'owner', '--uid-owner', String(uid), '-j', 'RETURN'));
  }
  commands.push(
    nat('-A', 'CONSUL_PROXY_IN_REDIRECT', '-p', 'tcp', '-j', 'REDIRECT', '--to-port', String(flags.inboundPort)),
    nat('-A', 'PREROUTING', '-p', 'tcp', '-j', 'CONSUL_PROXY_INBOUND'),
    nat('-A', 'CONSUL_PROXY_INBOUND', '-p', 'tcp', '-j', 'CONSUL_PROXY_IN_REDIRECT'),
  );
  for (const port of flags.excludeInboundPorts ?? []) {
    commands.push(nat('-I', 'CONSUL_PROXY_INBOUND', '-p', 'tcp', '--dport', port, '-j', 'RETURN'));
  }
  return commands;
}

/** Installs the rules as Consul does: one `iptables` (or `iptables-legacy`) process per rule. */
export async function installConsulStyle(ns: Netns, flags: RedirectFlags, program = 'iptables'): Promise<void> {
  for (const args of consulCommands(flags)) await ns.must(program, ...args);
}

// ---------------------------------------------------------------------------------------------------
// Reading iptables state

export type Backend = 'nft' | 'legacy';
export type Family = 4 | 6;

const tool = (family: Family, backend: Backend, suffix = '') => `${family === 4 ? 'iptables' : 'ip6tables'}-${backend}${suffix}`;

/** Drops comment lines and zeroes counters, so two saves of the same rules compare equal. */
export function normaliseSave(text: string): string {
  return text
    .split('\n')
    .filter((line) => !line.startsWith('#') && line.trim() !== '')
    .map((line) => line.replace(/\[\d+:\d+\]/g, '[0:0]'))
    .join('\n');
}

/** `iptables-save` (all tables, or one) of one backend and family, normalised. */
export async function save(ns: Netns, options: { family?: Family; backend?: Backend; table?: string } = {}): Promise<string> {
  const args = options.table ? ['-t', options.table] : [];
  return normaliseSave(await ns.must(tool(options.family ?? 4, options.backend ?? 'nft', '-save'), ...args));
}

/** Every table of both families in both backends: anything at all an operation could have changed. */
export async function saveEverything(ns: Netns): Promise<Record<string, string>> {
  const state: Record<string, string> = {};
  for (const backend of ['nft', 'legacy'] as const) {
    for (const family of [4, 6] as const) {
      if (findProgram(tool(family, backend, '-save'))) state[tool(family, backend)] = await save(ns, { family, backend });
    }
  }
  return state;
}

/** `iptables -t nat -S` of one backend and family. */
export async function natRules(ns: Netns, options: { family?: Family; backend?: Backend } = {}): Promise<string> {
  return ns.must(tool(options.family ?? 4, options.backend ?? 'nft'), '-t', 'nat', '-S');
}

/** How many rules of `-S`/save output are exactly `rule` (e.g. `-A OUTPUT -p tcp -j CONSUL_PROXY_OUTPUT`). */
export const countRule = (rules: string, rule: string) => rules.split('\n').filter((line) => line.trim() === rule).length;

/** The hook jumps a base ruleset has; after any apply each must appear exactly once. */
export const HOOK_JUMPS = ['-A OUTPUT -p tcp -j CONSUL_PROXY_OUTPUT', '-A PREROUTING -p tcp -j CONSUL_PROXY_INBOUND'];

export const holdsOurChains = (rules: string) => /CONSUL_/.test(rules);

/** Status arguments for the same flags as an apply. */
export const statusArgs = (ns: Netns, flags: RedirectFlags, ...extra: string[]) => ['status', ...applyArgs(ns, flags), ...extra];
