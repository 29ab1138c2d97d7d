// `npm run bench` (as root): how long redirect-traffic takes next to the least any iptables-restore based tool
// can take (the floor) and next to Consul's one-iptables-process-per-rule method, medians of interleaved runs.
// Everything iptables happens inside a network namespace this script creates and deletes; the host's own
// namespace is never touched. Usage: node bench/run.mjs [--runs 15] [--per-rule-runs-10k 3] [--inherit-env]
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, release, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const TOOL = fileURLToPath(new URL('../bin/redirect-traffic', import.meta.url));
/** The PATH systemd gives services (systemd.exec(5)), plus wherever this node lives. */
const SERVICE_PATH = `${dirname(process.execPath)}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`;

const { values: cli } = parseArgs({
  options: {
    runs: { type: 'string', default: '15' },
    'per-rule-runs-10k': { type: 'string', default: '3' },
    'inherit-env': { type: 'boolean', default: false },
    help: { type: 'boolean', default: false },
  },
});
if (cli.help) {
  console.log(`usage: node bench/run.mjs [--runs N] [--per-rule-runs-10k N] [--inherit-env]
  --runs N               timed runs per method and size (default 15)
  --per-rule-runs-10k N  Consul's per-rule method takes ~40 s per run at 10,000 CIDRs; time it this often (default 3)
  --inherit-env          give children this shell's environment instead of systemd's (PATH only)`);
  process.exit(0);
}
const RUNS = positiveInteger('--runs', cli.runs);
const PER_RULE_RUNS_10K = positiveInteger('--per-rule-runs-10k', cli['per-rule-runs-10k']);

function positiveInteger(flag, text) {
  const value = Number(text);
  if (!Number.isInteger(value) || value < 1) throw new Error(`${flag} must be a positive integer, not ${text}`);
  return value;
}

// Children see what a systemd unit sees by default. This matters: NODE_EXTRA_CA_CERTS, for one, makes every
// node start-up read a CA bundle (~50 ms here), which would flatter every ratio against `node -e 0`.
const childEnv = cli['inherit-env'] ? withoutSshSession(process.env) : { PATH: SERVICE_PATH };

/** The namespace has no SSH; an inherited SSH_CONNECTION would only trigger the tool's SSH lock-out guard. */
function withoutSshSession(env) {
  const { SSH_CONNECTION: _connection, SSH_CLIENT: _client, ...rest } = env;
  return rest;
}

// --- running and timing processes (no shell) -----------------------------------------------------------

/** Runs argv to completion; throws with its output on a non-zero exit. */
function run(argv, input) {
  const result = spawnSync(argv[0], argv.slice(1), {
    input,
    env: childEnv,
    encoding: 'utf8',
    maxBuffer: 1 << 28,
    stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
  });
  if (result.error || result.status !== 0) {
    const detail = result.error?.message ?? `exit ${result.status}: ${result.stderr.trim().slice(0, 2000)}`;
    throw new Error(`${argv.slice(0, 6).join(' ')}${argv.length > 6 ? ' …' : ''} failed: ${detail}`);
  }
  return result.stdout;
}

/** Milliseconds argv takes, spawn to exit. */
function time(argv, input) {
  const start = process.hrtime.bigint();
  run(argv, input);
  return Number(process.hrtime.bigint() - start) / 1e6;
}

