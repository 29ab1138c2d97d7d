// `npm run bench` (as root): how long redirect-traffic takes next to the least any iptables-restore (or nft -f)
// based tool can take (the floor) and next to Consul's one-iptables-process-per-rule method, medians of
// interleaved runs; how many child processes one apply starts; and what the installed rules cost each new
// connection, per backend. Everything happens inside a network namespace this script creates and deletes; the
// host's own namespace is never touched. Usage: node bench/run.mjs [--runs 15] [--per-rule-runs-10k 3]
// [--no-per-rule] [--conn-trials 7] [--conn-count 20000] [--conn-seconds 10] [--inherit-env]
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, release, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const TOOL = fileURLToPath(new URL('../bin/redirect-traffic', import.meta.url));
const MINIMAL = fileURLToPath(new URL('./minimal.cjs', import.meta.url));
/** The PATH systemd gives services (systemd.exec(5)), plus wherever this node lives. */
const SERVICE_PATH = `${dirname(process.execPath)}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`;

const { values: cli } = parseArgs({
  options: {
    runs: { type: 'string', default: '15' },
    'per-rule-runs-10k': { type: 'string', default: '3' },
    'no-per-rule': { type: 'boolean', default: false },
    'conn-trials': { type: 'string', default: '7' },
    'conn-count': { type: 'string', default: '20000' },
    'conn-seconds': { type: 'string', default: '10' },
    'inherit-env': { type: 'boolean', default: false },
    help: { type: 'boolean', default: false },
  },
});
if (cli.help) {
  console.log(`usage: node bench/run.mjs [--runs N] [--per-rule-runs-10k N] [--no-per-rule] [--conn-trials N]
                         [--conn-count N] [--conn-seconds S] [--inherit-env]
  --runs N               timed runs per method and size (default 15)
  --per-rule-runs-10k N  Consul's per-rule method takes ~40 s per run at 10,000 CIDRs; time it this often (default 3)
  --no-per-rule          skip Consul's per-rule method (on a loaded machine it takes many minutes at 10,000)
  --conn-trials N        interleaved rounds of the per-connection benchmark (default 7; 0 skips it)
  --conn-count N         connections per trial at most (default 20000)
  --conn-seconds S       seconds per trial at most (default 10)
  --inherit-env          give children this shell's environment instead of systemd's (PATH only)`);
  process.exit(0);
}
const RUNS = positiveInteger('--runs', cli.runs);
const PER_RULE_RUNS_10K = positiveInteger('--per-rule-runs-10k', cli['per-rule-runs-10k']);
const PER_RULE = !cli['no-per-rule'];
const CONN_TRIALS = cli['conn-trials'] === '0' ? 0 : positiveInteger('--conn-trials', cli['conn-trials']);
const CONN_COUNT = positiveInteger('--conn-count', cli['conn-count']);
const CONN_SECONDS = positiveInteger('--conn-seconds', cli['conn-seconds']);

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

const NFT_TABLE = ['inet', 'consul_tproxy'];

/**
 * Back to an empty nat table and no `inet consul_tproxy` table (our own namespace, so flushing everything is
 * safe). Untimed. Both, for every method of both backends: an apply surveys both backends and would otherwise
 * spend time sweeping the other one's rules.
 */
function resetNatTable() {
  run(inNamespace('iptables', '-t', 'nat', '-F'));
  run(inNamespace('iptables', '-t', 'nat', '-X'));
  // `add` then `delete`: works whether the table exists or not (nft 1.0.6 has no `destroy`).
  run(inNamespace('nft', '-f', '-'), `add table ${NFT_TABLE.join(' ')}\ndelete table ${NFT_TABLE.join(' ')}\n`);
}

