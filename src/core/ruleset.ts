import type { Cidr, Family, IpAddress, PortRange, Uid } from './values.ts';

// The NAT ruleset Consul's `redirect-traffic` installs, as typed data. Nothing here touches the host, and
// nothing here is spelled the way a firewall spells it: each backend's renderer does that.

export const CHAINS = {
  inbound: 'CONSUL_PROXY_INBOUND',
  inboundRedirect: 'CONSUL_PROXY_IN_REDIRECT',
  output: 'CONSUL_PROXY_OUTPUT',
  redirect: 'CONSUL_PROXY_REDIRECT',
  dnsRedirect: 'CONSUL_DNS_REDIRECT',
} as const;

export type OwnedChain = (typeof CHAINS)[keyof typeof CHAINS];

/** Consul's creation order; every one is always created, the DNS chain included. */
export const OWNED_CHAINS: readonly OwnedChain[] = Object.values(CHAINS);

/** Where the kernel hands packets to our chains: iptables' built-in chains, nftables' base chains. */
export type Hook = 'prerouting' | 'output';

export const DEFAULT_OUTBOUND_PORT = 15001;

export interface DnsRedirect {
  /** `-consul-dns-ip`; without a port, all port-53 traffic is sent to it. */
  ip?: IpAddress;
  /** `-consul-dns-port`; only traffic to the DNS IP (default loopback) on 53 is sent to IP:port. */
  port?: number;
}

/** Everything a ruleset depends on, already validated and resolved (numeric UIDs, canonical CIDRs). */
export interface RedirectConfig {
  proxyUid: Uid;
  inboundPort: number;
  outboundPort: number;
  /** Ports or ranges, in the order given: the registration's own first, then the user's. */
  excludeInboundPorts: readonly PortRange[];
  excludeOutboundPorts: readonly PortRange[];
  excludeOutboundCidrs: readonly Cidr[];
  excludeUids: readonly Uid[];
  dns: DnsRedirect;
  /** IPv6 is redirected too; otherwise it is left alone. */
  dualStack: boolean;
}

/** Where DNS is sent: the address and, with `-consul-dns-port`, the port. */
export interface Dnat {
  address: IpAddress;
  port?: number;
}

export type Target =
  | { kind: 'jump'; chain: OwnedChain }
  | { kind: 'return' }
  | { kind: 'redirect'; port: number }
  | { kind: 'dnat'; to: Dnat };

/** Many values matched by one rule: an nftables named set. Its elements are one family, or ports, or UIDs. */
export interface ValueSet<T> {
  set: string;
  elements: readonly T[];
}

export interface Rule {
  /** One of our chains, or the hook a hook-chain rule sits on. */
  chain: OwnedChain | Hook;
  /** Matches only this address family: meaningful where one table sees both (nftables `inet`). */
  family?: Family;
  protocol?: 'tcp' | 'udp';
  destination?: Cidr | (ValueSet<Cidr> & { family: Family });
  destinationPort?: PortRange | ValueSet<PortRange>;
  uidOwner?: Uid | ValueSet<Uid>;
  target: Target;
}

export const isValueSet = <T>(value: T | ValueSet<T> | undefined): value is ValueSet<T> =>
  typeof value === 'object' && value !== null && 'set' in value;

export interface Ruleset {
  /** The one family an iptables table serves, or both at once (nftables `inet`). */
  family: Family | 'inet';
  /** Rules in final kernel order within each chain; hook rules in the order they are appended. */
  rules: readonly Rule[];
}

const LOOPBACK: Record<Family, Cidr> = { 4: { family: 4, cidr: '127.0.0.1/32' }, 6: { family: 6, cidr: '::1/128' } };
const LOOPBACK_ADDRESS: Record<Family, IpAddress> = { 4: { family: 4, address: '127.0.0.1' }, 6: { family: 6, address: '::1' } };

type Step = { insert: boolean; rule: Rule };
const append = (rule: Rule): Step => ({ insert: false, rule });
const insertFirst = (rule: Rule): Step => ({ insert: true, rule });
const RETURN: Target = { kind: 'return' };

