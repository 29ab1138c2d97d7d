import type { RedirectConfig } from './ruleset.ts';
import type { PortRange } from './values.ts';

// `verify`, the pure half: what to probe (which UID, which address and port, which listeners), and what the
// probe's observations mean. The probe itself (src/host/probe.ts) only reports what it saw.

export interface Endpoint {
  host: string;
  port: number;
}

/** How the DNS rules are checked: Consul's two DNS modes. */
export interface DnsProbePlan {
  /**
   * `port`: -consul-dns-port, traffic to ADDR:53 goes to ADDR:port. `ip`: -consul-dns-ip alone, all port-53
   * traffic goes to ADDR:53.
   */
  mode: 'port' | 'ip';
  /** Where the client sends its datagram. */
  send: Endpoint;
  /** Where it must arrive: the probe listens there if it can, else asks whatever serves it a DNS question. */
  expect: Endpoint;
}

/** Everything the probe needs: no secret, nothing from the agent but ports. */
export interface ProbePlan {
  /** The ordinary user the client runs as: neither the proxy's UID nor an excluded one. */
  uid: number;
  gid: number;
  /** How long the client waits for each answer: below the kernel's first SYN retransmission (1 s). */
  waitMs: number;
  /** The probe's own limit: it reports what it has seen by then. */
  limitMs: number;
  /** When the CLI kills the probe, whatever it is doing. */
  killAfterMs: number;
  outbound: { send: Endpoint; expect: Endpoint } | undefined;
  dns: DnsProbePlan | undefined;
}

/**
 * What the unprivileged client saw. `timeout`: no answer within waitMs. Otherwise an errno code. A handshake
 * with someone else's listener also gives the client's own end of the connection (`local`), so that the
 * listener half can look for the other end.
 */
export type ClientOutcome =
  | { outcome: 'connected'; local?: Endpoint }
  | { outcome: 'sent' | 'answered' | 'timeout' }
  | { outcome: 'error'; code: string };

/** What the probe saw for one check; facts only, judged by `judge`. */
export interface Observation {
  /** `listener`: the probe bound the expected endpoint itself; `occupied`: something else holds it. */
  method: 'listener' | 'occupied' | 'remote';
  /** For `listener`: whether our nonce arrived on it. */
  arrived: boolean;
  /** What the client saw: a handshake, a DNS answer, a timeout, an error. */
  client: ClientOutcome;
  /** A listen that failed for another reason than the address being taken or not local. */
  listenError?: string;
  /** DNS `port` mode with the port occupied: whether something also serves ADDR:53 itself. */
  nativeServed?: boolean;
  /**
   * Outbound, `occupied`, the client connected: the local end of the socket in this namespace whose peer is the
   * client's end (from /proc/net/tcp and tcp6), i.e. where the connection was accepted; null when there is none
   * (what answered is not on this host). Absent when the probe could not look.
   */
  acceptedOn?: Endpoint | null;
  /** Outbound, `occupied`: the UIDs owning the sockets that listen on the outbound port (from /proc/net/tcp*). */
  holderUids?: number[];
  elapsedMs: number;
}

export interface ProbeReport {
  outbound?: Observation;
  dns?: Observation;
}

export type CheckStatus = 'ok' | 'failed' | 'skipped';

export interface CheckResult {
  status: CheckStatus;
  /** What was sent where, and where it had to arrive. */
  sent?: string;
  expected?: string;
  /** How it was judged: our own listener, a handshake with / answer from what occupies the port. */
  method?: 'listener' | 'handshake' | 'dns-answer';
  detail: string;
  elapsedMs?: number;
}

export interface VerifyResult {
  redirected: boolean;
  netns: string | null;
  /** The UID the client ran as (null when no usable one was found). */
  uid: number | null;
  /** The never-local address the outbound check connected to. */
  address: string | null;
  checks: { outbound: CheckResult; dns: CheckResult };
}

