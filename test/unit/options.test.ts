import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CliError, ExitCode } from '../../src/errors.ts';
import {
  applyOptions,
  cleanupOptions,
  DEFAULT_AGENT_TIMEOUT_MS,
  DEFAULT_HTTP_ADDR,
  statusOptions,
  type RawOptions,
} from '../../src/options.ts';
import { scratchDir, portRanges } from '../helpers/fakes.ts';

const scratch = scratchDir();
afterAll(() => scratch.remove());

const BASE: RawOptions = { 'proxy-uid': '101', 'proxy-inbound-port': '20000' };
const WITH_ID: RawOptions = { 'proxy-uid': '101', 'proxy-id': 'web-sidecar-proxy' };
const SECRET = 'S3CR3T-b4d-t0k3n';

/** Runs `fn`, expecting a CliError; returns it for further checks. */
function failure(fn: () => unknown): CliError {
  try {
    fn();
  } catch (error) {
    expect(error).toBeInstanceOf(CliError);
    const cliError = error as CliError;
    expect(cliError.message).not.toContain('\n');
    return cliError;
  }
  throw new Error('expected a CliError, got success');
}

function expectUsage(fn: () => unknown, ...fragments: (string | RegExp)[]): CliError {
  const error = failure(fn);
  expect(error.exitCode).toBe(ExitCode.usage);
  for (const fragment of fragments) expect(error.message).toMatch(fragment);
  return error;
}

function expectConfigError(fn: () => unknown, ...fragments: (string | RegExp)[]): CliError {
  const error = failure(fn);
  expect(error.exitCode).toBe(ExitCode.config);
  for (const fragment of fragments) expect(error.message).toMatch(fragment);
  return error;
}

const configFile = (content: string | object) => scratch.write(`config-${Math.random().toString(36).slice(2)}.json`, content);

describe("Consul's checks, in Consul's order (reference §2.1)", () => {
  it('-proxy-uid is required, before anything else is checked', () => {
    expectUsage(() => applyOptions({}, {}), '-proxy-uid is required');
    expectUsage(() => applyOptions({ 'proxy-id': 'web', 'proxy-inbound-port': '1' }, {}), '-proxy-uid is required');
  });

  it('a value that does not parse is reported before the missing -proxy-uid (Go parses flags first)', () => {
    expectUsage(() => applyOptions({ 'proxy-inbound-port': 'abc' }, {}), '-proxy-inbound-port', '"abc"');
  });

  it('needs -proxy-id or -proxy-inbound-port', () => {
    const error = expectUsage(() => applyOptions({ 'proxy-uid': '101' }, {}), '-proxy-id', '-proxy-inbound-port');
    expect(error.message).toMatch(/either/i);
  });

  it('-proxy-id with -proxy-inbound-port is an error', () => {
    expectUsage(() => applyOptions({ ...WITH_ID, 'proxy-inbound-port': '20000' }, {}), '-proxy-inbound-port', '-proxy-id');
  });

  it('-proxy-id with a -proxy-outbound-port other than 15001 is an error; 15001 itself is fine', () => {
    expectUsage(() => applyOptions({ ...WITH_ID, 'proxy-outbound-port': '15002' }, {}), '-proxy-outbound-port', '-proxy-id');
    const options = applyOptions({ ...WITH_ID, 'proxy-outbound-port': '15001' }, {});
    expect(options.rules.proxyId).toBe('web-sidecar-proxy');
    expect(options.rules.outboundPort).toBe(15001);
  });

  it('-proxy-id alone is enough, and then the agent options exist', () => {
    const options = applyOptions(WITH_ID, {});
    expect(options.rules.inboundPort).toBeUndefined();
    expect(options.agent?.address).toBe(DEFAULT_HTTP_ADDR);
    expect(options.agent?.timeoutMs).toBe(DEFAULT_AGENT_TIMEOUT_MS);
  });
});

