import { describe, expect, it, vi } from 'vitest';
import type { CommandContext } from '../../src/commands/context.ts';
import {
  chooseAddress,
  choosePort,
  chooseUser,
  judge,
  planProbe,
  type Observation,
  type ProbePlan,
  type ProbeReport,
} from '../../src/core/verification.ts';
import { ExitCode } from '../../src/errors.ts';
import type { ProbeOutcome } from '../../src/host/probe.ts';
import { PROBE_SOURCE } from '../../src/host/probeScript.ts';
import { captureOutput, fakeRunner, portRanges, redirectConfig } from '../helpers/fakes.ts';

// verify's decisions with a fake probe: no root, no namespace, no packets. Whether this process may change
// netfilter rules is decided by a fake /proc/self/status.
let capabilities = '0000000000001000';
vi.mock('node:fs', async (importOriginal) => {
  const fs = await importOriginal<typeof import('node:fs')>();
  const readFileSync = ((path: unknown, ...rest: unknown[]) =>
    path === '/proc/self/status' ? `Name:\tnode\nCapEff:\t${capabilities}\n` : Reflect.apply(fs.readFileSync, fs, [path, ...rest])) as typeof fs.readFileSync;
  const patched = { ...fs, readFileSync };
  return { ...patched, default: patched };
});

const PASSWD = 'root:x:0:0::/root:/bin/sh\nnobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\nuser:x:65533:100::/home/u:/bin/sh\n';
const FLAGS = ['-proxy-uid=101', '-proxy-inbound-port=20000'];

const seen = (overrides: Partial<Observation> = {}): Observation => ({
  method: 'listener',
  arrived: true,
  client: { outcome: 'connected' },
  elapsedMs: 40,
  ...overrides,
});
/** The outbound port held (by the proxy, uid 101, unless said otherwise); the handshake's other end found on it. */
const envoy = (overrides: Partial<Observation> = {}): Observation =>
  seen({
    method: 'occupied',
    arrived: false,
    client: { outcome: 'connected', local: { host: '198.18.0.1', port: 40000 } },
    acceptedOn: { host: '127.0.0.1', port: 15001 },
    holderUids: [101],
    ...overrides,
  });

/** Runs the CLI in-process with a fake probe answering `answer`; returns what it printed and the plans it probed. */
async function verifyWith(args: readonly string[], answer: (plan: ProbePlan) => ProbeOutcome | Promise<ProbeOutcome>, elapsedMs = 100) {
  const captured = captureOutput();
  const plans: { netns: string | undefined; plan: ProbePlan }[] = [];
  const { run } = await import('../../src/main.ts');
  const code = await run(['verify', ...args], {
    output: captured.output,
    env: {},
    runner: fakeRunner().factory,
    fetchProxyPorts: async () => {
      throw new Error('no agent in unit tests');
    },
    probe: async (netns, plan) => {
      plans.push({ netns, plan });
      return answer(plan);
    },
    elapsedMs: () => elapsedMs,
  } satisfies Partial<CommandContext>);
  return { code, stdout: captured.stdout(), stderr: captured.stderr(), stderrLines: captured.stderrLines(), plans };
}

