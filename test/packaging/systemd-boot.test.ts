import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

// The shipped units, run for real under their sandbox: systemd as PID 1 in a container (systemd-nspawn)
// whose network namespace this test creates (rt-unit-<pid>) and deletes. The container's root is a scratch
// directory with a minimal /etc; /usr is the host's, read-only, with the package laid over it where
// `npm install -g` puts it (/usr/lib/node_modules/redirect-traffic, /usr/bin/redirect-traffic) and the Node
// running this test first on systemd's PATH (/usr/local/bin/node). Nothing runs in the host's namespace
// but `ip netns add/del` and reading its nat table to check it is untouched.

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const README_TEXT = readFileSync(join(ROOT, 'README.md'), 'utf8');
const NAME = `rt-unit-${process.pid}`;
const NETNS = `/run/netns/${NAME}`;
const CONSUL_UID = 998;
const ENVOY_UID = 999;

const isRoot = process.getuid?.() === 0;
const have = (program: string, args: string[]) => spawnSync(program, args, { stdio: 'ignore' }).status === 0;
const missing = [
  !isRoot && 'root',
  !have('systemd-nspawn', ['--version']) && 'systemd-nspawn (package systemd-container)',
  !existsSync('/usr/lib/systemd/systemd') && '/usr/lib/systemd/systemd (package systemd)',
  !have('ip', ['-V']) && 'ip (package iproute2)',
  !have('iptables-nft-save', ['--version']) && 'iptables',
].filter((reason): reason is string => typeof reason === 'string');

if (missing.length > 0) {
  const reason = `the systemd boot test needs ${missing.join(', ')}`;
  if (process.env['CI'] === 'true') {
    it('can boot systemd in a container (required under CI)', () => {
      expect.fail(reason);
    });
  } else {
    console.warn(`\n*** SKIPPING the units under systemd as PID 1: ${reason} ***\n`);
  }
}

interface Result {
  status: number | null;
  stdout: string;
  stderr: string;
}

function run(program: string, args: readonly string[], timeout = 30_000): Result {
  const result = spawnSync(program, args, { encoding: 'utf8', timeout, killSignal: 'SIGKILL' });
  if (result.error) throw result.error;
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

function must(program: string, args: readonly string[], timeout?: number): string {
  const result = run(program, args, timeout);
  if (result.status !== 0) {
    throw new Error(`${program} ${args.join(' ')}: exit ${result.status}\n${result.stdout}\n${result.stderr}`);
  }
  return result.stdout;
}

/** The parent of every process, from /proc. */
function parents(): Map<number, number> {
  const map = new Map<number, number>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      map.set(Number(entry), ppid);
    } catch {
      // gone meanwhile
    }
  }
  return map;
}

/** The container's PID 1 as the host sees it: the descendant of our nspawn whose command is systemd. */
function findInit(nspawnPid: number): number | undefined {
  const parentOf = parents();
  for (const [pid] of parentOf) {
    let ancestor = parentOf.get(pid);
    for (let depth = 0; ancestor !== undefined && depth < 3; depth++, ancestor = parentOf.get(ancestor)) {
      if (ancestor !== nspawnPid) continue;
      try {
        if (readFileSync(`/proc/${pid}/cmdline`, 'utf8').startsWith('/usr/lib/systemd/systemd\0')) return pid;
      } catch {
        // gone meanwhile
      }
    }
  }
  return undefined;
}