describe('apply options: values and defaults', () => {
  it('defaults: outbound 15001, no exclusions, no DNS, IPv4 only, no netns, auto backend, no agent', () => {
    const options = applyOptions(BASE, {});
    expect(options).toEqual({
      dryRun: false,
      host: { netns: undefined, backend: 'auto', iptablesMode: 'auto' },
      rules: {
        proxyUid: { kind: 'id', uid: 101 },
        proxyId: undefined,
        inboundPort: 20000,
        outboundPort: 15001,
        excludeInboundPorts: [],
        excludeOutboundPorts: [],
        excludeOutboundCidrs: [],
        excludeUids: [],
        dnsIp: undefined,
        dnsPort: undefined,
        dualStack: false,
      },
      agent: undefined,
      allowSshCapture: false,
    });
  });

  it('repeatable flags take comma lists, in order', () => {
    const { rules } = applyOptions(
      {
        ...BASE,
        'exclude-inbound-port': ['22,8300:8302', '9090'],
        'exclude-outbound-port': ['443, 80'],
        'exclude-outbound-cidr': ['10.0.0.0/8,2001:DB8::/32', '169.254.169.254'],
        'exclude-uid': ['0,consul', '996'],
      },
      {},
    );
    expect(rules.excludeInboundPorts).toEqual(portRanges('22', '8300:8302', '9090'));
    expect(rules.excludeOutboundPorts).toEqual(portRanges('443', '80'));
    expect(rules.excludeOutboundCidrs).toEqual([
      { family: 4, cidr: '10.0.0.0/8' },
      { family: 6, cidr: '2001:db8::/32' },
      { family: 4, cidr: '169.254.169.254/32' },
    ]);
    expect(rules.excludeUids).toEqual([
      { kind: 'id', uid: 0 },
      { kind: 'name', name: 'consul' },
      { kind: 'id', uid: 996 },
    ]);
  });

  it('a bad list item names the flag and the item', () => {
    expectUsage(() => applyOptions({ ...BASE, 'exclude-inbound-port': ['22,abc'] }, {}), '-exclude-inbound-port', '"abc"');
    expectUsage(() => applyOptions({ ...BASE, 'exclude-outbound-cidr': ['example.com'] }, {}), '-exclude-outbound-cidr', 'example.com');
    expectUsage(() => applyOptions({ ...BASE, 'exclude-uid': ['-1'] }, {}), '-exclude-uid', '"-1"');
  });

  it('an empty list item is an error, not silently dropped', () => {
    expectUsage(() => applyOptions({ ...BASE, 'exclude-uid': ['1,,2'] }, {}), '-exclude-uid');
    expectUsage(() => applyOptions({ ...BASE, 'exclude-inbound-port': ['22,'] }, {}), '-exclude-inbound-port');
  });

  it('DNS settings: IP, port, or both', () => {
    expect(applyOptions({ ...BASE, 'consul-dns-ip': '10.0.0.53' }, {}).rules).toMatchObject({
      dnsIp: { family: 4, address: '10.0.0.53' },
      dnsPort: undefined,
    });
    expect(applyOptions({ ...BASE, 'consul-dns-port': '8600' }, {}).rules).toMatchObject({ dnsIp: undefined, dnsPort: 8600 });
    expectUsage(() => applyOptions({ ...BASE, 'consul-dns-ip': 'consul.local' }, {}), '-consul-dns-ip', 'consul.local');
    // As with Consul's int flags, 0 means "not given".
    expect(applyOptions({ ...BASE, 'consul-dns-port': '0' }, {}).rules).toMatchObject({ dnsPort: undefined });
  });

  it('an IPv6 DNS address needs -dual-stack (else no DNS rule would be installed at all)', () => {
    expectUsage(() => applyOptions({ ...BASE, 'consul-dns-ip': 'fd00::53' }, {}), '-consul-dns-ip', 'fd00::53');
    expect(applyOptions({ ...BASE, 'consul-dns-ip': 'fd00::53', 'dual-stack': true }, {}).rules.dnsIp).toEqual({
      family: 6,
      address: 'fd00::53',
    });
  });

  it('bad values name the flag and the value, JSON-quoted on one line', () => {
    const error = expectUsage(() => applyOptions({ ...BASE, 'proxy-outbound-port': '22\n-A OUTPUT -j DROP' }, {}), '-proxy-outbound-port');
    expect(error.message).toContain('"22\\n-A OUTPUT -j DROP"');
    expectUsage(() => applyOptions({ ...BASE, 'iptables-mode': 'bogus' }, {}), '-iptables-mode', 'bogus');
    expectUsage(() => applyOptions({ ...BASE, 'proxy-uid': 'a b' }, {}), '-proxy-uid', '"a b"');
  });
});