describe('planning the probe', () => {
  it('tests as nobody, unless nobody is the proxy or excluded; then as a UID no account has', () => {
    expect(chooseUser(redirectConfig(), PASSWD)).toEqual({ uid: 65534, gid: 65534 });
    expect(chooseUser(redirectConfig({ excludeUids: [65534] }), PASSWD)).toEqual({ uid: 65532, gid: 65532 });
    expect(chooseUser(redirectConfig({ proxyUid: 65534, excludeUids: [65532] }), PASSWD)).toEqual({ uid: 65531, gid: 65531 });
  });

  it('connects to a high port no rule treats specially', () => {
    const config = redirectConfig({ outboundPort: 49152, inboundPort: 49153, excludeOutboundPorts: portRanges('49154:49200') });
    expect(choosePort(config, () => 0)).toBe(49201);
    expect(choosePort(config, () => 0.99999)).toBe(65535);
    expect(choosePort(redirectConfig({ excludeOutboundPorts: portRanges('1:65535') }), () => 0)).toBeUndefined();
  });

  it('connects to TEST-NET-1 unless an exclusion covers it, then TEST-NET-2 and -3', () => {
    const cidrs = (...list: string[]) => redirectConfig({ excludeOutboundCidrs: list.map((cidr) => ({ family: 4 as const, cidr })) });
    expect(chooseAddress(redirectConfig())).toBe('192.0.2.1');
    expect(chooseAddress(cidrs('192.0.2.0/24'))).toBe('198.51.100.1');
    expect(chooseAddress(cidrs('192.0.0.0/8', '198.51.100.1/32'))).toBe('203.0.113.1');
    expect(chooseAddress(cidrs('0.0.0.0/0'))).toBeUndefined();
  });

  it("plans Consul's two DNS modes", () => {
    const port = planProbe(redirectConfig({ dns: { port: 8600 } }), PASSWD);
    expect('plan' in port && port.plan.dns).toEqual({ mode: 'port', send: { host: '127.0.0.1', port: 53 }, expect: { host: '127.0.0.1', port: 8600 } });
    const both = planProbe(redirectConfig({ dns: { port: 8600, ip: { family: 4, address: '198.18.0.53' } } }), PASSWD);
    expect('plan' in both && both.plan.dns).toMatchObject({ mode: 'port', send: { host: '198.18.0.53', port: 53 }, expect: { port: 8600 } });
    const ip = planProbe(redirectConfig({ dns: { ip: { family: 4, address: '127.0.0.1' } } }), PASSWD);
    expect('plan' in ip && ip.plan.dns).toEqual({ mode: 'ip', send: { host: '192.0.2.1', port: 53 }, expect: { host: '127.0.0.1', port: 53 } });
  });

  it('keeps within 3 s from the process start: the later the probe starts, the sooner it is killed, within bounds', () => {
    const kill = (budgetMs: number) => {
      const planned = planProbe(redirectConfig(), PASSWD, { budgetMs });
      return 'plan' in planned ? planned.plan.killAfterMs : undefined;
    };
    expect(kill(2_900)).toBe(2_800);
    expect(kill(5_000)).toBe(3_000);
    expect(kill(200)).toBe(1_500);
  });

  it('ships a probe that is one self-contained program', () => {
    expect(() => new Function(PROBE_SOURCE)).not.toThrow();
    expect(PROBE_SOURCE).not.toMatch(/\bimport\b|__name|__require/);
  });
});

