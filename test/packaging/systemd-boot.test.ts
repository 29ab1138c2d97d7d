import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
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

  it('redirect-traffic@web: explicit ports from the environment file, rules in the container only, removed by stop (nft)', () => {
    writeEnv(['REDIRECT_TRAFFIC_PROXY=-proxy-inbound-port=20000 -consul-dns-port=8600']);
    const unit = 'redirect-traffic@web.service';
    expect(systemctl('start', unit).status, report(unit)).toBe(0);
    expect(show(unit, 'ActiveState')).toBe('active');
    const rules = consulRules();
    // The defaults of the shipped unit: Serf LAN and SSH excluded, the agent's and Envoy's UIDs exempt.
    expect(rules).toContain('-A CONSUL_PROXY_INBOUND -p tcp -m tcp --dport 8301 -j RETURN');
    expect(rules).toContain('-A CONSUL_PROXY_INBOUND -p tcp -m tcp --dport 22 -j RETURN');
    expect(rules).toContain('-A CONSUL_PROXY_IN_REDIRECT -p tcp -j REDIRECT --to-ports 20000');
    expect(rules).toContain(`-A CONSUL_PROXY_OUTPUT -m owner --uid-owner ${CONSUL_UID} -j RETURN`);
    expect(rules).toContain(`-A CONSUL_PROXY_OUTPUT -m owner --uid-owner ${ENVOY_UID} -j RETURN`);
    expect(rules).toContain('-A CONSUL_DNS_REDIRECT -d 127.0.0.1/32 -p udp -m udp --dport 53 -j DNAT --to-destination 127.0.0.1:8600');

    // PID 1's own rating of the unit as loaded, sandbox and all.
    const security = inside(['systemd-analyze', 'security', '--no-pager', unit]).stdout;
    const exposure = Number(/Overall exposure level for \S+: (\d+\.\d)/.exec(security)?.[1]);
    expect(exposure, security).toBeLessThanOrEqual(3.5);

    expect(systemctl('stop', unit).status, report(unit)).toBe(0);
    expect(show(unit, 'ActiveState')).toBe('inactive');
    expect(show(unit, 'Result')).toBe('success');
    expect(consulRules()).toEqual([]);
    expect(journal(unit)).toMatch(/removed traffic redirection \(iptables-nft, IPv4\)/);
  });

  it('redirect-traffic@web: iptables-legacy with no xtables lock yet, IPv4 and IPv6; cleanup finds legacy by itself', () => {
    const unit = 'redirect-traffic@web.service';
    must('nsenter', ['-t', String(init), '-m', '--', 'rm', '-f', '/run/xtables.lock']);
    writeEnv(['REDIRECT_TRAFFIC_PROXY=-proxy-inbound-port=20000 -dual-stack', 'REDIRECT_TRAFFIC_HOST=-iptables-mode=legacy']);
    expect(systemctl('start', unit).status, report(unit)).toBe(0);
    expect(consulRules('iptables-legacy-save')).toContain('-A CONSUL_PROXY_INBOUND -p tcp -m tcp --dport 8301 -j RETURN');
    expect(consulRules('ip6tables-legacy-save')).toContain('-A CONSUL_PROXY_INBOUND -p tcp -m tcp --dport 8301 -j RETURN');
    // The stop reads the file again: without -iptables-mode, cleanup must see the legacy tables itself
    // (through /proc/net, which ProcSubset=pid would hide).
    writeEnv(['REDIRECT_TRAFFIC_PROXY=-proxy-inbound-port=20000 -dual-stack']);
    expect(systemctl('stop', unit).status, report(unit)).toBe(0);
    expect(show(unit, 'Result')).toBe('success');
    expect(consulRules('iptables-legacy-save'), report(unit)).toEqual([]);
    expect(consulRules('ip6tables-legacy-save'), report(unit)).toEqual([]);
  });

  it('redirect-traffic@web: -netns is refused by the shipped sandbox and works with the README drop-in', () => {
    const unit = 'redirect-traffic@web.service';
    must('nsenter', ['-t', String(init), '-m', '-u', '-i', '-n', '-p', '--', 'ip', 'netns', 'add', 'inner']);
    try {
      writeEnv(['REDIRECT_TRAFFIC_PROXY=-proxy-inbound-port=20000', 'REDIRECT_TRAFFIC_HOST=-netns=/run/netns/inner']);
      expect(systemctl('start', unit).status).not.toBe(0);
      expect(journal(unit)).toMatch(/nsenter: reassociate to namespace 'ns\/net' failed: Operation not permitted/);
      systemctl('reset-failed', unit);

      dropIn('redirect-traffic@.service', 'netns.conf', '[Service]\nCapabilityBoundingSet=CAP_SYS_ADMIN\nRestrictNamespaces=net\n');
      expect(systemctl('start', unit).status, report(unit)).toBe(0);
      const innerNat = () => must('nsenter', ['-t', String(init), '-m', '-u', '-i', '-n', '-p', '--', 'ip', 'netns', 'exec', 'inner', 'iptables-nft-save', '-t', 'nat']);
      expect(innerNat()).toContain('-A CONSUL_PROXY_IN_REDIRECT -p tcp -j REDIRECT --to-ports 20000');
      expect(consulRules()).toEqual([]); // the container's own namespace is untouched
      expect(systemctl('stop', unit).status, report(unit)).toBe(0);
      expect(innerNat()).not.toContain('CONSUL_');
    } finally {
      dropIn('redirect-traffic@.service', 'netns.conf', undefined);
      inside(['ip', 'netns', 'del', 'inner']);
    }
  });

  it('envoy-sidecar@web: hooks run as root inside the sandbox; a crash removes the rules, the restart puts them back', async () => {
    const unit = 'envoy-sidecar@web.service';
    writeEnv(['REDIRECT_TRAFFIC_PROXY=-proxy-inbound-port=21000']);
    // No Envoy here: a stand-in main process, and a probe of what a "!" hook runs with.
    dropIn(
      'envoy-sidecar@.service',
      'stand-in.conf',
      '[Service]\nExecStart=\nExecStart=/bin/sleep infinity\nRestartSec=1\n' +
        'ExecStartPre=!/bin/grep -E "^(Uid|CapEff|CapBnd|NoNewPrivs|Seccomp):" /proc/self/status\n',
    );
    try {
      expect(systemctl('start', unit).status, report(unit)).toBe(0);
      expect(consulRules()).toContain('-A CONSUL_PROXY_IN_REDIRECT -p tcp -j REDIRECT --to-ports 21000');
      const log = journal(unit);
      expect(log).toMatch(/^Uid:\s+0\s+0\s+0\s+0$/m);
      // CAP_NET_ADMIN (12) and CAP_NET_RAW (13) only, no new privileges, a seccomp filter.
      expect(log).toMatch(/^CapEff:\s+0000000000003000$/m);
      expect(log).toMatch(/^NoNewPrivs:\s+1$/m);
      expect(log).toMatch(/^Seccomp:\s+2$/m);
      const main = show(unit, 'MainPID');
      expect(inside(['grep', '-E', '^Uid:', `/proc/${main}/status`]).stdout).toMatch(new RegExp(`^Uid:\\s+${ENVOY_UID}\\s`));

      inside(['kill', '-KILL', main]);
      // ExecStopPost cleans up, then Restart=on-failure applies the rules again.
      let restarts = 0;
      for (let i = 0; i < 100 && restarts === 0; i++) {
        await sleep(100);
        restarts = Number(show(unit, 'NRestarts'));
      }
      expect(restarts, report(unit)).toBe(1);
      for (let i = 0; i < 100 && show(unit, 'ActiveState') !== 'active'; i++) await sleep(100);
      expect(show(unit, 'ActiveState'), report(unit)).toBe('active');
      expect(journal(unit)).toMatch(/removed traffic redirection \(iptables-nft, IPv4\)/);
      expect(consulRules()).toContain('-A CONSUL_PROXY_IN_REDIRECT -p tcp -j REDIRECT --to-ports 21000');

      expect(systemctl('stop', unit).status, report(unit)).toBe(0);
      expect(consulRules()).toEqual([]);
    } finally {
      systemctl('stop', unit);
      dropIn('envoy-sidecar@.service', 'stand-in.conf', undefined);
    }
  });

  it("leaves the host's own nat table as it was", () => {
    const now = must('iptables-save', ['-t', 'nat']).split('\n').filter((line) => line.includes('CONSUL_')).join('\n');
    expect(now).toBe(hostNatBefore);
  });
});