function median(samples) {
  const sorted = [...samples].sort((a, b) => a - b);
  const middle = sorted.length >> 1;
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

// --- the namespace ---------------------------------------------------------------------------------------

const NAMESPACE = `rt-bench-${process.pid}`;
const NAMESPACE_PATH = `/var/run/netns/${NAMESPACE}`;
const inNamespace = (...argv) => ['nsenter', `--net=${NAMESPACE_PATH}`, '--', ...argv];

/** Back to an empty nat table (our own namespace, so flushing everything is safe). Untimed. */
function resetNatTable() {
  run(inNamespace('iptables', '-t', 'nat', '-F'));
  run(inNamespace('iptables', '-t', 'nat', '-X'));
}

/** The nat table as `-S` lines, chains sorted by name so creation order does not matter, rule order does. */
function natTableRules() {
  const byChain = new Map();
  for (const line of run(inNamespace('iptables', '-t', 'nat', '-S')).split('\n').filter(Boolean)) {
    const chain = line.split(' ')[1];
    byChain.set(chain, [...(byChain.get(chain) ?? []), line]);
  }
  return [...byChain.keys()].sort().flatMap((chain) => byChain.get(chain));
}

// --- what is installed -----------------------------------------------------------------------------------

/** A typical VM sidecar: Envoy's UID and port, root (the Consul agent) and SSH excluded, some CIDRs. */
function scenario(label, cidrs) {
  return {
    label,
    proxyUid: '101',
    inboundPort: '20000',
    outboundPort: '15001',
    excludeUids: ['0'],
    excludeInboundPorts: ['22'],
    excludeOutboundPorts: [],
    excludeOutboundCidrs: cidrs,
  };
}

/** Distinct /32s inside 198.18.0.0/15 (RFC 2544 benchmarking space). */
function benchmarkCidrs(count) {
  return Array.from({ length: count }, (_, i) => `198.${18 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}/32`);
}

/** redirect-traffic's flags for a scenario; long exclusion lists go through -config, as operators would. */
function toolFlags(setup, configDir) {
  const flags = [
    '-netns', NAMESPACE_PATH,
    `-proxy-uid=${setup.proxyUid}`,
    `-proxy-inbound-port=${setup.inboundPort}`,
    ...setup.excludeUids.map((uid) => `-exclude-uid=${uid}`),
    ...setup.excludeInboundPorts.map((port) => `-exclude-inbound-port=${port}`),
  ];
  if (setup.excludeOutboundCidrs.length <= 10) {
    return [...flags, ...setup.excludeOutboundCidrs.map((cidr) => `-exclude-outbound-cidr=${cidr}`)];
  }
  const configFile = join(configDir, `${setup.excludeOutboundCidrs.length}-cidrs.json`);
  writeFileSync(configFile, JSON.stringify({ 'exclude-outbound-cidr': setup.excludeOutboundCidrs }));
  return [...flags, '-config', configFile];
}

const CONSUL_CHAINS = ['CONSUL_PROXY_INBOUND', 'CONSUL_PROXY_IN_REDIRECT', 'CONSUL_PROXY_OUTPUT', 'CONSUL_PROXY_REDIRECT', 'CONSUL_DNS_REDIRECT'];

/**
 * `consul connect redirect-traffic`'s commands, in its order (consul-redirect-traffic.md §3.2): one `iptables`
 * process per rule, exclusions inserted at the top with -I after the defaults are appended.
 */
function consulPerRuleCommands(setup) {
  const nat = (...args) => ['iptables', '-t', 'nat', ...args];
  const returnFrom = (chain, ...match) => nat('-I', chain, ...match, '-j', 'RETURN');
  return [
    ...CONSUL_CHAINS.map((chain) => nat('-N', chain)),
    nat('-A', 'CONSUL_PROXY_REDIRECT', '-p', 'tcp', '-j', 'REDIRECT', '--to-port', setup.outboundPort),
    nat('-A', 'OUTPUT', '-p', 'tcp', '-j', 'CONSUL_PROXY_OUTPUT'),
    nat('-A', 'CONSUL_PROXY_OUTPUT', '-m', 'owner', '--uid-owner', setup.proxyUid, '-j', 'RETURN'),
    nat('-A', 'CONSUL_PROXY_OUTPUT', '-d', '127.0.0.1/32', '-j', 'RETURN'),
    nat('-A', 'CONSUL_PROXY_OUTPUT', '-j', 'CONSUL_PROXY_REDIRECT'),
    ...setup.excludeOutboundPorts.map((port) => returnFrom('CONSUL_PROXY_OUTPUT', '-p', 'tcp', '--dport', port)),
    ...setup.excludeOutboundCidrs.map((cidr) => returnFrom('CONSUL_PROXY_OUTPUT', '-d', cidr)),
    ...setup.excludeUids.map((uid) => returnFrom('CONSUL_PROXY_OUTPUT', '-m', 'owner', '--uid-owner', uid)),
    nat('-A', 'CONSUL_PROXY_IN_REDIRECT', '-p', 'tcp', '-j', 'REDIRECT', '--to-port', setup.inboundPort),
    nat('-A', 'PREROUTING', '-p', 'tcp', '-j', 'CONSUL_PROXY_INBOUND'),
    nat('-A', 'CONSUL_PROXY_INBOUND', '-p', 'tcp', '-j', 'CONSUL_PROXY_IN_REDIRECT'),
    ...setup.excludeInboundPorts.map((port) => returnFrom('CONSUL_PROXY_INBOUND', '-p', 'tcp', '--dport', port)),
  ].map((argv) => inNamespace(...argv));
}

// --- the methods -----------------------------------------------------------------------------------------

/** Each method records its time(s) in this round's record; every install starts from an empty nat table. */
function methodsFor(setup, configDir) {
  const flags = toolFlags(setup, configDir);
  const ruleset = run([TOOL, '--dry-run', ...flags]);
  const perRule = consulPerRuleCommands(setup);
  return {
    ruleCount: ruleset.split('\n').filter((line) => line.startsWith('-A ')).length,
    /** node -e 0 + iptables-save + iptables-restore: what any restore-based tool must at least spend. */
    floor(round) {
      resetNatTable();
      const node = time([process.execPath, '-e', '0']);
      const save = time(inNamespace('iptables-save', '-t', 'nat'));
      const restore = time(inNamespace('iptables-restore', '--noflush'), ruleset);
      round.floor = node + save + restore;
    },
    apply(round) {
      resetNatTable();
      round.apply = time([TOOL, ...flags]);
    },
    perRule(round) {
      resetNatTable();
      const start = process.hrtime.bigint();
      for (const argv of perRule) run(argv);
      round.perRule = Number(process.hrtime.bigint() - start) / 1e6;
    },
    /** Back to back with its own `node -e 0`, so both see the same machine load. */
    dryRun(round) {
      round.node = time([process.execPath, '-e', '0']);
      round.dryRun = time([TOOL, '--dry-run', ...flags]);
    },
    /** Untimed: all three install methods must leave the same table, or the comparison means nothing. */
    checkSameResult() {
      resetNatTable();
      run(inNamespace('iptables-restore', '--noflush'), ruleset);
      const floorTable = natTableRules();
      resetNatTable();
      const summary = run([TOOL, ...flags]).trim();
      const toolTable = natTableRules();
      resetNatTable();
      for (const argv of perRule) run(argv);
      const consulTable = natTableRules();
      for (const [name, table] of [['redirect-traffic', toolTable], ['Consul per-rule', consulTable]]) {
        const at = table.findIndex((line, i) => line !== floorTable[i]);
        if (at !== -1 || table.length !== floorTable.length) {
          console.warn(`! ${setup.label}: ${name} left a different nat table than the --dry-run ruleset ` +
            `(first difference at line ${at}: ${table[at]} vs ${floorTable[at]})`);
        }
      }
      return summary;
    },
  };
}

// --- report ----------------------------------------------------------------------------------------------

function machineFacts() {
  const cpuModel = /^model name\s*:\s*(.+)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? cpus()[0]?.model;
  return [
    `CPU       ${cpuModel}, ${cpus().length} cores`,
    `kernel    ${release()}`,
    `node      ${process.version}`,
    `iptables  ${run(['iptables', '--version']).trim()}`,
    `env       ${cli['inherit-env'] ? 'inherited from the caller' : `PATH only, as under systemd`}`,
    `runs      ${RUNS} per method (Consul per-rule at 10,000 CIDRs: ${Math.min(RUNS, PER_RULE_RUNS_10K)})`,
  ];
}

const ms = (value) => (value === undefined ? '—' : `${value.toFixed(1)} ms`);
const ratio = (value) => (value === undefined || !Number.isFinite(value) ? '—' : `${value.toFixed(2)}×`);

function printTable(results) {
  const header = ['', ...results.map((r) => r.label)];
  const rows = [
    ['rules in the nat table', ...results.map((r) => String(r.ruleCount))],
    ['node -e 0', ...results.map((r) => ms(r.median.node))],
    ['floor: node + save + restore', ...results.map((r) => ms(r.median.floor))],
    ['redirect-traffic (apply)', ...results.map((r) => ms(r.median.apply))],
    ['Consul, one iptables per rule', ...results.map((r) => ms(r.median.perRule))],
    ['redirect-traffic --dry-run', ...results.map((r) => ms(r.median.dryRun))],
    ['apply / floor', ...results.map((r) => ratio(r.ratio.applyToFloor))],
    ['dry-run / node -e 0', ...results.map((r) => ratio(r.ratio.dryRunToNode))],
    ['per-rule / apply (speed-up)', ...results.map((r) => ratio(r.ratio.perRuleToApply))],
  ];
  const widths = header.map((_, column) => Math.max(...[header, ...rows].map((row) => row[column].length)));
  const format = (row) => row.map((cell, column) => (column === 0 ? cell.padEnd(widths[0]) : cell.padStart(widths[column]))).join('  ');
  console.log(format(header));
  for (const row of rows) console.log(format(row));
  console.log('(times: medians over the runs; ratios: medians of the ratios within each interleaved round)');
}

function printTargets([typical, thousand, tenThousand]) {
  const targets = [
    ['apply within 1.3× the floor (typical)', typical.ratio.applyToFloor, (x) => x <= 1.3],
    ['dry-run within 1.25× node -e 0 (typical)', typical.ratio.dryRunToNode, (x) => x <= 1.25],
    ['at 1,000 CIDRs at least 5× faster than per-rule', thousand.ratio.perRuleToApply, (x) => x >= 5],
    ['at 10,000 CIDRs apply within 1.5× the floor', tenThousand.ratio.applyToFloor, (x) => x <= 1.5],
  ];
  console.log('');
  for (const [name, value, met] of targets) console.log(`${met(value) ? 'PASS' : 'FAIL'}  ${name}: ${ratio(value)}`);
}

// --- main ------------------------------------------------------------------------------------------------

function measure(setup, configDir) {
  const methods = methodsFor(setup, configDir);
  const perRuleRuns = setup.excludeOutboundCidrs.length >= 10_000 ? Math.min(RUNS, PER_RULE_RUNS_10K) : RUNS;
  const rounds = [];
  const summary = methods.checkSameResult(); // doubles as the warm-up
  console.error(`${setup.label}: ${summary}`);
  const order = ['floor', 'apply', 'perRule', 'dryRun'];
  for (let index = 0; index < RUNS; index++) {
    // Rotate the order each round so no method always runs right after the same one.
    const rotated = [...order.slice(index % order.length), ...order.slice(0, index % order.length)];
    const round = {};
    for (const method of rotated) {
      if (method === 'perRule' && index >= perRuleRuns) continue;
      methods[method](round);
    }
    rounds.push(round);
    if (process.stderr.isTTY) process.stderr.write(`  round ${index + 1}/${RUNS}\r`);
  }
  if (process.stderr.isTTY) process.stderr.write('\x1b[K');
  const medianOf = (pick) => median(rounds.map(pick).filter((value) => value !== undefined && !Number.isNaN(value)));
  return {
    label: setup.label,
    ruleCount: methods.ruleCount,
    median: Object.fromEntries(['node', 'floor', 'apply', 'perRule', 'dryRun'].map((name) => [name, medianOf((r) => r[name])])),
    // Ratios within a round, then their median: load from other processes drifts, a round is seconds long.
    ratio: {
      applyToFloor: medianOf((r) => r.apply / r.floor),
      dryRunToNode: medianOf((r) => r.dryRun / r.node),
      perRuleToApply: medianOf((r) => r.perRule / r.apply),
    },
  };
}

function main() {
  if (process.getuid?.() !== 0) {
    console.error('bench/run.mjs needs root: it creates a network namespace and writes iptables rules inside it');
    process.exit(1);
  }
  const configDir = mkdtempSync(join(tmpdir(), 'rt-bench-'));
  run(['ip', 'netns', 'add', NAMESPACE]);
  const removeNamespaceAndFiles = () => {
    if (existsSync(NAMESPACE_PATH)) spawnSync('ip', ['netns', 'delete', NAMESPACE]);
    rmSync(configDir, { recursive: true, force: true });
  };
  for (const signal of ['SIGINT', 'SIGTERM']) {
    process.on(signal, () => {
      removeNamespaceAndFiles();
      process.exit(130);
    });
  }
  try {
    const loadBefore = loadavg()[0];
    const results = [
      scenario('typical (2 CIDRs)', ['198.18.0.0/24', '198.19.0.0/24']),
      scenario('1,000 CIDRs', benchmarkCidrs(1_000)),
      scenario('10,000 CIDRs', benchmarkCidrs(10_000)),
    ].map((setup) => measure(setup, configDir));
    console.log(machineFacts().join('\n'));
    console.log(`load avg  ${loadBefore.toFixed(2)} at start, ${loadavg()[0].toFixed(2)} at end (1 min)\n`);
    printTable(results);
    printTargets(results);
  } finally {
    removeNamespaceAndFiles();
  }
}

main();