describe('-netns', () => {
  it('must exist', () => {
    const missing = `${scratch.dir}/no-such-netns`;
    for (const parse of [applyOptions, cleanupOptions, statusOptions]) {
      expectUsage(() => parse({ ...BASE, netns: missing }, {}), '-netns', missing, 'does not exist');
    }
  });

  it('a path that cannot be looked at says why, not that it does not exist', () => {
    const underFile = join(scratch.write('netns-parent', ''), 'net');
    expectUsage(() => applyOptions({ ...BASE, netns: underFile }, {}), '-netns', underFile, 'cannot be opened (ENOTDIR)');
  });

  it('a namespace file is kept as given', () => {
    const path = '/proc/self/ns/net';
    expect(applyOptions({ ...BASE, netns: path }, {}).host.netns).toBe(path);
    expect(cleanupOptions({ netns: path }, {}).host.netns).toBe(path);
  });

  // nsenter would fail on a file, and wait for a writer on a FIFO until its time limit (30 s, then exit 75).
  it('must be a network namespace file: a regular file, a directory, a FIFO (never opened), another namespace type are refused', () => {
    const fifo = join(scratch.dir, 'netns-fifo');
    execFileSync('mkfifo', [fifo]);
    for (const path of [scratch.write('netns-file', ''), scratch.dir, fifo, '/proc/self/ns/mnt']) {
      for (const parse of [applyOptions, cleanupOptions, statusOptions]) {
        expectUsage(() => parse({ ...BASE, netns: path }, {}), '-netns', path, 'is not a network namespace file');
      }
    }
  });
});