/** The metrics drop-in, as README "Running under systemd" gives it. */
const METRICS_DROP_IN = (() => {
  const marker = '# systemctl edit redirect-traffic@.service   (metrics)\n';
  const at = README_TEXT.indexOf(marker);
  if (at < 0) throw new Error(`README.md lost its metrics drop-in (${marker.trim()})`);
  return README_TEXT.slice(at + marker.length).split('```')[0]!;
})();

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe.skipIf(missing.length > 0)('the units under systemd as PID 1 (systemd-nspawn)', () => {
  let workDir = '';
  let rootfs = '';
  let nspawn: ChildProcess | undefined;
  let nspawnExit: Promise<void> = Promise.resolve();
  let console_ = '';
  let init = 0;
  let hostNatBefore = '';

  /** Runs a command inside the container (its mount, PID, network, IPC and UTS namespaces). */
  const inside = (args: readonly string[], timeout?: number) =>
    run('nsenter', ['-t', String(init), '-m', '-u', '-i', '-n', '-p', '--', ...args], timeout);
  const systemctl = (...args: string[]) => inside(['systemctl', '--no-pager', ...args], 90_000);
  const show = (unit: string, property: string) => systemctl('show', '-p', property, '--value', unit).stdout.trim();
  const journal = (unit: string) => inside(['journalctl', '--no-pager', '-o', 'cat', '-u', unit]).stdout;
  /** A nat table of the container's namespace, as the given save program prints it. */
  const nat = (save = 'iptables-nft-save') => must('ip', ['netns', 'exec', NAME, save, '-t', 'nat']);
  const consulRules = (save?: string) => nat(save).split('\n').filter((line) => line.includes('CONSUL_'));
  const writeEnv = (lines: string[]) => writeFileSync(join(rootfs, 'etc/consul.d/redirect-traffic.env'), `${lines.join('\n')}\n`);
  const dropIn = (unit: string, name: string, text: string | undefined) => {
    const dir = join(rootfs, 'etc/systemd/system', `${unit}.d`);
    mkdirSync(dir, { recursive: true });
    if (text === undefined) rmSync(join(dir, name), { force: true });
    else writeFileSync(join(dir, name), text);
    must('nsenter', ['-t', String(init), '-m', '-p', '--', 'systemctl', 'daemon-reload'], 60_000);
  };
  const report = (unit: string) => `journal of ${unit}:\n${journal(unit)}\nstatus:\n${systemctl('status', unit).stdout}`;

  beforeAll(async () => {
    workDir = mkdtempSync(join(tmpdir(), 'rt-boot-'));
    rootfs = join(workDir, 'root');
    const usr = join(workDir, 'usr-overlay');
    for (const dir of ['etc/systemd/system', 'etc/consul.d', 'var', 'run', 'tmp', 'proc', 'sys', 'dev', 'root', 'opt/node/bin', 'usr']) {
      mkdirSync(join(rootfs, dir), { recursive: true });
    }
    for (const link of ['bin', 'lib', 'lib64', 'sbin']) symlinkSync(`usr/${link}`, join(rootfs, link));
    // nspawn looks for os-release before it mounts /usr; a machine-id means no first-boot questions.
    cpSync('/usr/lib/os-release', join(rootfs, 'etc/os-release'));
    writeFileSync(join(rootfs, 'etc/machine-id'), `${must('systemd-id128', ['new']).trim()}\n`);
    for (const file of ['alternatives', 'ld.so.cache', 'ld.so.conf', 'ld.so.conf.d', 'protocols', 'services', 'nsswitch.conf']) {
      if (existsSync(`/etc/${file}`)) cpSync(`/etc/${file}`, join(rootfs, 'etc', file), { recursive: true, verbatimSymlinks: true });
    }
    writeFileSync(
      join(rootfs, 'etc/passwd'),
      `root:x:0:0:root:/root:/bin/sh\nconsul:x:${CONSUL_UID}:${CONSUL_UID}::/nonexistent:/usr/sbin/nologin\n` +
        `envoy:x:${ENVOY_UID}:${ENVOY_UID}::/nonexistent:/usr/sbin/nologin\n`,
    );
    writeFileSync(join(rootfs, 'etc/group'), `root:x:0:\nconsul:x:${CONSUL_UID}:\nenvoy:x:${ENVOY_UID}:\n`);
    // The units exactly as shipped.
    for (const unit of ['envoy-sidecar@.service', 'redirect-traffic@.service']) {
      cpSync(join(ROOT, 'systemd', unit), join(rootfs, 'etc/systemd/system', unit));
    }
    // The package where `npm install -g` puts it with Debian's prefix, and the Node under test.
    const packageDir = join(usr, 'lib/node_modules/redirect-traffic');
    for (const entry of ['bin', 'dist', 'package.json']) cpSync(join(ROOT, entry), join(packageDir, entry), { recursive: true });
    mkdirSync(join(usr, 'bin'), { recursive: true });
    symlinkSync('../lib/node_modules/redirect-traffic/bin/redirect-traffic', join(usr, 'bin/redirect-traffic'));
    mkdirSync(join(usr, 'local/bin'), { recursive: true });
    symlinkSync('/opt/node/bin/node', join(usr, 'local/bin/node'));

    hostNatBefore = must('iptables-save', ['-t', 'nat']).split('\n').filter((line) => line.includes('CONSUL_')).join('\n');
    must('ip', ['netns', 'add', NAME]);
    // Like a VM's: an interface with a default route (one end of a veth pair whose other end is down: packets vanish). Without a route,
    // verify's connection to 192.0.2.1 fails before any rule sees it (ENETUNREACH), redirected or not.
    must('ip', ['-n', NAME, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth1']);
    must('ip', ['-n', NAME, 'address', 'add', '198.51.100.2/24', 'dev', 'eth0']);
    must('ip', ['-n', NAME, 'link', 'set', 'eth0', 'up']);
    must('ip', ['-n', NAME, 'route', 'add', 'default', 'via', '198.51.100.1']);
    nspawn = spawn(
      'systemd-nspawn',
      [
        `--directory=${rootfs}`,
        `--overlay-ro=/usr:${usr}:/usr`,
        `--bind-ro=${dirname(process.execPath)}:/opt/node/bin`,
        `--network-namespace-path=${NETNS}`,
        // nspawn keeps CAP_NET_ADMIN only with a private network it makes itself.
        '--capability=CAP_NET_ADMIN',
        `--machine=${NAME}`,
        // No systemd (machined, D-Bus) on the host to register with or to ask for a scope.
        '--register=no',
        '--keep-unit',
        '--boot',
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    nspawn.stdout?.on('data', (chunk: Buffer) => (console_ += chunk.toString()));
    nspawn.stderr?.on('data', (chunk: Buffer) => (console_ += chunk.toString()));
    nspawnExit = new Promise((resolve) => nspawn?.once('exit', () => resolve()));

    const deadline = Date.now() + 60_000;
    while (init === 0 && Date.now() < deadline && nspawn.exitCode === null) {
      init = findInit(nspawn.pid ?? -1) ?? 0;
      if (init === 0) await sleep(200);
    }
    expect(init, `systemd did not start in the container:\n${console_}`).toBeGreaterThan(0);
    // "running" or "degraded": either way PID 1 has finished booting and takes jobs. Until PID 1 listens,
    // systemctl prints nothing on stdout.
    let state = '';
    while (!['running', 'degraded'].includes(state) && Date.now() < deadline) {
      const result = inside(['systemctl', 'is-system-running', '--wait'], 60_000);
      state = result.stdout.trim();
      if (!['running', 'degraded'].includes(state)) await sleep(200);
    }
    expect(['running', 'degraded'], `${state}\n${console_}`).toContain(state);
  }, 150_000);

  afterAll(async () => {
    if (nspawn && nspawn.exitCode === null) {
      nspawn.kill('SIGTERM'); // nspawn asks the container's systemd to power off
      const stopped = await Promise.race([nspawnExit.then(() => true), sleep(30_000).then(() => false)]);
      if (!stopped) {
        nspawn.kill('SIGKILL');
        await nspawnExit;
      }
    }
    run('ip', ['netns', 'del', NAME]);
    if (workDir) rmSync(workDir, { recursive: true, force: true });
  }, 60_000);

  /** Polls `probe` every 100 ms until it returns true or `ms` have passed; returns how long it took, or undefined. */
  const waitFor = async (probe: () => boolean, ms: number) => {
    const start = Date.now();
    for (;;) {
      if (probe()) return Date.now() - start;
      if (Date.now() - start > ms) return undefined;
      await sleep(100);
    }
  };
  const REDIRECT_21000 = '-A CONSUL_PROXY_IN_REDIRECT -p tcp -j REDIRECT --to-ports 21000';

  it('redirect-traffic@web: ready once applied, repairs under the sandbox, stop removes the rules (nft)', async () => {
    writeEnv(['REDIRECT_TRAFFIC_PROXY=-proxy-inbound-port=20000 -consul-dns-port=8600']);
    const unit = 'redirect-traffic@web.service';
    try {
      // Type=notify: start returns once READY=1 arrived (from systemd-notify, a child of watch).
      expect(systemctl('start', unit).status, report(unit)).toBe(0);
      expect(show(unit, 'ActiveState'), report(unit)).toBe('active');
      expect(show(unit, 'SubState')).toBe('running');
      const main = show(unit, 'MainPID');
      const rules = consulRules();
      // The defaults of the shipped unit: Serf LAN and SSH excluded, the agent's and Envoy's UIDs exempt.
      expect(rules).toContain('-A CONSUL_PROXY_INBOUND -p tcp -m tcp --dport 8301 -j RETURN');
      expect(rules).toContain('-A CONSUL_PROXY_INBOUND -p tcp -m tcp --dport 22 -j RETURN');
      expect(rules).toContain('-A CONSUL_PROXY_IN_REDIRECT -p tcp -j REDIRECT --to-ports 20000');
      expect(rules).toContain(`-A CONSUL_PROXY_OUTPUT -m owner --uid-owner ${CONSUL_UID} -j RETURN`);
      expect(rules).toContain(`-A CONSUL_PROXY_OUTPUT -m owner --uid-owner ${ENVOY_UID} -j RETURN`);
      expect(rules).toContain('-A CONSUL_DNS_REDIRECT -d 127.0.0.1/32 -p udp -m udp --dport 53 -j DNAT --to-destination 127.0.0.1:8600');
      // nft monitor runs under the sandbox (netlink allowed): the watch hears changes rather than polling.
      expect(journal(unit)).toMatch(/watching the rules \(iptables-nft\): checking on change events/);

      // PID 1's own rating of the unit as loaded, sandbox and all.
      const security = inside(['systemd-analyze', 'security', '--no-pager', unit]).stdout;
      const exposure = Number(/Overall exposure level for \S+: (\d+\.\d)/.exec(security)?.[1]);
      expect(exposure, security).toBeLessThanOrEqual(3.5);

      // Someone deletes one of our rules, then flushes the whole nat table: the watch puts them back.
      must('ip', ['netns', 'exec', NAME, 'iptables-nft', '-t', 'nat', '-D', 'CONSUL_PROXY_INBOUND', '-p', 'tcp', '--dport', '8301', '-j', 'RETURN']);
      const backAfterDelete = await waitFor(() => consulRules().includes('-A CONSUL_PROXY_INBOUND -p tcp -m tcp --dport 8301 -j RETURN'), 3_000);
      expect(backAfterDelete, report(unit)).toBeDefined();
      must('ip', ['netns', 'exec', NAME, 'iptables-nft', '-t', 'nat', '-F']);
      const backAfterFlush = await waitFor(() => consulRules().includes('-A CONSUL_PROXY_IN_REDIRECT -p tcp -j REDIRECT --to-ports 20000'), 3_000);
      expect(backAfterFlush, report(unit)).toBeDefined();
      expect(consulRules().sort()).toEqual([...rules].sort());
      expect(journal(unit)).toMatch(/warning: repaired iptables-nft IPv4: missing -A CONSUL_PROXY_INBOUND -p tcp -m tcp --dport 8301 -j RETURN/);
      // Repaired by the same process: no restart.
      expect(show(unit, 'MainPID')).toBe(main);
      expect(show(unit, 'NRestarts')).toBe('0');
      console.info(`repairs under systemd: ${backAfterDelete} ms after a deleted rule, ${backAfterFlush} ms after a flush (polled every 100 ms)`);

      // A second instance on the same namespace: its watch exits 78 and is not restarted; its cleanup removes
      // the rules, which the first watch puts back.
      const second = 'redirect-traffic@api.service';
      expect(systemctl('start', second).status).not.toBe(0);
      expect(show(second, 'ExecMainStatus')).toBe('78');
      expect(journal(second)).toMatch(/is already watching this network namespace: one watch per network namespace/);
      const backAfterSecond = await waitFor(() => consulRules().length === rules.length, 3_000);
      expect(backAfterSecond, report(unit)).toBeDefined();
      // "failed", not "activating (auto-restart)": RestartPreventExitStatus= holds the restart back.
      expect(show(second, 'ActiveState')).toBe('failed');
      expect(show(second, 'NRestarts')).toBe('0');
      systemctl('reset-failed', second);

      expect(systemctl('stop', unit).status, report(unit)).toBe(0);
      expect(show(unit, 'ActiveState')).toBe('inactive');
      expect(show(unit, 'Result')).toBe('success');
      expect(consulRules()).toEqual([]);
      const log = journal(unit);
      // watch left the rules on SIGTERM; ExecStopPost's cleanup removed them.
      // systemd signals the whole unit: a check under way at that moment loses its child and is unfinished.
      expect(log).toMatch(/received SIGTERM: stopped watching this network namespace; (the rules stay in place|the last check could not finish)/);
      expect(log).toMatch(/removed traffic redirection \(iptables-nft, IPv4\)/);
    } finally {
      systemctl('stop', unit);
      systemctl('reset-failed', unit);
    }
  });

  it('redirect-traffic@web: iptables-legacy with no xtables lock yet, IPv4 and IPv6, metrics through the README drop-in; cleanup finds legacy by itself', () => {
    const unit = 'redirect-traffic@web.service';
    must('nsenter', ['-t', String(init), '-m', '--', 'rm', '-f', '/run/xtables.lock']);
    writeEnv(['REDIRECT_TRAFFIC_PROXY=-proxy-inbound-port=20000 -dual-stack', 'REDIRECT_TRAFFIC_HOST=-iptables-mode=legacy']);
    const metricsDir = join(rootfs, 'var/lib/prometheus/node-exporter');
    mkdirSync(metricsDir, { recursive: true, mode: 0o755 });
    dropIn('redirect-traffic@.service', 'metrics.conf', METRICS_DROP_IN);
    try {
      expect(systemctl('start', unit).status, report(unit)).toBe(0);
      expect(consulRules('iptables-legacy-save')).toContain('-A CONSUL_PROXY_INBOUND -p tcp -m tcp --dport 8301 -j RETURN');
      expect(consulRules('ip6tables-legacy-save')).toContain('-A CONSUL_PROXY_INBOUND -p tcp -m tcp --dport 8301 -j RETURN');
      // Written under ProtectSystem=strict (ReadWritePaths=) and UMask=0077, readable by node_exporter.
      const metrics = join(metricsDir, 'redirect_traffic.prom');
      expect(readFileSync(metrics, 'utf8'), report(unit)).toMatch(/^redirect_traffic_in_sync 1$/m);
      expect(statSync(metrics).mode & 0o777).toBe(0o644);
      // The stop reads the file again: without -iptables-mode, cleanup must see the legacy tables itself
      // (through /proc/net, which ProcSubset=pid would hide).
      writeEnv(['REDIRECT_TRAFFIC_PROXY=-proxy-inbound-port=20000 -dual-stack']);
      expect(systemctl('stop', unit).status, report(unit)).toBe(0);
      expect(show(unit, 'Result')).toBe('success');
      expect(consulRules('iptables-legacy-save'), report(unit)).toEqual([]);
      expect(consulRules('ip6tables-legacy-save'), report(unit)).toEqual([]);
    } finally {
      systemctl('stop', unit);
      dropIn('redirect-traffic@.service', 'metrics.conf', undefined);
    }
  });

  it('redirect-traffic@web: -netns is refused by the shipped sandbox and works with the README drop-in', () => {
    const unit = 'redirect-traffic@web.service';
    must('nsenter', ['-t', String(init), '-m', '-u', '-i', '-n', '-p', '--', 'ip', 'netns', 'add', 'inner']);
    // When the refused apply exits while one of its children (an nsenter) still runs, systemd kills the child and
    // then waits to hear that the cgroup is empty, which this nested systemd sometimes never hears: it would sit
    // in "deactivating (stop-sigterm)" for all of TimeoutStopSec=60. Not what is tested here: shortened.
    dropIn('redirect-traffic@.service', 'test-stop-timeout.conf', '[Service]\nTimeoutStopSec=3s\n');
    try {
      writeEnv(['REDIRECT_TRAFFIC_PROXY=-proxy-inbound-port=20000', 'REDIRECT_TRAFFIC_HOST=-netns=/run/netns/inner']);
      expect(systemctl('start', unit).status).not.toBe(0);
      expect(journal(unit)).toMatch(/nsenter: reassociate to namespace 'ns\/net' failed: Operation not permitted/);
      // Restart=on-failure would try again in 5 s: stop that.
      systemctl('stop', unit);
      systemctl('reset-failed', unit);

      dropIn('redirect-traffic@.service', 'netns.conf', '[Service]\nCapabilityBoundingSet=CAP_SYS_ADMIN\nRestrictNamespaces=net\n');
      expect(systemctl('start', unit).status, report(unit)).toBe(0);
      const innerNat = () => must('nsenter', ['-t', String(init), '-m', '-u', '-i', '-n', '-p', '--', 'ip', 'netns', 'exec', 'inner', 'iptables-nft-save', '-t', 'nat']);
      expect(innerNat()).toContain('-A CONSUL_PROXY_IN_REDIRECT -p tcp -j REDIRECT --to-ports 20000');
      expect(consulRules()).toEqual([]); // the container's own namespace is untouched
      expect(systemctl('stop', unit).status, report(unit)).toBe(0);
      expect(innerNat()).not.toContain('CONSUL_');
    } finally {
      systemctl('stop', unit);
      systemctl('reset-failed', unit);
      dropIn('redirect-traffic@.service', 'netns.conf', undefined);
      dropIn('redirect-traffic@.service', 'test-stop-timeout.conf', undefined);
      inside(['ip', 'netns', 'del', 'inner']);
    }
  });

  it('envoy-sidecar@web: pulls in the watch, verify passes before Envoy starts; stopping it stops the watch and removes the rules', async () => {
    const unit = 'envoy-sidecar@web.service';
    const watchUnit = 'redirect-traffic@web.service';
    writeEnv(['REDIRECT_TRAFFIC_PROXY=-proxy-inbound-port=21000']);
    // No Envoy here: a stand-in main process, and a probe of what a "!" hook runs with.
    dropIn(
      'envoy-sidecar@.service',
      'stand-in.conf',
      '[Service]\nExecStart=\nExecStart=/bin/sleep infinity\nRestartSec=1\n' +
        'ExecStartPre=!/bin/grep -E "^(Uid|CapEff|CapBnd|NoNewPrivs|Seccomp):" /proc/self/status\n',
    );
    try {
      expect(systemctl('start', unit).status, `${report(unit)}\n${report(watchUnit)}`).toBe(0);
      // Requires= pulled the watch in, After= waited for its READY=1.
      expect(show(watchUnit, 'ActiveState'), report(watchUnit)).toBe('active');
      expect(consulRules()).toContain(REDIRECT_21000);
      const log = journal(unit);
      // verify ran as root under this unit's sandbox, with its own listener on the free outbound port.
      expect(log).toMatch(/^redirection works \(this host\): a connection from uid 65534 to 192\.0\.2\.1:\d+ arrived on port 15001$/m);
      expect(log).toMatch(/^Uid:\s+0\s+0\s+0\s+0$/m);
      // CAP_SETGID (6), CAP_SETUID (7) and CAP_NET_ADMIN (12) only, no new privileges, a seccomp filter.
      expect(log).toMatch(/^CapEff:\s+00000000000010c0$/m);
      expect(log).toMatch(/^NoNewPrivs:\s+1$/m);
      expect(log).toMatch(/^Seccomp:\s+2$/m);
      const main = show(unit, 'MainPID');
      expect(inside(['grep', '-E', '^Uid:', `/proc/${main}/status`]).stdout).toMatch(new RegExp(`^Uid:\\s+${ENVOY_UID}\\s`));
      const watchPid = show(watchUnit, 'MainPID');

      // Envoy crashes. systemd stops the watch too: PropagatesStopTo= acts on any stop, a crash included (a
      // "retroactive" stop), so ExecStopPost= removes the rules; the restart (RestartSec=1 here) starts the watch
      // again through Requires=, which applies them, verify passes, and Envoy starts. Fail-open meanwhile.
      const crashed = Date.now();
      inside(['kill', '-KILL', main]);
      const gone = await waitFor(() => consulRules().length === 0, 5_000);
      expect(gone, report(watchUnit)).toBeDefined();
      const back = await waitFor(() => show(unit, 'ActiveState') === 'active' && consulRules().includes(REDIRECT_21000), 20_000);
      expect(back, `${report(unit)}\n${report(watchUnit)}`).toBeDefined();
      console.info(`after kill -9 of the stand-in: rules removed within ${gone} ms, back and Envoy restarted ${Date.now() - crashed} ms after the kill (RestartSec=1)`);
      expect(show(unit, 'NRestarts')).toBe('1');
      expect(show(watchUnit, 'ActiveState')).toBe('active');
      expect(show(watchUnit, 'MainPID')).not.toBe(watchPid);
      expect(journal(unit).match(/^redirection works \(this host\)/gm)).toHaveLength(2);

      expect(systemctl('stop', unit).status, report(unit)).toBe(0);
      // PropagatesStopTo= stopped the watch (a job of its own: systemctl waits only for Envoy's); its
      // ExecStopPost= removed the rules.
      await waitFor(() => show(watchUnit, 'ActiveState') === 'inactive', 10_000);
      expect(show(watchUnit, 'ActiveState'), report(watchUnit)).toBe('inactive');
      expect(show(watchUnit, 'Result')).toBe('success');
      expect(show(unit, 'ActiveState')).toBe('inactive');
      expect(consulRules()).toEqual([]);
      expect(journal(watchUnit)).toMatch(/removed traffic redirection \(iptables-nft, IPv4\)/);
    } finally {
      systemctl('stop', unit, watchUnit);
      systemctl('reset-failed', unit, watchUnit);
      dropIn('envoy-sidecar@.service', 'stand-in.conf', undefined);
    }
  });

  it("leaves the host's own nat table as it was", () => {
    const now = must('iptables-save', ['-t', 'nat']).split('\n').filter((line) => line.includes('CONSUL_')).join('\n');
    expect(now).toBe(hostNatBefore);
  });
});