describe('judging what the probe saw', () => {
  const planned = (config = redirectConfig({ dns: { port: 8600 } })) => {
    const result = planProbe(config, PASSWD, { random: () => 0 });
    if (!('plan' in result)) throw new Error('unplannable');
    return result;
  };

  it.each<[string, ProbeReport, boolean, string]>([
    ['our listener got the nonce', { outbound: seen(), dns: seen() }, true, 'arrived on port 15001'],
    ['Envoy accepted the handshake', { outbound: envoy(), dns: seen() }, true, 'accepted locally on port 15001'],
    ['nothing arrived', { outbound: seen({ arrived: false, client: { outcome: 'timeout' } }), dns: seen() }, false, 'did not arrive on port 15001: no answer within 0.9 s'],
    ['Envoy holds the port but nothing answered', { outbound: seen({ method: 'occupied', arrived: false, client: { outcome: 'timeout' } }), dns: seen() }, false, 'was not accepted'],
    ['no route', { outbound: seen({ arrived: false, client: { outcome: 'error', code: 'ENETUNREACH' } }), dns: seen() }, false, 'network unreachable'],
    ['DNS did not arrive', { outbound: seen(), dns: seen({ arrived: false, client: { outcome: 'sent' } }) }, false, 'did not arrive on 127.0.0.1:8600: nothing arrived'],
    ['Consul DNS answered', { outbound: seen(), dns: seen({ method: 'occupied', arrived: false, client: { outcome: 'answered' }, nativeServed: false }) }, true, 'answered by'],
  ])('%s', (_name, report, redirected, fragment) => {
    const result = judge(planned(), report, '/run/netns/web');
    expect(result.redirected).toBe(redirected);
    expect(JSON.stringify(result.checks)).toContain(fragment);
  });

  it('counts a handshake only if its other end was found accepted on the outbound port', () => {
    const outbound = (observation: Observation) => judge(planned(redirectConfig({ proxyUid: 101 })), { outbound: observation }, undefined).checks.outbound;
    // The repro: no rules, a stray listener on 15001, the default route to a gateway that answers every port.
    const answeredOutside = outbound(envoy({ acceptedOn: null, holderUids: [42001] }));
    expect(answeredOutside).toMatchObject({ status: 'failed', method: 'handshake' });
    expect(answeredOutside.detail).toMatch(
      /^a connection from uid 65534 to 192\.0\.2\.1:49152 completed, but not to port 15001: something on the network answered; the rules do not redirect it$/,
    );
    expect(outbound(envoy({ acceptedOn: { host: '127.0.0.1', port: 8080 } }))).toMatchObject({
      status: 'failed',
      detail: expect.stringMatching(/completed, but not to port 15001: it was accepted on 127\.0\.0\.1:8080 of this host instead$/),
    });
    // The probe could not look (no socket table, or no client address): not counted either.
    const { acceptedOn: _unknown, ...notLooked } = envoy();
    expect(outbound(notLooked)).toMatchObject({ status: 'failed', detail: expect.stringContaining('could not tell where') });
    // Accepted on the port, by IPv4 or a dual-stack listener's IPv4-mapped socket alike.
    expect(outbound(envoy()).status).toBe('ok');
  });

  it('names the proxy as the holder of the outbound port only when its UID holds it', () => {
    const outbound = (observation: Observation) => judge(planned(redirectConfig({ proxyUid: 101 })), { outbound: observation }, undefined).checks.outbound.detail;
    expect(outbound(envoy())).toMatch(/accepted locally on port 15001 within 0\.9 s \(port 15001 is held by uid 101, the proxy's\)$/);
    expect(outbound(envoy({ holderUids: [0] }))).toContain("(port 15001 is held by uid 0, not the proxy's (uid 101))");
    expect(outbound(envoy({ holderUids: [101, 0, 101] }))).toContain("(port 15001 is held by uid 0 and uid 101, not only the proxy's (uid 101))");
    expect(outbound(envoy({ holderUids: [] }))).toContain('(port 15001 is in use; no socket listening on it was found to say by whom)');
    expect(outbound(envoy({ holderUids: [0] }))).not.toMatch(/presumably/);
  });

  it('does not claim DNS works when a local resolver also serves 127.0.0.1:53, or the DNS address is remote', () => {
    const local = judge(planned(), { outbound: seen(), dns: seen({ method: 'occupied', arrived: false, nativeServed: true, client: { outcome: 'error', code: 'not attempted' } }) }, undefined);
    expect(local.checks.dns).toMatchObject({ status: 'skipped' });
    const remote = planned(redirectConfig({ dns: { port: 8600, ip: { family: 4, address: '198.18.0.53' } } }));
    expect(judge(remote, { outbound: seen(), dns: seen({ method: 'remote', arrived: false }) }, undefined).checks.dns.status).toBe('skipped');
  });
});

describe('redirect-traffic verify', () => {
  it('exits 0 with one line on stdout when the connection arrived', async () => {
    const result = await verifyWith(['-netns', '/proc/self/ns/net', ...FLAGS], () => ({ report: { outbound: seen() } }));
    expect(result.code).toBe(ExitCode.ok);
    expect(result.stderr).toBe('');
    expect(result.stdout).toMatch(/^redirection works \(netns \/proc\/self\/ns\/net\): a connection from uid 65534 to 192\.0\.2\.1:\d+ arrived on port 15001\n$/);
    expect(result.plans).toHaveLength(1);
    expect(result.plans[0]).toMatchObject({ netns: '/proc/self/ns/net', plan: { uid: 65534, outbound: { send: { host: '192.0.2.1' }, expect: { port: 15001 } } } });
  });

  it('exits 5 with one line on stderr saying what did not arrive where', async () => {
    const result = await verifyWith([...FLAGS, '-proxy-outbound-port=15002'], () => ({
      report: { outbound: seen({ arrived: false, client: { outcome: 'timeout' } }) },
    }));
    expect(result.code).toBe(ExitCode.notRedirected);
    expect(result.stdout).toBe('');
    expect(result.stderrLines).toHaveLength(1);
    expect(result.stderrLines[0]).toMatch(
      /^redirect-traffic: error: not redirected \(this host\): a connection from uid 65534 to 192\.0\.2\.1:\d+ did not arrive on port 15002: no answer within 0\.9 s$/,
    );
  });

  it('prints the result object with --json', async () => {
    const result = await verifyWith([...FLAGS, '-consul-dns-port=8600', '--json'], () => ({
      report: { outbound: envoy(), dns: seen({ arrived: false, client: { outcome: 'sent' } }) },
    }));
    expect(result.code).toBe(ExitCode.notRedirected);
    const parsed = JSON.parse(result.stdout);
    expect(parsed).toEqual({
      redirected: false,
      netns: null,
      uid: 65534,
      address: '192.0.2.1',
      checks: {
        outbound: {
          status: 'ok',
          method: 'handshake',
          sent: expect.stringMatching(/^192\.0\.2\.1:\d+$/),
          expected: 'port 15001',
          elapsedMs: 40,
          detail: expect.stringContaining('accepted locally'),
        },
        dns: {
          status: 'failed',
          method: 'listener',
          sent: '127.0.0.1:53',
          expected: '127.0.0.1:8600',
          elapsedMs: 40,
          detail: 'a DNS datagram to 127.0.0.1:53 did not arrive on 127.0.0.1:8600: nothing arrived within 0.9 s',
        },
      },
    });
    expect(result.stderrLines).toHaveLength(1);
  });

  it('exits 75 within its limit when the probe is stopped before it could tell, and says to try again', async () => {
    const result = await verifyWith(FLAGS, (plan) => ({ incomplete: `the probe did not finish within ${plan.killAfterMs / 1000} s and was stopped` }), 400);
    expect(result.code).toBe(ExitCode.tempFail);
    expect(result.plans[0]?.plan.killAfterMs).toBe(2_500);
    expect(result.stderr).toContain('did not finish within 2.5 s');
    expect(result.stderr).toContain('the machine may be too busy to tell; try again');
  });

  it('needs root, and does not suggest --dry-run', async () => {
    capabilities = '0000000000000000';
    try {
      const result = await verifyWith(FLAGS, () => {
        throw new Error('must not probe');
      });
      expect(result.code).toBe(ExitCode.noPermission);
      expect(result.stderrLines).toEqual(['redirect-traffic: error: verifying the redirection needs root (CAP_NET_ADMIN): run it with sudo']);
      expect(result.plans).toEqual([]);
    } finally {
      capabilities = '0000000000001000';
    }
  });

  it('never hands the ACL token to the probe', async () => {
    const result = await verifyWith([...FLAGS, '-token=S3CR3T-t0k3n'], () => ({ report: { outbound: seen() } }));
    expect(result.code).toBe(0);
    expect(JSON.stringify(result.plans)).not.toContain('S3CR3T');
  });

  it('refuses bad flags before probing (exit 64)', async () => {
    const result = await verifyWith(['-proxy-uid=101'], () => {
      throw new Error('must not probe');
    });
    expect(result.code).toBe(ExitCode.usage);
    expect(result.plans).toEqual([]);
  });
});