describe('config file (-config)', () => {
  it('holds flag names; numbers are allowed for ports and UIDs; lists as arrays or comma strings', () => {
    const path = configFile({
      'proxy-uid': 0,
      'proxy-inbound-port': 20000,
      'proxy-outbound-port': 15002,
      'exclude-inbound-port': [22, '8300:8302'],
      'exclude-uid': '996,997',
      'exclude-outbound-cidr': ['10.0.0.0/8'],
      'consul-dns-port': 8600,
    });
    const { rules } = applyOptions({ config: path }, {});
    expect(rules).toMatchObject({
      proxyUid: { kind: 'id', uid: 0 },
      inboundPort: 20000,
      outboundPort: 15002,
      excludeInboundPorts: portRanges('22', '8300:8302'),
      excludeUids: [
        { kind: 'id', uid: 996 },
        { kind: 'id', uid: 997 },
      ],
      excludeOutboundCidrs: [{ family: 4, cidr: '10.0.0.0/8' }],
      dnsPort: 8600,
    });
  });

  it('the command line wins over the file, lists included (replaced, not merged)', () => {
    const path = configFile({ 'proxy-uid': 1, 'proxy-inbound-port': 20000, 'exclude-inbound-port': [22] });
    const { rules } = applyOptions({ config: path, 'proxy-inbound-port': '21000', 'exclude-inbound-port': ['2222'] }, {});
    expect(rules.inboundPort).toBe(21000);
    expect(rules.excludeInboundPorts).toEqual(portRanges('2222'));
    expect(rules.proxyUid).toEqual({ kind: 'id', uid: 1 });
  });

  it("an explicit false on the command line (Go's -dual-stack=false) beats the file's true", () => {
    const path = configFile({ 'proxy-uid': 1, 'proxy-inbound-port': 20000, 'dual-stack': true });
    expect(applyOptions({ config: path }, {}).rules.dualStack).toBe(true);
    expect(applyOptions({ config: path, 'dual-stack': false }, {}).rules.dualStack).toBe(false);
  });

  it('ranks the token by source first: -token on the command line beats a token-file in the config file', () => {
    const tokenFile = scratch.write('token-from-file', 'file-token\n');
    const path = configFile({ ...WITH_ID, 'token-file': tokenFile });
    expect(applyOptions({ config: path, token: 'cli-token' }, {}).agent).toMatchObject({ token: 'cli-token', tokenSource: '-token' });
    expect(applyOptions({ config: path }, { CONSUL_HTTP_TOKEN: 'env-token' }).agent?.token).toBe('file-token');
  });

  it('the file wins over the environment, the command line over both', () => {
    const path = configFile({ 'http-addr': 'file.example:8500', namespace: 'file-ns' });
    const env = { CONSUL_HTTP_ADDR: 'env.example:8500', CONSUL_NAMESPACE: 'env-ns', CONSUL_PARTITION: 'env-part' };
    const fromFile = applyOptions({ ...WITH_ID, config: path }, env).agent;
    expect(fromFile).toMatchObject({ address: 'file.example:8500', namespace: 'file-ns', partition: 'env-part' });
    const fromFlag = applyOptions({ ...WITH_ID, config: path, 'http-addr': 'flag.example:8500' }, env).agent;
    expect(fromFlag?.address).toBe('flag.example:8500');
  });

  it("satisfies Consul's checks from the file too (-proxy-id with 15001 given as a number)", () => {
    const path = configFile({ 'proxy-uid': 'envoy', 'proxy-id': 'web-sidecar-proxy', 'proxy-outbound-port': 15001 });
    expect(applyOptions({ config: path }, {}).rules.proxyId).toBe('web-sidecar-proxy');
    const bad = configFile({ 'proxy-uid': 'envoy', 'proxy-id': 'web', 'proxy-inbound-port': 20000 });
    expectUsage(() => applyOptions({ config: bad }, {}), '-proxy-id');
  });

  it('an unknown key is a config error naming the key and the file', () => {
    const path = configFile({ 'proxy-uid': 1, 'proxy-inbound-port': 2, 'exclude-uids': [1] });
    expectConfigError(() => applyOptions({ config: path }, {}), '"exclude-uids"', path);
  });

  it('a bad value is a config error naming the key, the value and the file', () => {
    const path = configFile({ 'proxy-uid': 1, 'proxy-inbound-port': 70000 });
    expectConfigError(() => applyOptions({ config: path }, {}), '"proxy-inbound-port"', '70000', path);
    const list = configFile({ 'proxy-uid': 1, 'proxy-inbound-port': 2, 'exclude-outbound-cidr': ['10.0.0.0/8', 'db.internal'] });
    expectConfigError(() => applyOptions({ config: list }, {}), '"exclude-outbound-cidr"', 'db.internal', list);
    const type = configFile({ 'proxy-uid': 1, 'proxy-inbound-port': true });
    expectConfigError(() => applyOptions({ config: type }, {}), '"proxy-inbound-port"', type);
  });

  it.each([[true], [null], [[[22]]], [{ port: 22 }], [[22, null]], [[false]]])(
    'a list key holding %j is a config error naming the key and the file, not a crash',
    (value) => {
      const path = configFile({ 'proxy-uid': 1, 'proxy-inbound-port': 2, 'exclude-inbound-port': value });
      expectConfigError(() => applyOptions({ config: path }, {}), '"exclude-inbound-port"', path);
    },
  );

  it('"__proto__" is an unknown key like any other', () => {
    const path = configFile('{"proxy-uid": 1, "proxy-inbound-port": 2, "__proto__": {"exclude-uid": [0]}}');
    expectConfigError(() => applyOptions({ config: path }, {}), '"__proto__"', path);
  });

  it('a missing -netns given in the file is reported as a config-file error', () => {
    const path = configFile({ 'proxy-uid': 1, 'proxy-inbound-port': 2, netns: `${scratch.dir}/gone` });
    expectConfigError(() => applyOptions({ config: path }, {}), '"netns"', `${scratch.dir}/gone`, path);
  });

  // The file is shared between hosts and runs: the next run may lack the flag that hid its bad value.
  it('a bad value in the file is refused even where a flag overrides it', () => {
    const port = configFile({ 'proxy-uid': 1, 'proxy-inbound-port': 70000 });
    expectConfigError(() => applyOptions({ config: port, 'proxy-inbound-port': '21000' }, {}), '"proxy-inbound-port"', '70000', port);
    const list = configFile({ 'proxy-uid': 1, 'proxy-inbound-port': 2, 'exclude-outbound-cidr': ['db.internal'] });
    expectConfigError(
      () => applyOptions({ config: list, 'exclude-outbound-cidr': ['10.0.0.0/8'] }, {}),
      '"exclude-outbound-cidr"', 'db.internal', list,
    );
    const shape = configFile({ 'proxy-uid': 1, 'proxy-inbound-port': { nested: true } });
    expectConfigError(() => applyOptions({ config: shape, 'proxy-inbound-port': '21000' }, {}), '"proxy-inbound-port"', shape);
  });

  it('a bad flag value is still a usage error when a file is in play', () => {
    const path = configFile({ 'proxy-uid': 1 });
    expectUsage(() => applyOptions({ config: path, 'proxy-inbound-port': 'x' }, {}), '-proxy-inbound-port', '"x"');
  });

  it('unreadable, non-JSON or non-object files are config errors naming the file', () => {
    const missing = `${scratch.dir}/missing.json`;
    expectConfigError(() => applyOptions({ config: missing }, {}), missing);
    const broken = configFile('{"proxy-uid": 1,');
    expectConfigError(() => applyOptions({ config: broken }, {}), broken);
    const array = configFile([{ 'proxy-uid': 1 }]);
    expectConfigError(() => applyOptions({ config: array }, {}), array);
    expectConfigError(() => applyOptions({ config: scratch.dir }, {}), scratch.dir);
  });

  it('keys that describe the invocation are only accepted on the command line', () => {
    for (const key of ['config', 'dry-run', 'debug']) {
      const path = configFile({ 'proxy-uid': 1, 'proxy-inbound-port': 2, [key]: key === 'config' ? '/x' : true });
      expectConfigError(() => applyOptions({ config: path }, {}), `"${key}"`, path);
    }
  });

  it('one file serves apply, cleanup and status alike (ExecStopPost with the same -config)', () => {
    const path = configFile({ 'proxy-uid': 101, 'proxy-inbound-port': 20000, 'exclude-inbound-port': '22', 'iptables-mode': 'nft' });
    expect(applyOptions({ config: path }, {}).host.iptablesMode).toBe('nft');
    expect(cleanupOptions({ config: path }, {})).toEqual({ dryRun: false, host: { netns: undefined, backend: 'auto', iptablesMode: 'nft' } });
    expect(statusOptions({ config: path }, {}).rules?.excludeInboundPorts).toEqual(portRanges('22'));
  });
});