/** Addresses reserved for documentation (RFC 5737): never local, never routed on the Internet. */
export const TEST_NETS = ['192.0.2.1', '198.51.100.1', '203.0.113.1'] as const;
/** nobody, on every Linux distribution. */
export const NOBODY = 65534;
export const CLIENT_WAIT_MS = 900;
/** The hard limit on a verify run (the agent's answer aside): it gives up then, and says so. */
export const HARD_LIMIT_MS = 3_000;
/** What the CLI needs after the probe ends: judging, printing, exiting. */
const EXIT_MARGIN_MS = 100;
/** The least the probe gets, however late it starts: two Node starts and the client's wait. */
const MIN_PROBE_MS = 1_500;

const ipv4Number = (text: string) => text.split('.').reduce((n, octet) => n * 256 + Number(octet), 0);

function inIpv4Cidr(address: string, cidr: string): boolean {
  const [network = '', prefixText = '32'] = cidr.split('/');
  const prefix = Number(prefixText);
  if (prefix === 0) return true;
  const size = 2 ** (32 - prefix);
  return Math.floor(ipv4Number(address) / size) === Math.floor(ipv4Number(network) / size);
}

const inRanges = (port: number, ranges: readonly PortRange[]) => ranges.some((r) => port >= r.low && port <= r.high);

/** The user the client runs as, from the local passwd file: nobody, unless it is the proxy or excluded. */
export function chooseUser(config: RedirectConfig, passwd: string): { uid: number; gid: number } | undefined {
  const users = new Map<number, number>();
  for (const line of passwd.split('\n')) {
    const [, , uid, gid] = line.split(':');
    if (uid !== undefined && /^\d+$/.test(uid)) users.set(Number(uid), gid !== undefined && /^\d+$/.test(gid) ? Number(gid) : Number(uid));
  }
  const unusable = (uid: number) => uid === config.proxyUid || config.excludeUids.includes(uid);
  if (!unusable(NOBODY)) return { uid: NOBODY, gid: users.get(NOBODY) ?? NOBODY };
  // Another UID no account owns, so no real process of someone else's is impersonated.
  for (let uid = NOBODY - 1; uid >= 1000; uid--) {
    if (!unusable(uid) && !users.has(uid)) return { uid, gid: uid };
  }
  return undefined;
}

/** A high port (49152-65535) that no rule treats specially: not the proxy's ports, not excluded, not 53. */
export function choosePort(config: RedirectConfig, random: () => number): number | undefined {
  const usable = (port: number) =>
    port !== config.outboundPort && port !== config.inboundPort && !inRanges(port, config.excludeOutboundPorts);
  const start = 49152 + Math.floor(random() * 16384);
  for (let i = 0; i < 16384; i++) {
    const port = 49152 + ((start - 49152 + i) % 16384);
    if (usable(port)) return port;
  }
  return undefined;
}

/** The first documentation address no -exclude-outbound-cidr covers. */
export function chooseAddress(config: RedirectConfig): string | undefined {
  const cidrs = config.excludeOutboundCidrs.filter((c) => c.family === 4).map((c) => c.cidr);
  return TEST_NETS.find((address) => !cidrs.some((cidr) => inIpv4Cidr(address, cidr)));
}

const LOOPBACK = '127.0.0.1';

export type Planned =
  /** proxyUid is for judging only (who holds the outbound port); the probe is not told. */
  | { plan: ProbePlan; address: string | null; proxyUid: number | undefined; notes: { outbound?: CheckResult; dns?: CheckResult } }
  | { unusable: string };