const hostPrefix = (ip: IpAddress): Cidr => ({ family: ip.family, cidr: `${ip.address}/${ip.family === 4 ? 32 : 128}` });

const PORT_53: PortRange = { low: 53, high: 53 };

/** The DNS addresses that get rules: the given one, else loopback of the families the table serves. */
function dnsSteps(dns: DnsRedirect, addresses: readonly IpAddress[]): Step[] {
  const steps: Step[] = [];
  for (const address of addresses) {
    const destination = dns.port === undefined ? {} : { destination: hostPrefix(address) };
    const target: Target = { kind: 'dnat', to: dns.port === undefined ? { address } : { address, port: dns.port } };
    const dnsChain = CHAINS.dnsRedirect;
    for (const protocol of ['udp', 'tcp'] as const) {
      steps.push(append({ chain: dnsChain, ...destination, protocol, destinationPort: PORT_53, target }));
    }
    for (const protocol of ['udp', 'tcp'] as const) {
      steps.push(append({ chain: 'output', ...destination, protocol, destinationPort: PORT_53, target: { kind: 'jump', chain: dnsChain } }));
    }
  }
  return steps;
}

const wantsDns = (dns: DnsRedirect) => dns.ip !== undefined || dns.port !== undefined;

/** The exclusions of one kind, inserted one rule each (iptables) or as one rule matching a set (nftables). */
interface Exclusions {
  ports(chain: OwnedChain, ports: readonly PortRange[], set: string): Step[];
  cidrs(cidrs: readonly Cidr[]): Step[];
  uids(uids: readonly Uid[]): Step[];
}

const oneRuleEach: Exclusions = {
  ports: (chain, ports) => ports.map((port) => insertFirst({ chain, protocol: 'tcp', destinationPort: port, target: RETURN })),
  cidrs: (cidrs) => cidrs.map((cidr) => insertFirst({ chain: CHAINS.output, destination: cidr, target: RETURN })),
  uids: (uids) => uids.map((uid) => insertFirst({ chain: CHAINS.output, uidOwner: uid, target: RETURN })),
};

/** Names of the nftables sets; one per kind of exclusion, so any number of them costs one lookup. */
export const SET_NAMES = {
  inboundPorts: 'excluded_inbound_ports',
  outboundPorts: 'excluded_outbound_ports',
  v4: 'excluded_v4',
  v6: 'excluded_v6',
  uids: 'excluded_uids',
} as const;

const oneRulePerSet: Exclusions = {
  ports: (chain, ports, set) =>
    ports.length === 0 ? [] : [insertFirst({ chain, protocol: 'tcp', destinationPort: { set, elements: ports }, target: RETURN })],
  cidrs: (cidrs) =>
    ([4, 6] as const).flatMap((family) => {
      const elements = cidrs.filter((cidr) => cidr.family === family);
      const set = family === 4 ? SET_NAMES.v4 : SET_NAMES.v6;
      return elements.length === 0 ? [] : [insertFirst({ chain: CHAINS.output, destination: { set, family, elements }, target: RETURN })];
    }),
  uids: (uids) =>
    uids.length === 0 ? [] : [insertFirst({ chain: CHAINS.output, uidOwner: { set: SET_NAMES.uids, elements: uids }, target: RETURN })],
};

/**
 * Consul's command sequence, `-A` and `-I` alike: for one iptables family (reference section 3.2), or for
 * one nftables `inet` table serving both (section 3.7).
 */