describe('environment fallbacks for the agent flags', () => {
  const agentEnv = {
    CONSUL_HTTP_ADDR: 'https://consul.example:8501',
    CONSUL_TLS_SERVER_NAME: 'server.dc1.consul',
    CONSUL_NAMESPACE: 'team-a',
    CONSUL_PARTITION: 'part-1',
    CONSUL_HTTP_SSL: 'true',
    CONSUL_HTTP_SSL_VERIFY: 'false',
    CONSUL_HTTP_AUTH: 'user:pa:ss',
  };

  it('are used with -proxy-id', () => {
    const ca = scratch.write('ca.pem', 'x');
    const agent = applyOptions(WITH_ID, { ...agentEnv, CONSUL_CACERT: ca, CONSUL_CAPATH: scratch.dir }).agent;
    expect(agent).toMatchObject({
      address: 'https://consul.example:8501',
      tlsServerName: 'server.dc1.consul',
      namespace: 'team-a',
      partition: 'part-1',
      useTls: true,
      verifyTls: false,
      basicAuth: { username: 'user', password: 'pa:ss' },
      caFile: ca,
      caPath: scratch.dir,
    });
  });

  it('an empty variable counts as unset', () => {
    expect(applyOptions(WITH_ID, { CONSUL_HTTP_ADDR: '' }).agent?.address).toBe(DEFAULT_HTTP_ADDR);
  });

  it('a bad variable is named when it matters (with -proxy-id)', () => {
    expectUsage(() => applyOptions(WITH_ID, { CONSUL_HTTP_ADDR: 'a b' }), 'CONSUL_HTTP_ADDR', '"a b"');
    expectUsage(() => applyOptions(WITH_ID, { CONSUL_HTTP_SSL: 'maybe' }), 'CONSUL_HTTP_SSL', 'maybe');
    expectUsage(() => applyOptions(WITH_ID, { CONSUL_CACERT: `${scratch.dir}/nope.pem` }), 'CONSUL_CACERT');
  });

  it('do not matter without -proxy-id: no agent, and bad values are not even read', () => {
    const badEnv = {
      CONSUL_HTTP_ADDR: 'a b',
      CONSUL_NAMESPACE: 'x\ny',
      CONSUL_CACERT: '/nonexistent',
      CONSUL_HTTP_SSL: 'maybe',
      CONSUL_HTTP_TOKEN: 'bad token',
      CONSUL_HTTP_TOKEN_FILE: '/nonexistent',
    };
    expect(applyOptions(BASE, badEnv).agent).toBeUndefined();
    expect(statusOptions({}, badEnv).agent).toBeUndefined();
    expect(cleanupOptions({}, badEnv).host.netns).toBeUndefined();
  });
});