/** Our nftables table as `nft -s list` prints it. */
function nftTableText() {
  return run(inNamespace('nft', '-s', 'list', 'table', ...NFT_TABLE)).split('\n').filter(Boolean);
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
function scenario(label, cidrs, backend = 'iptables') {
  return {
    label,
    backend,
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
    // The iptables rows predate -backend and keep its default (which picks iptables-nft here).
    ...(setup.backend === 'nftables' ? ['-backend=nftables'] : []),
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
  if (setup.backend === 'nftables') return nftMethodsFor(setup, configDir);
  const flags = toolFlags(setup, configDir);
  const ruleset = run([TOOL, '--dry-run', ...flags]);
  const rulesetFile = join(configDir, `${setup.excludeOutboundCidrs.length}-cidrs.restore`);
  writeFileSync(rulesetFile, ruleset);
  const perRule = consulPerRuleCommands(setup);
  return {
    order: ['floor', 'apply', 'minimal', 'processes', 'perRule', 'dryRun'],
    ruleCount: ruleset.split('\n').filter((line) => line.startsWith('-A ')).length.toLocaleString('en-US'),
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
    minimal(round) {
      resetNatTable();
      round.minimal = time([process.execPath, MINIMAL, 'iptables', 'read-write', NAMESPACE_PATH, rulesetFile]);
    },
    processes(round) {
      resetNatTable();
      round.processes = time([process.execPath, MINIMAL, 'iptables', 'processes', NAMESPACE_PATH, rulesetFile]);
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
      const tables = [['redirect-traffic', toolTable]];
      if (PER_RULE) {
        resetNatTable();
        for (const argv of perRule) run(argv);
        tables.push(['Consul per-rule', natTableRules()]);
      }
      for (const [name, table] of tables) {
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

/** Rules and set elements in an `nft -f` script, as `12 + 10,002 el.`. */
function nftSize(script) {
  let block;
  let rules = 0;
  let elements = 0;
  for (const line of script.split('\n')) {
    const opening = /^\t(chain|set) \S+ \{$/.exec(line);
    if (opening) block = opening[1];
    else if (line === '\t}') block = undefined;
    else if (block === 'chain' && /^\t\t\S/.test(line) && !line.startsWith('\t\ttype ')) rules++;
    else if (block === 'set' && /^\t\t\t\S/.test(line)) elements++;
  }
  return `${rules} + ${elements.toLocaleString('en-US')} el.`;
}

/**
 * The nftables backend: the floor is `node -e 0` plus `nft -f` of the very script the tool feeds nft (its
 * --dry-run output), the least any Node tool writing that table can spend. Every run starts without our table.
 */
function nftMethodsFor(setup, configDir) {
  const flags = toolFlags(setup, configDir);
  const script = run([TOOL, '--dry-run', ...flags]);
  const scriptFile = join(configDir, `${setup.excludeOutboundCidrs.length}-cidrs.nft`);
  writeFileSync(scriptFile, script);
  return {
    order: ['floor', 'apply', 'minimal', 'processes', 'dryRun'],
    ruleCount: nftSize(script),
    floor(round) {
      resetNatTable();
      const node = time([process.execPath, '-e', '0']);
      const load = time(inNamespace('nft', '-f', '-'), script);
      round.floor = node + load;
    },
    apply(round) {
      resetNatTable();
      round.apply = time([TOOL, ...flags]);
    },
    minimal(round) {
      resetNatTable();
      round.minimal = time([process.execPath, MINIMAL, 'nftables', 'read-write', NAMESPACE_PATH, scriptFile]);
    },
    processes(round) {
      resetNatTable();
      round.processes = time([process.execPath, MINIMAL, 'nftables', 'processes', NAMESPACE_PATH, scriptFile]);
    },
    dryRun(round) {
      round.node = time([process.execPath, '-e', '0']);
      round.dryRun = time([TOOL, '--dry-run', ...flags]);
    },
    /** Untimed: the tool must leave exactly the table its dry-run script makes. */
    checkSameResult() {
      resetNatTable();
      run(inNamespace('nft', '-f', '-'), script);
      const floorTable = nftTableText();
      resetNatTable();
      const summary = run([TOOL, ...flags]).trim();
      const toolTable = nftTableText();
      const at = toolTable.findIndex((line, i) => line !== floorTable[i]);
      if (at !== -1 || toolTable.length !== floorTable.length) {
        console.warn(`! ${setup.label}: redirect-traffic left a different table than nft -f of its --dry-run script ` +
          `(first difference at line ${at}: ${toolTable[at]} vs ${floorTable[at]})`);
      }
      return summary;
    },
  };
}

// --- child processes per apply ----------------------------------------------------------------------------

/**
 * Runs one apply (on a namespace without our rules) under `strace -f` and lists the processes it started: every
 * process but the tool's own, each named by the program it ended up running (`nsenter -> nft -f -`), and
 * marked `*` when the tool itself started it (a fork of its heap) rather than a shell it started. Untimed;
 * strace slows everything it traces.
 */
function childProcesses(setup, configDir) {
  const traceFile = join(configDir, 'strace.txt');
  resetNatTable();
  run(['strace', '-f', '-qq', '-s', '64', '-e', 'trace=execve,clone,clone3,fork,vfork', '-e', 'signal=none', '-o', traceFile, TOOL, ...toolFlags(setup, configDir)]);
  const byPid = new Map();
  const parentOf = new Map();
  for (const line of readFileSync(traceFile, 'utf8').split('\n')) {
    // "123 clone(...) = 456", or "123 <... clone resumed>...) = 456" when strace split the call.
    const forked = /^(\d+)\s+(?:<\.\.\. )?(?:clone3?|v?fork)\b.*\)\s+=\s+(\d+)$/.exec(line);
    if (forked && !/CLONE_THREAD/.test(line)) parentOf.set(forked[2], forked[1]);
    const match = /^(\d+)\s+execve\("([^"]*)", \[(.*?)\]/.exec(line);
    if (!match) continue;
    const argv = [...match[3].matchAll(/"((?:[^"\\]|\\.)*)"/g)].map((m) => m[1]);
    const execs = byPid.get(match[1]) ?? [];
    // nsenter and env look the program up on PATH: only the last execve of a process is what it runs.
    execs.push({ program: match[2].split('/').pop(), argv });
    byPid.set(match[1], execs);
  }
  const [toolPid, ...children] = [...byPid.keys()];
  return children.map((pid) => {
    const execs = byPid.get(pid);
    const first = execs[0];
    const last = execs.at(-1);
    const what = [last.program, ...last.argv.slice(1).filter((arg) => !arg.startsWith('--net='))].join(' ');
    return `${parentOf.get(pid) === toolPid ? '* ' : '  '}${first.program === last.program ? what : `${first.program} -> ${what}`}`;
  });
}

// --- new connections per second through the redirect -----------------------------------------------------

const PYTHON = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
/** The client's UID and GID: an ordinary user, neither the proxy's (101) nor excluded (0); no passwd entry needed. */
const CLIENT_ID = '42001';
/** Where the client connects: TEST-NET-2, outside every excluded CIDR, assigned to lo inside the namespace. */
const CONN_ADDRESS = '198.51.100.1';
/** Nothing listens here: a connection only succeeds through the redirect, so every trial proves it happened. */
const CONN_REDIRECTED_PORT = '80';

/** Accepts and closes connections on the outbound port, any address, until its stdin closes or 30 min pass. */
const LISTENER_PY = `
import os, socket, sys, threading
def watch():
    sys.stdin.buffer.read()
    os._exit(0)
threading.Thread(target=watch, daemon=True).start()
threading.Timer(1800, lambda: os._exit(0)).start()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(4096)
while True:
    c, _ = s.accept()
    c.close()
`;

/**
 * N sequential connect/close (RST on close, so no TIME_WAIT piles up), stopping at COUNT connections or SECONDS;
 * prints "connections seconds". Any failure (refused: the redirect is missing) ends it with exit 1.
 */
const CLIENT_PY = `
import signal, socket, struct, sys, time
host, port, count, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
signal.alarm(int(seconds) + 10)
linger = struct.pack("ii", 1, 0)
n = 0
start = time.perf_counter()
deadline = start + seconds
while n < count:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    try:
        s.connect((host, port))
    except OSError as error:
        sys.exit(f"connection {n + 1} to {host}:{port} failed: {error}")
    s.close()
    n += 1
    if n & 255 == 0 and time.perf_counter() > deadline:
        break
print(n, time.perf_counter() - start)
`;

/** Connections per second from the ordinary UID, one trial. */
function connectionRate(port, count = CONN_COUNT, seconds = CONN_SECONDS) {
  const argv = inNamespace('setpriv', `--reuid=${CLIENT_ID}`, `--regid=${CLIENT_ID}`, '--clear-groups',
    PYTHON, '-I', '-S', '-c', CLIENT_PY, CONN_ADDRESS, port, String(count), String(seconds));
  const result = spawnSync(argv[0], argv.slice(1), { env: childEnv, encoding: 'utf8', timeout: (seconds + 30) * 1000, killSignal: 'SIGKILL' });
  if (result.status !== 0) throw new Error(`connection client failed: ${result.error?.message ?? result.stderr.trim()}`);
  const [connections, elapsed] = result.stdout.trim().split(' ').map(Number);
  return connections / elapsed;
}

function startListener(port) {
  const child = spawn('nsenter', [`--net=${NAMESPACE_PATH}`, '--', PYTHON, '-I', '-S', '-c', LISTENER_PY, port], {
    env: childEnv,
    stdio: ['pipe', 'ignore', 'inherit'],
  });
  for (let attempt = 0; ; attempt++) {
    try {
      connectionRate(port, 1, 1);
      return child;
    } catch (error) {
      if (attempt === 50) {
        child.kill('SIGKILL');
        throw error;
      }
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 100);
    }
  }
}

/**
 * Typical and 10,000 excluded CIDRs (none covering the destination), on each backend, and a namespace with no
 * rules at all; interleaved round by round in a rotating order, each configuration installed afresh (untimed)
 * right before its trial.
 */
function measureConnections(configDir, typical, tenThousand) {
  const outboundPort = typical.outboundPort;
  const configs = [
    { key: 'none', port: outboundPort },
    ...['iptables', 'nftables'].flatMap((backend) => [
      { key: `${backend} typical`, backend, setup: typical, port: CONN_REDIRECTED_PORT },
      { key: `${backend} 10k`, backend, setup: tenThousand, port: CONN_REDIRECTED_PORT },
    ]),
  ];
  const install = (config) => {
    // Nothing in the namespace but what this configuration installs: no leftover table, no conntrack hooks.
    run(inNamespace('nft', 'flush', 'ruleset'));
    if (!config.backend) return undefined;
    const flags = toolFlags({ ...config.setup, backend: 'none' }, configDir);
    return run([TOOL, `-backend=${config.backend}`, ...flags]).trim();
  };
  run(inNamespace('ip', 'link', 'set', 'lo', 'up'));
  run(inNamespace('ip', 'address', 'add', `${CONN_ADDRESS}/32`, 'dev', 'lo'));
  install(configs[0]);
  const listener = startListener(outboundPort);
  try {
    for (const config of configs) {
      const summary = install(config);
      if (summary) console.error(`connections, ${config.key}: ${summary}`);
      connectionRate(config.port, 2_000, 2); // warm-up, and proof the redirect works
    }
    const rounds = [];
    for (let index = 0; index < CONN_TRIALS; index++) {
      const shift = index % configs.length;
      const round = {};
      for (const config of [...configs.slice(shift), ...configs.slice(0, shift)]) {
        install(config);
        round[config.key] = connectionRate(config.port);
      }
      rounds.push(round);
      if (process.stderr.isTTY) process.stderr.write(`  connections round ${index + 1}/${CONN_TRIALS}\r`);
    }
    if (process.stderr.isTTY) process.stderr.write('\x1b[K');
    run(inNamespace('nft', 'flush', 'ruleset'));
    const medianOf = (pick) => median(rounds.map(pick));
    return {
      rate: Object.fromEntries(configs.map(({ key }) => [key, medianOf((r) => r[key])])),
      ratio: Object.fromEntries(['iptables', 'nftables'].map((backend) => [backend, {
        typicalToNone: medianOf((r) => r[`${backend} typical`] / r.none),
        tenThousandToNone: medianOf((r) => r[`${backend} 10k`] / r.none),
        tenThousandToTypical: medianOf((r) => r[`${backend} 10k`] / r[`${backend} typical`]),
      }])),
    };
  } finally {
    listener.stdin.end();
    listener.kill('SIGKILL');
  }
}

// --- report ----------------------------------------------------------------------------------------------

function machineFacts() {
  const cpuModel = /^model name\s*:\s*(.+)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? cpus()[0]?.model;
  return [
    `CPU       ${cpuModel}, ${cpus().length} cores`,
    `kernel    ${release()}`,
    `node      ${process.version}`,
    `iptables  ${run(['iptables', '--version']).trim()}`,
    `nft       ${run(['nft', '--version']).trim()}`,
    `env       ${cli['inherit-env'] ? 'inherited from the caller' : `PATH only, as under systemd`}`,
    `runs      ${RUNS} per method (Consul per-rule ${PER_RULE ? `at 10,000 CIDRs: ${Math.min(RUNS, PER_RULE_RUNS_10K)}` : 'skipped: --no-per-rule'}); ` +
      `connections: ${CONN_TRIALS} rounds of ${CONN_COUNT.toLocaleString('en-US')} connections or ${CONN_SECONDS} s per trial`,
  ];
}

const ms = (value) => (value === undefined || Number.isNaN(value) ? '—' : `${value.toFixed(1)} ms`);
const ratio = (value) => (value === undefined || !Number.isFinite(value) ? '—' : `${value.toFixed(2)}×`);

function printRows(header, rows) {
  const widths = header.map((_, column) => Math.max(...[header, ...rows].map((row) => row[column].length)));
  const format = (row) => row.map((cell, column) => (column === 0 ? cell.padEnd(widths[0]) : cell.padStart(widths[column]))).join('  ');
  console.log(format(header));
  for (const row of rows) console.log(format(row));
}

function printTable(results, backend) {
  const iptables = backend === 'iptables';
  const cells = (pick) => results.map(pick);
  const rows = [
    [iptables ? 'rules in the nat table' : 'rules + set elements', ...cells((r) => r.ruleCount)],
    ['node -e 0', ...cells((r) => ms(r.median.node))],
    [iptables ? 'floor: node + save + restore' : 'floor: node + nft -f', ...cells((r) => ms(r.median.floor))],
    ['redirect-traffic (apply)', ...cells((r) => ms(r.median.apply))],
    [iptables ? 'minimal Node program: save, restore' : 'minimal Node program: list, nft -f', ...cells((r) => ms(r.median.minimal))],
    ['Node program, the apply\'s processes, no logic', ...cells((r) => ms(r.median.processes))],
    ...(iptables ? [['Consul, one iptables per rule', ...cells((r) => ms(r.median.perRule))]] : []),
    ['redirect-traffic --dry-run', ...cells((r) => ms(r.median.dryRun))],
    ['apply / floor', ...cells((r) => ratio(r.ratio.applyToFloor))],
    ['minimal Node program / floor', ...cells((r) => ratio(r.ratio.minimalToFloor))],
    ['the apply\'s processes / floor', ...cells((r) => ratio(r.ratio.processesToFloor))],
    ['dry-run / node -e 0', ...cells((r) => ratio(r.ratio.dryRunToNode))],
    ...(iptables ? [['per-rule / apply (speed-up)', ...cells((r) => ratio(r.ratio.perRuleToApply))]] : []),
  ];
  printRows([`${backend}`, ...cells((r) => r.label)], rows);
}

function printChildren(children) {
  console.log('\nprocesses per apply (on a namespace without our rules; strace -f); * = started by the tool itself, a fork of its heap:');
  for (const { label, programs } of children) {
    console.log(`  ${label}: ${programs.length} programs, ${programs.filter((program) => program.startsWith('*')).length} started by the tool`);
    for (const program of programs) console.log(`    ${program}`);
  }
}

function printConnections(connections) {
  if (!connections) return;
  const rate = (value) => `${Math.round(value).toLocaleString('en-US')}/s`;
  console.log(`\nnew TCP connections per second, UID ${CLIENT_ID} to ${CONN_ADDRESS}:${CONN_REDIRECTED_PORT} redirected to a ` +
    `local listener (no rules: straight to it), medians; ratios: medians of the ratios within each round`);
  console.log(`  no rules: ${rate(connections.rate.none)}`);
  printRows(
    ['', 'typical', '10,000 CIDRs', 'typical / no rules', '10k / no rules', '10k / typical'],
    ['iptables', 'nftables'].map((backend) => [
      `  ${backend}`,
      rate(connections.rate[`${backend} typical`]),
      rate(connections.rate[`${backend} 10k`]),
      ratio(connections.ratio[backend].typicalToNone),
      ratio(connections.ratio[backend].tenThousandToNone),
      ratio(connections.ratio[backend].tenThousandToTypical),
    ]),
  );
}

function printTargets([typical, thousand, tenThousand], [nftTypical, nftTenThousand], connections) {
  const targets = [
    ['apply within 1.5× the floor (typical)', typical.ratio.applyToFloor, (x) => x <= 1.5],
    ['dry-run within 1.25× node -e 0 (typical)', typical.ratio.dryRunToNode, (x) => x <= 1.25],
    ['at 1,000 CIDRs at least 5× faster than per-rule', thousand.ratio.perRuleToApply, (x) => x >= 5],
    ['at 10,000 CIDRs apply within 1.5× the floor', tenThousand.ratio.applyToFloor, (x) => x <= 1.5],
    ['nftables: apply within 1.4× the floor (typical)', nftTypical.ratio.applyToFloor, (x) => x <= 1.4],
    ['nftables: at 10,000 CIDRs apply within 1.5× the floor', nftTenThousand.ratio.applyToFloor, (x) => x <= 1.5],
    ...(connections
      ? [['nftables: connection rate at 10,000 CIDRs at least 0.9× typical', connections.ratio.nftables.tenThousandToTypical, (x) => x >= 0.9]]
      : []),
  ];
  console.log('');
  for (const [name, value, met] of targets) {
    const verdict = value === undefined || Number.isNaN(value) ? 'SKIP' : met(value) ? 'PASS' : 'FAIL';
    console.log(`${verdict}  ${name}: ${ratio(value)}`);
  }
}

// --- main ------------------------------------------------------------------------------------------------

function measure(setup, configDir) {
  const methods = methodsFor(setup, configDir);
  const perRuleRuns = setup.excludeOutboundCidrs.length >= 10_000 ? Math.min(RUNS, PER_RULE_RUNS_10K) : RUNS;
  const rounds = [];
  const summary = methods.checkSameResult(); // doubles as the warm-up
  console.error(`${setup.label}: ${summary}`);
  const { order } = methods;
  for (let index = 0; index < RUNS; index++) {
    // Rotate the order each round so no method always runs right after the same one.
    const rotated = [...order.slice(index % order.length), ...order.slice(0, index % order.length)];
    const round = {};
    for (const method of rotated) {
      if (method === 'perRule' && (!PER_RULE || index >= perRuleRuns)) continue;
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
    median: Object.fromEntries(['node', 'floor', 'apply', 'minimal', 'processes', 'perRule', 'dryRun'].map((name) => [name, medianOf((r) => r[name])])),
    // Ratios within a round, then their median: load from other processes drifts, a round is seconds long.
    ratio: {
      applyToFloor: medianOf((r) => r.apply / r.floor),
      minimalToFloor: medianOf((r) => r.minimal / r.floor),
      processesToFloor: medianOf((r) => r.processes / r.floor),
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
    const load = [loadavg()[0]];
    const typicalCidrs = ['198.18.0.0/24', '198.19.0.0/24'];
    const tenThousandCidrs = benchmarkCidrs(10_000);
    const results = [
      scenario('typical (2 CIDRs)', typicalCidrs),
      scenario('1,000 CIDRs', benchmarkCidrs(1_000)),
      scenario('10,000 CIDRs', tenThousandCidrs),
    ].map((setup) => measure(setup, configDir));
    const nftScenarios = [scenario('typical (2 CIDRs)', typicalCidrs, 'nftables'), scenario('10,000 CIDRs', tenThousandCidrs, 'nftables')];
    const nftResults = nftScenarios.map((setup) => measure(setup, configDir));
    load.push(loadavg()[0]);
    const hasStrace = spawnSync('strace', ['-V']).status === 0;
    const counted = [scenario('typical (2 CIDRs)', typicalCidrs), scenario('10,000 CIDRs', tenThousandCidrs), ...nftScenarios];
    const children = hasStrace
      ? counted.map((setup) => ({
          label: `${setup.backend === 'nftables' ? 'nftables' : 'iptables (iptables-nft here)'}, ${setup.label}`,
          programs: childProcesses(setup, configDir),
        }))
      : [];
    const connections = CONN_TRIALS > 0 ? measureConnections(configDir, scenario('typical', typicalCidrs), scenario('10,000 CIDRs', tenThousandCidrs)) : undefined;
    load.push(loadavg()[0]);
    console.log(machineFacts().join('\n'));
    console.log(`load avg  ${load.map((value) => value.toFixed(2)).join(', ')} (1 min: at start, after the apply timings, at end)\n`);
    printTable(results, 'iptables');
    console.log('');
    printTable(nftResults, 'nftables');
    console.log('(times: medians over the runs; ratios: medians of the ratios within each interleaved round)');
    if (hasStrace) printChildren(children);
    else console.log('\n(child processes not counted: strace is not installed)');
    printConnections(connections);
    printTargets(results, nftResults, connections);
  } finally {
    removeNamespaceAndFiles();
  }
}

main();