/** Works out the probe, or the checks that cannot even be tried (and why). */
export function planProbe(
  config: RedirectConfig,
  passwd: string,
  options: { budgetMs?: number; random?: () => number } = {},
): Planned {
  const random = options.random ?? Math.random;
  const killAfterMs = Math.round(Math.min(HARD_LIMIT_MS, Math.max(MIN_PROBE_MS, (options.budgetMs ?? HARD_LIMIT_MS) - EXIT_MARGIN_MS)));
  const user = chooseUser(config, passwd);
  if (user === undefined) return { unusable: 'no UID left to test with: every UID from 1000 to 65534 is the proxy, excluded, or taken' };
  const notes: { outbound?: CheckResult; dns?: CheckResult } = {};
  const port = choosePort(config, random);
  const address = chooseAddress(config);
  let outbound: ProbePlan['outbound'];
  if (port === undefined) {
    notes.outbound = { status: 'failed', detail: 'every port from 49152 to 65535 is excluded by -exclude-outbound-port: nothing to test with' };
  } else if (address === undefined) {
    notes.outbound = {
      status: 'failed',
      detail: `-exclude-outbound-cidr covers every documentation address (${TEST_NETS.join(', ')}): such traffic is not redirected`,
    };
  } else {
    outbound = { send: { host: address, port }, expect: { host: LOOPBACK, port: config.outboundPort } };
  }
  let dns: DnsProbePlan | undefined;
  const { ip, port: dnsPort } = config.dns;
  if (ip === undefined && dnsPort === undefined) {
    notes.dns = { status: 'skipped', detail: 'not configured (no -consul-dns-port or -consul-dns-ip)' };
  } else if (ip?.family === 6) {
    notes.dns = { status: 'skipped', detail: `IPv6 DNS (${ip.address}) is not checked` };
  } else if (dnsPort !== undefined) {
    const host = ip?.address ?? LOOPBACK;
    dns = { mode: 'port', send: { host, port: 53 }, expect: { host, port: dnsPort } };
  } else if (ip !== undefined) {
    // All port-53 traffic goes to IP:53: a datagram to a documentation address shows it.
    dns = { mode: 'ip', send: { host: address ?? TEST_NETS[0], port: 53 }, expect: { host: ip.address, port: 53 } };
  }
  const plan: ProbePlan = { ...user, waitMs: CLIENT_WAIT_MS, limitMs: killAfterMs - 200, killAfterMs, outbound, dns };
  return { plan, address: address ?? null, proxyUid: typeof config.proxyUid === 'number' ? config.proxyUid : undefined, notes };
}

export const endpointText = (e: Endpoint) => (e.host.includes(':') ? `[${e.host}]:${e.port}` : `${e.host}:${e.port}`);

const seconds = (ms: number) => `${(ms / 1000).toFixed(1)} s`;

/** Why the client's attempt did not get through, in words. */
function clientProblem(client: ClientOutcome, waitMs: number): string {
  if (client.outcome === 'timeout') return `no answer within ${seconds(waitMs)}`;
  if (client.outcome === 'sent') return `nothing arrived within ${seconds(waitMs)}`;
  if (client.outcome !== 'error') return client.outcome;
  const known: Record<string, string> = {
    ENETUNREACH: 'network unreachable (no route: any real destination would fail the same way)',
    EHOSTUNREACH: 'host unreachable',
    ECONNREFUSED: 'refused: nothing listens there',
    EACCES: 'refused by a firewall rule (EACCES)',
    EPERM: 'refused by a firewall rule (EPERM)',
  };
  return known[client.code] ?? client.code;
}

/** Who holds the outbound port, as far as the listening sockets' owners tell: the proxy only if its UID does. */
function holderText(port: number, uids: readonly number[] | undefined, proxyUid: number | undefined): string {
  const owners = [...new Set(uids ?? [])].sort((a, b) => a - b);
  if (owners.length === 0) return `port ${port} is in use; no socket listening on it was found to say by whom`;
  const who = `uid ${owners.join(' and uid ')}`;
  if (proxyUid === undefined) return `port ${port} is held by ${who}`;
  if (owners.length === 1 && owners[0] === proxyUid) return `port ${port} is held by ${who}, the proxy's`;
  return `port ${port} is held by ${who}, ${owners.includes(proxyUid) ? 'not only' : 'not'} the proxy's (uid ${proxyUid})`;
}