describe('ACL token', () => {
  const tokenFile = scratch.write('token', '  file-token\n');
  const envTokenFile = scratch.write('env-token', 'env-file-token\n');
  const all = { token: 'flag-token', 'token-file': tokenFile };
  const env = { CONSUL_HTTP_TOKEN_FILE: envTokenFile, CONSUL_HTTP_TOKEN: 'env-token' };

  it('precedence: -token-file > -token > CONSUL_HTTP_TOKEN_FILE > CONSUL_HTTP_TOKEN', () => {
    const token = (flags: RawOptions, vars: NodeJS.ProcessEnv) => applyOptions({ ...WITH_ID, ...flags }, vars).agent;
    expect(token(all, env)).toMatchObject({ token: 'file-token', tokenSource: '-token-file' });
    expect(token({ token: 'flag-token' }, env)).toMatchObject({ token: 'flag-token', tokenSource: '-token' });
    expect(token({}, env)).toMatchObject({ token: 'env-file-token', tokenSource: 'CONSUL_HTTP_TOKEN_FILE' });
    expect(token({}, { CONSUL_HTTP_TOKEN: 'env-token' })).toMatchObject({ token: 'env-token', tokenSource: 'CONSUL_HTTP_TOKEN' });
    expect(token({}, {})).toMatchObject({ token: undefined, tokenSource: undefined });
  });

  it('a token from the config file ranks as -token', () => {
    const path = configFile({ token: 'cfg-token' });
    expect(applyOptions({ ...WITH_ID, config: path }, env).agent).toMatchObject({ token: 'cfg-token' });
  });

  it('an unreadable token file is named, not its content', () => {
    expectUsage(() => applyOptions({ ...WITH_ID, 'token-file': `${scratch.dir}/none` }, {}), `${scratch.dir}/none`, '-token-file');
  });

  it('a bad token is never echoed, whatever its source', () => {
    const badFile = scratch.write('bad-token', `${SECRET}\u0001x`);
    const cases: [RawOptions, NodeJS.ProcessEnv][] = [
      [{ token: `${SECRET} x` }, {}],
      [{ token: `${SECRET}\nx` }, {}],
      [{ 'token-file': badFile }, {}],
      [{}, { CONSUL_HTTP_TOKEN: `${SECRET}\r\nInjected: 1` }],
      [{}, { CONSUL_HTTP_TOKEN_FILE: badFile }],
      [{ config: configFile({ token: `${SECRET} x` }) }, {}],
      [{ config: configFile({ token: 12345 }) }, {}],
    ];
    for (const [flags, vars] of cases) {
      const error = failure(() => applyOptions({ ...WITH_ID, ...flags }, vars));
      expect([ExitCode.usage, ExitCode.config]).toContain(error.exitCode);
      expect(error.message).not.toContain(SECRET);
      expect(error.message).not.toContain('12345');
      expect(error.message).toMatch(/token/i);
    }
  });
});

describe('cleanup and status options', () => {
  it('cleanup needs nothing', () => {
    expect(cleanupOptions({}, {})).toEqual({ dryRun: false, host: { netns: undefined, backend: 'auto', iptablesMode: 'auto' } });
    expect(cleanupOptions({ 'dry-run': true, 'iptables-mode': 'legacy' }, {})).toMatchObject({
      dryRun: true,
      host: { iptablesMode: 'legacy' },
    });
  });

  it('status without rule flags only reports; with them it checks them like apply', () => {
    expect(statusOptions({}, {})).toMatchObject({ rules: undefined, agent: undefined, json: false });
    expect(statusOptions({ ...BASE, json: true }, {})).toMatchObject({ json: true, rules: { inboundPort: 20000 } });
    expectUsage(() => statusOptions({ 'proxy-uid': '1' }, {}), '-proxy-inbound-port');
    expectUsage(() => statusOptions({ ...WITH_ID, 'proxy-inbound-port': '1' }, {}), '-proxy-id');
  });
});