function consulSteps(config: RedirectConfig, family: Family | 'inet', exclusions: Exclusions): Step[] {
  const inet = family === 'inet';
  const families: Family[] = inet ? [4, 6] : [family];
  const steps: Step[] = [];
  if (inet && !config.dualStack) {
    // One table sees both families; without -dual-stack IPv6 must pass untouched, as with no ip6tables rules.
    for (const hook of ['output', 'prerouting'] as const) steps.push(append({ chain: hook, family: 6, target: RETURN }));
  }
  steps.push(append({ chain: CHAINS.redirect, protocol: 'tcp', target: { kind: 'redirect', port: config.outboundPort } }));
  if (wantsDns(config.dns)) {
    // The DNS address decides the family: an iptables table of the other family gets no DNS rules. Without
    // one, it is 127.0.0.1, and Consul's inet table with -dual-stack also sends ::1's DNS to the port.
    const loopbacks = inet && config.dualStack ? [LOOPBACK_ADDRESS[4], LOOPBACK_ADDRESS[6]] : [LOOPBACK_ADDRESS[4]];
    const addresses = config.dns.ip !== undefined ? [config.dns.ip] : loopbacks;
    steps.push(...dnsSteps(config.dns, addresses.filter((address) => families.includes(address.family))));
  }
  steps.push(
    append({ chain: 'output', protocol: 'tcp', target: { kind: 'jump', chain: CHAINS.output } }),
    append({ chain: CHAINS.output, uidOwner: config.proxyUid, target: RETURN }),
    ...families.map((f) => append({ chain: CHAINS.output, destination: LOOPBACK[f], target: RETURN })),
    append({ chain: CHAINS.output, target: { kind: 'jump', chain: CHAINS.redirect } }),
    ...exclusions.ports(CHAINS.output, config.excludeOutboundPorts, SET_NAMES.outboundPorts),
    ...exclusions.cidrs(config.excludeOutboundCidrs.filter((cidr) => families.includes(cidr.family))),
    ...exclusions.uids(config.excludeUids),
    append({ chain: CHAINS.inboundRedirect, protocol: 'tcp', target: { kind: 'redirect', port: config.inboundPort } }),
    append({ chain: 'prerouting', protocol: 'tcp', target: { kind: 'jump', chain: CHAINS.inbound } }),
    append({ chain: CHAINS.inbound, protocol: 'tcp', target: { kind: 'jump', chain: CHAINS.inboundRedirect } }),
    ...exclusions.ports(CHAINS.inbound, config.excludeInboundPorts, SET_NAMES.inboundPorts),
  );
  return steps;
}

/**
 * Replays the steps to get the final order, so the reversal repeated inserts cause is reproduced by
 * construction rather than by hand.
 */
function replay(family: Family | 'inet', steps: readonly Step[]): Ruleset {
  // Per chain: rules inserted at the top (newest first once reversed) and rules appended.
  const chains = new Map<string, { inserted: Rule[]; appended: Rule[] }>();
  for (const { insert, rule } of steps) {
    let chain = chains.get(rule.chain);
    if (!chain) {
      chain = { inserted: [], appended: [] };
      chains.set(rule.chain, chain);
    }
    (insert ? chain.inserted : chain.appended).push(rule);
  }
  // Loops, not spreads: with thousands of exclusions, copying arrays around shows in the start-up time.
  const rules: Rule[] = [];
  for (const { inserted, appended } of chains.values()) {
    for (let index = inserted.length - 1; index >= 0; index--) rules.push(inserted[index] as Rule);
    for (const rule of appended) rules.push(rule);
  }
  return { family, rules };
}

/** The rules of one iptables table (one family), one rule per exclusion, exactly as Consul installs them. */
export function buildRuleset(config: RedirectConfig, family: Family): Ruleset {
  return replay(family, consulSteps(config, family, oneRuleEach));
}

/**
 * The rules of one nftables `inet` table for both families, as Consul's nftables branch installs them,
 * except that each kind of exclusion is one rule matching a set (`exclusionSets: false` gives Consul's
 * one rule each, for comparison).
 */
export function buildInetRuleset(config: RedirectConfig, options: { exclusionSets: boolean } = { exclusionSets: true }): Ruleset {
  return replay('inet', consulSteps(config, 'inet', options.exclusionSets ? oneRulePerSet : oneRuleEach));
}

/** The families an iptables backend writes rules to. */
export const redirectedFamilies = (config: RedirectConfig): Family[] => (config.dualStack ? [4, 6] : [4]);