/** The outbound check's verdict. `proxyUid` only words who holds the port when the probe could not listen. */
export function judgeOutbound(plan: ProbePlan, seen: Observation | undefined, uid: number, proxyUid?: number): CheckResult {
  const target = plan.outbound;
  if (target === undefined) return { status: 'failed', detail: 'not probed' };
  const sent = endpointText(target.send);
  const port = target.expect.port;
  const base = { sent, expected: `port ${port}` };
  if (seen === undefined) return { ...base, status: 'failed', detail: 'the probe reported nothing' };
  const { elapsedMs } = seen;
  if (seen.listenError !== undefined) {
    return { ...base, status: 'failed', elapsedMs, detail: `could not listen on port ${port} to check: ${seen.listenError}` };
  }
  if (seen.method === 'listener') {
    if (seen.arrived) {
      return { ...base, status: 'ok', method: 'listener', elapsedMs, detail: `a connection from uid ${uid} to ${sent} arrived on port ${port}` };
    }
    return {
      ...base,
      status: 'failed',
      method: 'listener',
      elapsedMs,
      detail: `a connection from uid ${uid} to ${sent} did not arrive on port ${port}: ${clientProblem(seen.client, plan.waitMs)}`,
    };
  }
  // Something (Envoy, or not) holds the port, so we cannot see our nonce arrive. A completed handshake alone
  // proves nothing: whatever the default route leads to may answer any port of 192.0.2.1 (a gateway, a
  // transparent proxy, a captive portal). It counts only if the probe found the other end of this very
  // connection in this namespace, accepted on the outbound port.
  const holder = holderText(port, seen.holderUids, proxyUid);
  if (seen.client.outcome === 'connected') {
    const accepted = seen.acceptedOn;
    if (accepted !== undefined && accepted !== null && accepted.port === port) {
      return {
        ...base,
        status: 'ok',
        method: 'handshake',
        elapsedMs,
        detail: `a connection from uid ${uid} to ${sent} was accepted locally on port ${port} within ${seconds(plan.waitMs)} (${holder})`,
      };
    }
    const completed = `a connection from uid ${uid} to ${sent} completed`;
    const detail =
      accepted === undefined
        ? `${completed}, but the probe could not tell where (no socket table, or the client did not say its own end), so it does not count`
        : accepted === null
          ? `${completed}, but not to port ${port}: something on the network answered; the rules do not redirect it`
          : `${completed}, but not to port ${port}: it was accepted on ${endpointText(accepted)} of this host instead`;
    return { ...base, status: 'failed', method: 'handshake', elapsedMs, detail };
  }
  const problem =
    seen.client.outcome === 'error' && seen.client.code === 'ECONNREFUSED'
      ? `connection refused: redirected perhaps, but nothing accepted it on 127.0.0.1:${port}`
      : clientProblem(seen.client, plan.waitMs);
  return {
    ...base,
    status: 'failed',
    method: 'handshake',
    elapsedMs,
    detail: `a connection from uid ${uid} to ${sent} was not accepted by what listens on port ${port}: ${problem} (${holder})`,
  };
}

