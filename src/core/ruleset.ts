import type { Cidr, Family, IpAddress } from './values.ts';

// The NAT ruleset Consul's `redirect-traffic` installs, as data. Nothing here touches the host.

export const CHAINS = {
  inbound: 'CONSUL_PROXY_INBOUND',
  inboundRedirect: 'CONSUL_PROXY_IN_REDIRECT',
  output: 'CONSUL_PROXY_OUTPUT',
  redirect: 'CONSUL_PROXY_REDIRECT',
  dnsRedirect: 'CONSUL_DNS_REDIRECT',
} as const;

/** Consul's creation order; every one is always created, the DNS chain included. */
export const OWNED_CHAINS: readonly string[] = Object.values(CHAINS);

/** Built-in chains Consul hooks into. */
export const HOOK_CHAINS: readonly string[] = ['PREROUTING', 'OUTPUT'];

export const DEFAULT_OUTBOUND_PORT = 15001;

export interface DnsRedirect {
  /** `-consul-dns-ip`; without a port, all port-53 traffic is sent to it. */
  ip?: IpAddress;
  /** `-consul-dns-port`; only traffic to the DNS IP (default loopback) on 53 is sent to IP:port. */
  port?: number;
}

/** Everything a ruleset depends on, already validated and resolved (numeric UIDs, canonical CIDRs). */
export interface RedirectConfig {
  proxyUid: number;
  inboundPort: number;
  outboundPort: number;
  /** Ports or ranges, in the order given: the registration's own first, then the user's. */
  excludeInboundPorts: readonly string[];
  excludeOutboundPorts: readonly string[];
  excludeOutboundCidrs: readonly Cidr[];
  excludeUids: readonly number[];
  dns: DnsRedirect;
}

export type Target =
  | { kind: 'jump'; chain: string }
  | { kind: 'return' }
  | { kind: 'redirect'; port: number }
  | { kind: 'dnat'; to: string };

export interface Rule {
  chain: string;
  destination?: string;
  protocol?: 'tcp' | 'udp';
  destinationPort?: string;
  uidOwner?: number;
  target: Target;
}

export interface Ruleset {
  family: Family;
  /** Rules in final kernel order within each chain; hook-chain jumps in the order they are appended. */
  rules: readonly Rule[];
}

const LOOPBACK: Record<Family, string> = { 4: '127.0.0.1/32', 6: '::1/128' };
const DEFAULT_DNS_IP: IpAddress = { family: 4, address: '127.0.0.1' };

type Step = { insert: boolean; rule: Rule };
const append = (rule: Rule): Step => ({ insert: false, rule });
const insertFirst = (rule: Rule): Step => ({ insert: true, rule });

function hostPrefix(ip: IpAddress): string {
  return `${ip.address}/${ip.family === 4 ? 32 : 128}`;
}

function dnatTarget(ip: IpAddress, port?: number): Target {
  if (port === undefined) return { kind: 'dnat', to: ip.address };
  return { kind: 'dnat', to: ip.family === 6 ? `[${ip.address}]:${port}` : `${ip.address}:${port}` };
}

function dnsSteps(dns: DnsRedirect, family: Family): Step[] {
  if (dns.ip === undefined && dns.port === undefined) return [];
  const ip = dns.ip ?? DEFAULT_DNS_IP;
  // The DNS address decides the family; the other family's table gets no DNS rules.
  if (ip.family !== family) return [];
  const destination = dns.port === undefined ? {} : { destination: hostPrefix(ip) };
  const target = dnatTarget(ip, dns.port);
  const protocols = ['udp', 'tcp'] as const;
  return [
    ...protocols.map((protocol) =>
      append({ chain: CHAINS.dnsRedirect, ...destination, protocol, destinationPort: '53', target }),
    ),
    ...protocols.map((protocol) =>
      append({
        chain: 'OUTPUT',
        ...destination,
        protocol,
        destinationPort: '53',
        target: { kind: 'jump', chain: CHAINS.dnsRedirect },
      }),
    ),
  ];
}

/** Consul's command sequence (reference section 3.2), `-A` and `-I` alike, for one address family. */
function consulSteps(config: RedirectConfig, family: Family): Step[] {
  const ret: Target = { kind: 'return' };
  return [
    append({ chain: CHAINS.redirect, protocol: 'tcp', target: { kind: 'redirect', port: config.outboundPort } }),
    ...dnsSteps(config.dns, family),
    append({ chain: 'OUTPUT', protocol: 'tcp', target: { kind: 'jump', chain: CHAINS.output } }),
    append({ chain: CHAINS.output, uidOwner: config.proxyUid, target: ret }),
    append({ chain: CHAINS.output, destination: LOOPBACK[family], target: ret }),
    append({ chain: CHAINS.output, target: { kind: 'jump', chain: CHAINS.redirect } }),
    ...config.excludeOutboundPorts.map((port) =>
      insertFirst({ chain: CHAINS.output, protocol: 'tcp', destinationPort: port, target: ret }),
    ),
    ...config.excludeOutboundCidrs
      .filter((cidr) => cidr.family === family)
      .map((cidr) => insertFirst({ chain: CHAINS.output, destination: cidr.cidr, target: ret })),
    ...config.excludeUids.map((uid) => insertFirst({ chain: CHAINS.output, uidOwner: uid, target: ret })),
    append({
      chain: CHAINS.inboundRedirect,
      protocol: 'tcp',
      target: { kind: 'redirect', port: config.inboundPort },
    }),
    append({ chain: 'PREROUTING', protocol: 'tcp', target: { kind: 'jump', chain: CHAINS.inbound } }),
    append({ chain: CHAINS.inbound, protocol: 'tcp', target: { kind: 'jump', chain: CHAINS.inboundRedirect } }),
    ...config.excludeInboundPorts.map((port) =>
      insertFirst({ chain: CHAINS.inbound, protocol: 'tcp', destinationPort: port, target: ret }),
    ),
  ];
}

/**
 * Replays Consul's sequence to get the final order, so the reversal its repeated `-I` causes is
 * reproduced by construction rather than by hand.
 */
export function buildRuleset(config: RedirectConfig, family: Family): Ruleset {
  // Per chain: rules inserted at the top (newest first once reversed) and rules appended.
  const chains = new Map<string, { inserted: Rule[]; appended: Rule[] }>();
  for (const { insert, rule } of consulSteps(config, family)) {
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

/** A rule's match and target exactly as `iptables-save` prints them, so installed and wanted compare as text. */
export function ruleSpec(rule: Rule): string {
  let match = '';
  // A /0 destination matches everything, and iptables-save leaves it out.
  if (rule.destination !== undefined && !rule.destination.endsWith('/0')) match += `-d ${rule.destination} `;
  if (rule.protocol !== undefined) match += `-p ${rule.protocol} `;
  if (rule.destinationPort !== undefined) match += `-m ${rule.protocol ?? 'tcp'} --dport ${rule.destinationPort} `;
  if (rule.uidOwner !== undefined) match += `-m owner --uid-owner ${rule.uidOwner} `;
  return match + targetSpec(rule.target);
}

function targetSpec(target: Target): string {
  switch (target.kind) {
    case 'jump':
      return `-j ${target.chain}`;
    case 'return':
      return '-j RETURN';
    case 'redirect':
      return `-j REDIRECT --to-ports ${target.port}`;
    case 'dnat':
      return `-j DNAT --to-destination ${target.to}`;
  }
}