/** The DNS check's verdict. */
export function judgeDns(plan: ProbePlan, seen: Observation | undefined): CheckResult {
  const dns = plan.dns;
  if (dns === undefined) return { status: 'skipped', detail: 'not probed' };
  const sent = endpointText(dns.send);
  const expected = endpointText(dns.expect);
  const base = { sent, expected };
  if (seen === undefined) return { ...base, status: 'failed', detail: 'the probe reported nothing' };
  const { elapsedMs } = seen;
  if (seen.listenError !== undefined) {
    return { ...base, status: 'failed', elapsedMs, detail: `could not listen on ${expected} (udp) to check: ${seen.listenError}` };
  }
  if (seen.method === 'listener') {
    return seen.arrived
      ? { ...base, status: 'ok', method: 'listener', elapsedMs, detail: `a DNS datagram to ${sent} arrived on ${expected}` }
      : {
          ...base,
          status: 'failed',
          method: 'listener',
          elapsedMs,
          detail: `a DNS datagram to ${sent} did not arrive on ${expected}: ${clientProblem(seen.client, plan.waitMs)}`,
        };
  }
  if (dns.mode === 'port' && seen.method === 'remote') {
    return {
      ...base,
      status: 'skipped',
      elapsedMs,
      detail: `${dns.expect.host} is not an address of this host: an answer could come from its port 53 as well as from ${expected}, so nothing was sent`,
    };
  }
  if (dns.mode === 'port' && seen.nativeServed === true) {
    return {
      ...base,
      status: 'skipped',
      elapsedMs,
      detail: `something serves ${sent} itself and ${expected} is in use too: an answer would not show which one gave it, so nothing was sent`,
    };
  }
  const holder = seen.method === 'remote' ? `the DNS server at ${dns.expect.host}` : `what listens on ${expected} (Consul DNS presumably)`;
  if (seen.client.outcome === 'answered') {
    return { ...base, status: 'ok', method: 'dns-answer', elapsedMs, detail: `a DNS query to ${sent} was answered by ${holder}` };
  }
  return {
    ...base,
    status: 'failed',
    method: 'dns-answer',
    elapsedMs,
    detail: `a DNS query to ${sent} got no answer from ${holder}: ${clientProblem(seen.client, plan.waitMs)}`,
  };
}

/** The whole verdict: redirected when no check failed. */
export function judge(
  planned: Extract<Planned, { plan: ProbePlan }>,
  report: ProbeReport,
  netns: string | undefined,
): VerifyResult {
  const { plan, notes } = planned;
  const outbound = notes.outbound ?? judgeOutbound(plan, report.outbound, plan.uid, planned.proxyUid);
  const dns = notes.dns ?? judgeDns(plan, report.dns);
  return {
    redirected: outbound.status !== 'failed' && dns.status !== 'failed',
    netns: netns ?? null,
    uid: plan.uid,
    address: planned.address,
    checks: { outbound, dns },
  };
}

/** A result where the probe could not run to the end (killed at the hard limit, say): every probed check failed. */
export function probeFailed(planned: Extract<Planned, { plan: ProbePlan }>, netns: string | undefined, why: string): VerifyResult {
  const fail = (check: CheckResult | undefined, sent: Endpoint | undefined, expected: string | undefined): CheckResult =>
    check ?? { status: 'failed', ...(sent ? { sent: endpointText(sent) } : {}), ...(expected ? { expected } : {}), detail: why };
  const { plan, notes } = planned;
  return {
    redirected: false,
    netns: netns ?? null,
    uid: plan.uid,
    address: planned.address,
    checks: {
      outbound: fail(notes.outbound, plan.outbound?.send, plan.outbound && `port ${plan.outbound.expect.port}`),
      dns: fail(notes.dns, plan.dns?.send, plan.dns && endpointText(plan.dns.expect)),
    },
  };
}

/** One line for a person: what arrived where, or what did not. */
export function renderResult(result: VerifyResult): string {
  const where = result.netns === null ? 'this host' : `netns ${result.netns}`;
  const { outbound, dns } = result.checks;
  if (result.redirected) {
    const parts = [outbound.detail];
    if (dns.status === 'ok') parts.push(dns.detail);
    if (dns.status === 'skipped' && dns.sent !== undefined) parts.push(`DNS not checked: ${dns.detail}`);
    return `redirection works (${where}): ${parts.join('; ')}`;
  }
  const failed = [outbound, dns].filter((check) => check.status === 'failed').map((check) => check.detail);
  return `not redirected (${where}): ${failed.join('; ')}`;
}
