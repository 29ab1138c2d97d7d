import { describe, expect, it } from 'vitest';
import { desiredState, EMPTY_STATE, HOOK_CHAINS, renderTransaction, ruleSpec } from '../../src/core/natTable.ts';
import {
  buildRuleset,
  CHAINS,
  DEFAULT_OUTBOUND_PORT,
  OWNED_CHAINS,
  type RedirectConfig,
  type Rule,
  type Ruleset,
} from '../../src/core/ruleset.ts';
import type { Cidr, Family, IpAddress, PortRange } from '../../src/core/values.ts';
import { redirectConfig, portRanges } from '../helpers/fakes.ts';

// The ruleset is checked against an independent oracle: Consul's literal command list (reference §3.2/§3.3),
// replayed on a toy nat table (-N/-A/-I) and printed the way `iptables -t nat -S` prints it.

const cidr = (text: string): Cidr => ({ family: text.includes(':') ? 6 : 4, cidr: text });
const ip = (text: string): IpAddress => ({ family: text.includes(':') ? 6 : 4, address: text });

const config = redirectConfig;

/** A port or range as Consul's flag gives it to iptables (`a:a` as iptables-save prints it: `a`). */
const rangeText = (p: PortRange) => (p.low === p.high ? String(p.low) : `${p.low}:${p.high}`);

/** The chain a rule sits in, as iptables names it. */
const chainOf = (rule: Rule) => (rule.chain === 'prerouting' ? 'PREROUTING' : rule.chain === 'output' ? 'OUTPUT' : rule.chain);

/** Consul's command sequence for a config, written from the reference, not from src. */
function consulCommands(c: RedirectConfig, family: Family = 4): string[] {
  const loopback = family === 4 ? '127.0.0.1/32' : '::1/128';
  const cmds = [
    '-N CONSUL_PROXY_INBOUND',
    '-N CONSUL_PROXY_IN_REDIRECT',
    '-N CONSUL_PROXY_OUTPUT',
    '-N CONSUL_PROXY_REDIRECT',
    '-N CONSUL_DNS_REDIRECT',
    `-A CONSUL_PROXY_REDIRECT -p tcp -j REDIRECT --to-port ${c.outboundPort}`,
  ];
  const { ip: dnsIp, port: dnsPort } = c.dns;
  const dnsAddress = dnsIp ?? ip('127.0.0.1');
  if ((dnsIp !== undefined || dnsPort !== undefined) && dnsAddress.family === family) {
    const a = dnsAddress.address;
    if (dnsPort === undefined) {
      for (const p of ['udp', 'tcp']) cmds.push(`-A CONSUL_DNS_REDIRECT -p ${p} --dport 53 -j DNAT --to-destination ${a}`);
      for (const p of ['udp', 'tcp']) cmds.push(`-A OUTPUT -p ${p} --dport 53 -j CONSUL_DNS_REDIRECT`);
    } else {
      const to = family === 6 ? `[${a}]:${dnsPort}` : `${a}:${dnsPort}`;
      for (const p of ['udp', 'tcp']) cmds.push(`-A CONSUL_DNS_REDIRECT -p ${p} -d ${a} --dport 53 -j DNAT --to-destination ${to}`);
      for (const p of ['udp', 'tcp']) cmds.push(`-A OUTPUT -p ${p} -d ${a} --dport 53 -j CONSUL_DNS_REDIRECT`);
    }
  }
  cmds.push(
    '-A OUTPUT -p tcp -j CONSUL_PROXY_OUTPUT',
    `-A CONSUL_PROXY_OUTPUT -m owner --uid-owner ${c.proxyUid} -j RETURN`,
    `-A CONSUL_PROXY_OUTPUT -d ${loopback} -j RETURN`,
    '-A CONSUL_PROXY_OUTPUT -j CONSUL_PROXY_REDIRECT',
  );
  for (const p of c.excludeOutboundPorts) cmds.push(`-I CONSUL_PROXY_OUTPUT -p tcp --dport ${rangeText(p)} -j RETURN`);
  for (const x of c.excludeOutboundCidrs) if (x.family === family) cmds.push(`-I CONSUL_PROXY_OUTPUT -d ${x.cidr} -j RETURN`);
  for (const u of c.excludeUids) cmds.push(`-I CONSUL_PROXY_OUTPUT -m owner --uid-owner ${u} -j RETURN`);
  cmds.push(
    `-A CONSUL_PROXY_IN_REDIRECT -p tcp -j REDIRECT --to-port ${c.inboundPort}`,
    '-A PREROUTING -p tcp -j CONSUL_PROXY_INBOUND',
    '-A CONSUL_PROXY_INBOUND -p tcp -j CONSUL_PROXY_IN_REDIRECT',
  );
  for (const p of c.excludeInboundPorts) cmds.push(`-I CONSUL_PROXY_INBOUND -p tcp --dport ${rangeText(p)} -j RETURN`);
  return cmds;
}

/** One command's match and target as iptables-save prints them (implicit `-m tcp`, `/32`, `--to-ports`). */
function savedForm(args: string[]): string {
  const opt = (name: string) => {
    const i = args.indexOf(name);
    return i < 0 ? undefined : args[i + 1];
  };
  const parts: string[] = [];
  const d = opt('-d');
  // iptables-save leaves out a /0 destination: it matches everything.
  if (d !== undefined && !d.endsWith('/0')) parts.push('-d', d.includes('/') ? d : `${d}/${d.includes(':') ? 128 : 32}`);
  const p = opt('-p');
  if (p !== undefined) parts.push('-p', p);
  const dport = opt('--dport');
  if (dport !== undefined) parts.push('-m', p ?? 'tcp', '--dport', dport);
  const uid = opt('--uid-owner');
  if (uid !== undefined) parts.push('-m', 'owner', '--uid-owner', uid);
  parts.push('-j', opt('-j') ?? '?');
  const toPort = opt('--to-port');
  if (toPort !== undefined) parts.push('--to-ports', toPort);
  const toDest = opt('--to-destination');
  if (toDest !== undefined) parts.push('--to-destination', toDest);
  return parts.join(' ');
}

/** Replays commands on an empty nat table; returns each chain's rules in kernel order. */
function replay(commands: readonly string[]): Map<string, string[]> {
  const table = new Map<string, string[]>(HOOK_CHAINS.map((chain: string) => [chain, []]));
  for (const command of commands) {
    const [op, chain = '', ...args] = command.split(' ');
    if (op === '-N') {
      expect(table.has(chain), `chain ${chain} already exists`).toBe(false);
      table.set(chain, []);
      continue;
    }
    const rules = table.get(chain);
    if (!rules) throw new Error(`no chain ${chain}`);
    if (op === '-A') rules.push(savedForm(args));
    else if (op === '-I') rules.unshift(savedForm(args));
    else throw new Error(`unexpected ${command}`);
  }
  return table;
}

/** The ruleset as `iptables -t nat -S` would list it: chain name to ordered specs, empty chains included. */
function listed(ruleset: Ruleset): Map<string, string[]> {
  const table = new Map<string, string[]>([...HOOK_CHAINS, ...OWNED_CHAINS].map((chain) => [chain, []]));
  for (const rule of ruleset.rules) table.get(chainOf(rule))?.push(ruleSpec(rule));
  return table;
}

const asObject = (table: Map<string, string[]>) => Object.fromEntries([...table].sort(([a], [b]) => a.localeCompare(b)));

function expectLikeConsul(c: RedirectConfig, family: Family = 4) {
  const ruleset = buildRuleset(c, family);
  expect(ruleset.family).toBe(family);
  // No rule in a chain outside the five plus the two hooks.
  for (const rule of ruleset.rules) expect([...HOOK_CHAINS, ...OWNED_CHAINS]).toContain(chainOf(rule));
  expect(asObject(listed(ruleset))).toEqual(asObject(replay(consulCommands(c, family))));
  return listed(ruleset);
}

describe('ruleSpec', () => {
  const X = CHAINS.output;
  const cases: [Rule, string][] = [
    [{ chain: X, protocol: 'tcp', target: { kind: 'jump', chain: CHAINS.redirect } }, '-p tcp -j CONSUL_PROXY_REDIRECT'],
    [{ chain: X, target: { kind: 'return' } }, '-j RETURN'],
    [{ chain: X, protocol: 'tcp', target: { kind: 'redirect', port: 15001 } }, '-p tcp -j REDIRECT --to-ports 15001'],
    [{ chain: X, uidOwner: 0, target: { kind: 'return' } }, '-m owner --uid-owner 0 -j RETURN'],
    [{ chain: X, destination: cidr('10.0.0.0/8'), target: { kind: 'return' } }, '-d 10.0.0.0/8 -j RETURN'],
    [
      { chain: X, protocol: 'tcp', destinationPort: { low: 1000, high: 2000 }, target: { kind: 'return' } },
      '-p tcp -m tcp --dport 1000:2000 -j RETURN',
    ],
    [
      {
        chain: X,
        destination: cidr('127.0.0.1/32'),
        protocol: 'udp',
        destinationPort: { low: 53, high: 53 },
        target: { kind: 'dnat', to: { address: ip('127.0.0.1'), port: 8600 } },
      },
      '-d 127.0.0.1/32 -p udp -m udp --dport 53 -j DNAT --to-destination 127.0.0.1:8600',
    ],
    [
      {
        chain: X,
        destination: cidr('::1/128'),
        protocol: 'tcp',
        destinationPort: { low: 53, high: 53 },
        target: { kind: 'dnat', to: { address: ip('::1'), port: 8600 } },
      },
      '-d ::1/128 -p tcp -m tcp --dport 53 -j DNAT --to-destination [::1]:8600',
    ],
  ];
  it.each(cases)('renders %j as iptables-save does', (rule, expected) => {
    expect(ruleSpec(rule)).toBe(expected);
  });

  it('the uid 0 is not dropped as falsy', () => {
    expect(ruleSpec({ chain: CHAINS.output, uidOwner: 0, target: { kind: 'return' } })).toContain('--uid-owner 0');
  });
});

describe('buildRuleset, IPv4: Consul reference §3.2', () => {
  it('base case equals §3.2 lines 1-13 (uid 123, inbound 20000, default outbound) in final order', () => {
    const table = expectLikeConsul(config());
    // Written out by hand from the reference, as `iptables -t nat -S` lists them.
    expect(Object.fromEntries(table)).toEqual({
      PREROUTING: ['-p tcp -j CONSUL_PROXY_INBOUND'],
      OUTPUT: ['-p tcp -j CONSUL_PROXY_OUTPUT'],
      CONSUL_PROXY_INBOUND: ['-p tcp -j CONSUL_PROXY_IN_REDIRECT'],
      CONSUL_PROXY_IN_REDIRECT: ['-p tcp -j REDIRECT --to-ports 20000'],
      CONSUL_PROXY_OUTPUT: ['-m owner --uid-owner 123 -j RETURN', '-d 127.0.0.1/32 -j RETURN', '-j CONSUL_PROXY_REDIRECT'],
      CONSUL_PROXY_REDIRECT: ['-p tcp -j REDIRECT --to-ports 15001'],
      CONSUL_DNS_REDIRECT: [],
    });
  });

  it('has exactly 8 rules in the base case, none in the DNS chain', () => {
    const ruleset = buildRuleset(config(), 4);
    expect(ruleset.rules).toHaveLength(8);
    expect(ruleset.rules.filter((r) => r.chain === CHAINS.dnsRedirect)).toEqual([]);
  });

  it('uses the default outbound port 15001 and any other given port', () => {
    expect(DEFAULT_OUTBOUND_PORT).toBe(15001);
    expect(listed(buildRuleset(config(), 4)).get(CHAINS.redirect)).toEqual(['-p tcp -j REDIRECT --to-ports 15001']);
    const table = expectLikeConsul(config({ outboundPort: 15002, inboundPort: 21000 }));
    expect(table.get(CHAINS.redirect)).toEqual(['-p tcp -j REDIRECT --to-ports 15002']);
    expect(table.get(CHAINS.inboundRedirect)).toEqual(['-p tcp -j REDIRECT --to-ports 21000']);
  });

  it('proxy uid 0 (root) still gets its RETURN rule', () => {
    expect(expectLikeConsul(config({ proxyUid: 0 })).get(CHAINS.output)?.[0]).toBe('-m owner --uid-owner 0 -j RETURN');
  });

  it('one exclude-inbound-port goes before the catch-all jump', () => {
    expect(expectLikeConsul(config({ excludeInboundPorts: portRanges('22') })).get(CHAINS.inbound)).toEqual([
      '-p tcp -m tcp --dport 22 -j RETURN',
      '-p tcp -j CONSUL_PROXY_IN_REDIRECT',
    ]);
  });

  it('several exclude-inbound-ports come out reversed (repeated -I), ranges kept', () => {
    expect(expectLikeConsul(config({ excludeInboundPorts: portRanges('22', '8500:8502', '9090') })).get(CHAINS.inbound)).toEqual([
      '-p tcp -m tcp --dport 9090 -j RETURN',
      '-p tcp -m tcp --dport 8500:8502 -j RETURN',
      '-p tcp -m tcp --dport 22 -j RETURN',
      '-p tcp -j CONSUL_PROXY_IN_REDIRECT',
    ]);
  });

  it('one exclude-outbound-port', () => {
    expect(expectLikeConsul(config({ excludeOutboundPorts: portRanges('443') })).get(CHAINS.output)).toEqual([
      '-p tcp -m tcp --dport 443 -j RETURN',
      '-m owner --uid-owner 123 -j RETURN',
      '-d 127.0.0.1/32 -j RETURN',
      '-j CONSUL_PROXY_REDIRECT',
    ]);
  });

  it('several exclude-outbound-ports, reversed', () => {
    const output = expectLikeConsul(config({ excludeOutboundPorts: portRanges('80', '443', '1000:2000') })).get(CHAINS.output);
    expect(output?.slice(0, 3)).toEqual([
      '-p tcp -m tcp --dport 1000:2000 -j RETURN',
      '-p tcp -m tcp --dport 443 -j RETURN',
      '-p tcp -m tcp --dport 80 -j RETURN',
    ]);
  });

  it('one and several exclude-outbound-cidrs, reversed', () => {
    expect(expectLikeConsul(config({ excludeOutboundCidrs: [cidr('10.0.0.0/8')] })).get(CHAINS.output)?.[0]).toBe(
      '-d 10.0.0.0/8 -j RETURN',
    );
    const output = expectLikeConsul(
      config({ excludeOutboundCidrs: [cidr('10.0.0.0/8'), cidr('192.168.1.7/32'), cidr('0.0.0.0/0')] }),
    ).get(CHAINS.output);
    expect(output?.slice(0, 3)).toEqual(['-j RETURN', '-d 192.168.1.7/32 -j RETURN', '-d 10.0.0.0/8 -j RETURN']);
  });

  it('one and several exclude-uids, reversed', () => {
    expect(expectLikeConsul(config({ excludeUids: [998] })).get(CHAINS.output)?.[0]).toBe(
      '-m owner --uid-owner 998 -j RETURN',
    );
    const output = expectLikeConsul(config({ excludeUids: [0, 100, 4294967294] })).get(CHAINS.output);
    expect(output?.slice(0, 3)).toEqual([
      '-m owner --uid-owner 4294967294 -j RETURN',
      '-m owner --uid-owner 100 -j RETURN',
      '-m owner --uid-owner 0 -j RETURN',
    ]);
  });

  it('reproduces the §3.2 "Exclusion ordering facts" example exactly', () => {
    // -exclude-outbound-port 80 -exclude-outbound-port 443 -exclude-outbound-cidr 10.0.0.0/8
    // -exclude-uid 0 -exclude-uid 100 -proxy-uid 1234
    const table = expectLikeConsul(
      config({
        proxyUid: 1234,
        excludeOutboundPorts: portRanges('80', '443'),
        excludeOutboundCidrs: [cidr('10.0.0.0/8')],
        excludeUids: [0, 100],
      }),
    );
    expect(table.get(CHAINS.output)).toEqual([
      '-m owner --uid-owner 100 -j RETURN',
      '-m owner --uid-owner 0 -j RETURN',
      '-d 10.0.0.0/8 -j RETURN',
      '-p tcp -m tcp --dport 443 -j RETURN',
      '-p tcp -m tcp --dport 80 -j RETURN',
      '-m owner --uid-owner 1234 -j RETURN',
      '-d 127.0.0.1/32 -j RETURN',
      '-j CONSUL_PROXY_REDIRECT',
    ]);
  });

  it('every exclusion kind at once matches the replayed command list', () => {
    expectLikeConsul(
      config({
        excludeInboundPorts: portRanges('22', '8300:8302'),
        excludeOutboundPorts: portRanges('8300', '8500'),
        excludeOutboundCidrs: [cidr('10.0.0.0/8'), cidr('2001:db8::/32'), cidr('169.254.169.254/32')],
        excludeUids: [996, 997],
        dns: { ip: ip('10.0.0.53'), port: 8600 },
      }),
    );
  });

  it('keeps duplicate exclusions, as Consul does', () => {
    const output = expectLikeConsul(config({ excludeUids: [5, 5] })).get(CHAINS.output);
    expect(output?.filter((spec) => spec === '-m owner --uid-owner 5 -j RETURN')).toHaveLength(2);
  });

  it('does not mutate its input', () => {
    const c = config({ excludeUids: [1, 2], excludeOutboundPorts: portRanges('80', '443') });
    const copy = structuredClone(c);
    buildRuleset(c, 4);
    buildRuleset(c, 6);
    expect(c).toEqual(copy);
  });

  it('creates the DNS chain even without DNS redirection, in Consul order', () => {
    expect(desiredState(buildRuleset(config(), 4)).chains).toEqual([
      'CONSUL_PROXY_INBOUND',
      'CONSUL_PROXY_IN_REDIRECT',
      'CONSUL_PROXY_OUTPUT',
      'CONSUL_PROXY_REDIRECT',
      'CONSUL_DNS_REDIRECT',
    ]);
  });
});

describe('buildRuleset, DNS (reference §3.3)', () => {
  it('ip only: all port-53 traffic to X, before the TCP catch-all jump', () => {
    const table = expectLikeConsul(config({ dns: { ip: ip('10.0.0.53') } }));
    expect(table.get(CHAINS.dnsRedirect)).toEqual([
      '-p udp -m udp --dport 53 -j DNAT --to-destination 10.0.0.53',
      '-p tcp -m tcp --dport 53 -j DNAT --to-destination 10.0.0.53',
    ]);
    expect(table.get('OUTPUT')).toEqual([
      '-p udp -m udp --dport 53 -j CONSUL_DNS_REDIRECT',
      '-p tcp -m tcp --dport 53 -j CONSUL_DNS_REDIRECT',
      '-p tcp -j CONSUL_PROXY_OUTPUT',
    ]);
  });

  it('port only: traffic to 127.0.0.1:53 goes to 127.0.0.1:<port>', () => {
    const table = expectLikeConsul(config({ dns: { port: 8600 } }));
    expect(table.get(CHAINS.dnsRedirect)).toEqual([
      '-d 127.0.0.1/32 -p udp -m udp --dport 53 -j DNAT --to-destination 127.0.0.1:8600',
      '-d 127.0.0.1/32 -p tcp -m tcp --dport 53 -j DNAT --to-destination 127.0.0.1:8600',
    ]);
    expect(table.get('OUTPUT')).toEqual([
      '-d 127.0.0.1/32 -p udp -m udp --dport 53 -j CONSUL_DNS_REDIRECT',
      '-d 127.0.0.1/32 -p tcp -m tcp --dport 53 -j CONSUL_DNS_REDIRECT',
      '-p tcp -j CONSUL_PROXY_OUTPUT',
    ]);
  });

  it('ip and port: only traffic to IP:53 goes to IP:port', () => {
    const table = expectLikeConsul(config({ dns: { ip: ip('10.0.0.53'), port: 8600 } }));
    expect(table.get(CHAINS.dnsRedirect)).toEqual([
      '-d 10.0.0.53/32 -p udp -m udp --dport 53 -j DNAT --to-destination 10.0.0.53:8600',
      '-d 10.0.0.53/32 -p tcp -m tcp --dport 53 -j DNAT --to-destination 10.0.0.53:8600',
    ]);
    expect(table.get('OUTPUT')?.slice(0, 2)).toEqual([
      '-d 10.0.0.53/32 -p udp -m udp --dport 53 -j CONSUL_DNS_REDIRECT',
      '-d 10.0.0.53/32 -p tcp -m tcp --dport 53 -j CONSUL_DNS_REDIRECT',
    ]);
  });

  it('DNS rules carry no UID exemption and leave the other chains as in the base case', () => {
    const base = listed(buildRuleset(config(), 4));
    const withDns = listed(buildRuleset(config({ dns: { ip: ip('10.0.0.53'), port: 53 } }), 4));
    for (const chain of [CHAINS.inbound, CHAINS.inboundRedirect, CHAINS.output, CHAINS.redirect, 'PREROUTING']) {
      expect(withDns.get(chain)).toEqual(base.get(chain));
    }
    expect(withDns.get(CHAINS.dnsRedirect)?.join(' ')).not.toContain('owner');
  });
});

describe('buildRuleset, IPv6 family', () => {
  it('exempts ::1/128 instead of 127.0.0.1/32 and otherwise mirrors the IPv4 structure', () => {
    const table = expectLikeConsul(config(), 6);
    expect(table.get(CHAINS.output)).toEqual(['-m owner --uid-owner 123 -j RETURN', '-d ::1/128 -j RETURN', '-j CONSUL_PROXY_REDIRECT']);
    const v4 = listed(buildRuleset(config(), 4));
    for (const chain of ['PREROUTING', 'OUTPUT', CHAINS.inbound, CHAINS.inboundRedirect, CHAINS.redirect]) {
      expect(table.get(chain)).toEqual(v4.get(chain));
    }
    expect(JSON.stringify(buildRuleset(config(), 6))).not.toContain('127.0.0.1');
  });

  it('each family gets only its own CIDRs, in reversed order', () => {
    const c = config({
      excludeOutboundCidrs: [cidr('10.0.0.0/8'), cidr('2001:db8::/32'), cidr('192.168.0.0/16'), cidr('fd00::/8')],
    });
    const v4 = expectLikeConsul(c, 4).get(CHAINS.output) ?? [];
    const v6 = expectLikeConsul(c, 6).get(CHAINS.output) ?? [];
    expect(v4.slice(0, 2)).toEqual(['-d 192.168.0.0/16 -j RETURN', '-d 10.0.0.0/8 -j RETURN']);
    expect(v6.slice(0, 2)).toEqual(['-d fd00::/8 -j RETURN', '-d 2001:db8::/32 -j RETURN']);
    expect(v4.join('\n')).not.toMatch(/::/);
    expect(v6.join('\n')).not.toMatch(/\d+\.\d+\.\d+\.\d+/);
  });

  it('ports and UIDs are family-independent', () => {
    const c = config({ excludeOutboundPorts: portRanges('443'), excludeUids: [7], excludeInboundPorts: portRanges('22') });
    const v4 = listed(buildRuleset(c, 4));
    const v6 = listed(buildRuleset(c, 6));
    expect(v6.get(CHAINS.inbound)).toEqual(v4.get(CHAINS.inbound));
    expect(v6.get(CHAINS.output)?.slice(0, 2)).toEqual(v4.get(CHAINS.output)?.slice(0, 2));
  });

  it('DNS with an IPv4 address: rules only in the IPv4 table', () => {
    for (const dns of [{ ip: ip('10.0.0.53') }, { port: 8600 }, { ip: ip('10.0.0.53'), port: 8600 }]) {
      const c = config({ dns });
      expect(listed(buildRuleset(c, 6)).get(CHAINS.dnsRedirect)).toEqual([]);
      expect(listed(buildRuleset(c, 6)).get('OUTPUT')).toEqual(['-p tcp -j CONSUL_PROXY_OUTPUT']);
      expect(listed(buildRuleset(c, 4)).get(CHAINS.dnsRedirect)).toHaveLength(2);
    }
  });

  it('DNS with an IPv6 address and a port: bracketed [addr]:port DNAT, only in the IPv6 table', () => {
    const c = config({ dns: { ip: ip('fd00::53'), port: 8600 } });
    const v6 = expectLikeConsul(c, 6);
    expect(v6.get(CHAINS.dnsRedirect)).toEqual([
      '-d fd00::53/128 -p udp -m udp --dport 53 -j DNAT --to-destination [fd00::53]:8600',
      '-d fd00::53/128 -p tcp -m tcp --dport 53 -j DNAT --to-destination [fd00::53]:8600',
    ]);
    expect(v6.get('OUTPUT')).toEqual([
      '-d fd00::53/128 -p udp -m udp --dport 53 -j CONSUL_DNS_REDIRECT',
      '-d fd00::53/128 -p tcp -m tcp --dport 53 -j CONSUL_DNS_REDIRECT',
      '-p tcp -j CONSUL_PROXY_OUTPUT',
    ]);
    expect(listed(buildRuleset(c, 4)).get(CHAINS.dnsRedirect)).toEqual([]);
  });

  it('DNS with an IPv6 address only: unbracketed DNAT of all port-53 traffic', () => {
    const v6 = expectLikeConsul(config({ dns: { ip: ip('::1') } }), 6);
    expect(v6.get(CHAINS.dnsRedirect)).toEqual([
      '-p udp -m udp --dport 53 -j DNAT --to-destination ::1',
      '-p tcp -m tcp --dport 53 -j DNAT --to-destination ::1',
    ]);
  });
});

describe('rendered dry-run transactions', () => {
  const render = (c: RedirectConfig, family: Family = 4) => renderTransaction(EMPTY_STATE, desiredState(buildRuleset(c, family)));
  /** The `-A` lines only: the frame around them is the same for every ruleset and checked once below. */
  const appended = (text: string) => text.split('\n').filter((line) => line.startsWith('-A ')).join('\n');

  it('frames the rules: *nat, the five chains declared in Consul order, then only -A lines, then COMMIT', () => {
    const lines = render(config({ dns: { port: 8600 }, excludeUids: [1] })).split('\n');
    expect(lines.slice(0, 6)).toEqual(['*nat', ...OWNED_CHAINS.map((chain) => `:${chain} - [0:0]`)]);
    expect(lines.slice(-2)).toEqual(['COMMIT', '']);
    expect(lines.slice(6, -2).every((line) => line.startsWith('-A '))).toBe(true);
  });

  it('IPv6 table with DNS to an IPv6 agent address and another outbound port', () => {
    const c = config({ outboundPort: 15006, excludeOutboundCidrs: [cidr('fd00::/8')], dns: { ip: ip('fd00::53'), port: 8600 } });
    expect(appended(render(c, 6))).toMatchInlineSnapshot(`
      "-A CONSUL_PROXY_REDIRECT -p tcp -j REDIRECT --to-ports 15006
      -A CONSUL_DNS_REDIRECT -d fd00::53/128 -p udp -m udp --dport 53 -j DNAT --to-destination [fd00::53]:8600
      -A CONSUL_DNS_REDIRECT -d fd00::53/128 -p tcp -m tcp --dport 53 -j DNAT --to-destination [fd00::53]:8600
      -A CONSUL_PROXY_OUTPUT -d fd00::/8 -j RETURN
      -A CONSUL_PROXY_OUTPUT -m owner --uid-owner 123 -j RETURN
      -A CONSUL_PROXY_OUTPUT -d ::1/128 -j RETURN
      -A CONSUL_PROXY_OUTPUT -j CONSUL_PROXY_REDIRECT
      -A CONSUL_PROXY_IN_REDIRECT -p tcp -j REDIRECT --to-ports 20000
      -A CONSUL_PROXY_INBOUND -p tcp -j CONSUL_PROXY_IN_REDIRECT
      -A OUTPUT -d fd00::53/128 -p udp -m udp --dport 53 -j CONSUL_DNS_REDIRECT
      -A OUTPUT -d fd00::53/128 -p tcp -m tcp --dport 53 -j CONSUL_DNS_REDIRECT
      -A OUTPUT -p tcp -j CONSUL_PROXY_OUTPUT
      -A PREROUTING -p tcp -j CONSUL_PROXY_INBOUND"
    `);
  });

  it('typical VM: SSH and agent excluded, DNS to the agent', () => {
    const vm = config({
      proxyUid: 101,
      excludeInboundPorts: portRanges('22'),
      excludeUids: [996],
      excludeOutboundCidrs: [cidr('169.254.169.254/32')],
      dns: { port: 8600 },
    });
    expect(appended(render(vm))).toMatchInlineSnapshot(`
      "-A CONSUL_PROXY_REDIRECT -p tcp -j REDIRECT --to-ports 15001
      -A CONSUL_DNS_REDIRECT -d 127.0.0.1/32 -p udp -m udp --dport 53 -j DNAT --to-destination 127.0.0.1:8600
      -A CONSUL_DNS_REDIRECT -d 127.0.0.1/32 -p tcp -m tcp --dport 53 -j DNAT --to-destination 127.0.0.1:8600
      -A CONSUL_PROXY_OUTPUT -m owner --uid-owner 996 -j RETURN
      -A CONSUL_PROXY_OUTPUT -d 169.254.169.254/32 -j RETURN
      -A CONSUL_PROXY_OUTPUT -m owner --uid-owner 101 -j RETURN
      -A CONSUL_PROXY_OUTPUT -d 127.0.0.1/32 -j RETURN
      -A CONSUL_PROXY_OUTPUT -j CONSUL_PROXY_REDIRECT
      -A CONSUL_PROXY_IN_REDIRECT -p tcp -j REDIRECT --to-ports 20000
      -A CONSUL_PROXY_INBOUND -p tcp -m tcp --dport 22 -j RETURN
      -A CONSUL_PROXY_INBOUND -p tcp -j CONSUL_PROXY_IN_REDIRECT
      -A OUTPUT -d 127.0.0.1/32 -p udp -m udp --dport 53 -j CONSUL_DNS_REDIRECT
      -A OUTPUT -d 127.0.0.1/32 -p tcp -m tcp --dport 53 -j CONSUL_DNS_REDIRECT
      -A OUTPUT -p tcp -j CONSUL_PROXY_OUTPUT
      -A PREROUTING -p tcp -j CONSUL_PROXY_INBOUND"
    `);
  });

  it('hook jumps come after every rule of the chains they lead to', () => {
    const lines = render(config({ excludeUids: [1], dns: { ip: ip('10.0.0.53') } })).split('\n');
    const lastChainRule = Math.max(...lines.map((l, i) => (/^-A CONSUL_/.test(l) ? i : -1)));
    const firstHookJump = lines.findIndex((l) => /^-A (OUTPUT|PREROUTING) /.test(l));
    expect(firstHookJump).toBeGreaterThan(lastChainRule);
  });

  it('every line is a restore directive with single spaces and no stray characters', () => {
    const text = render(
      config({
        excludeInboundPorts: portRanges('22', '1:65535'),
        excludeOutboundCidrs: [cidr('2001:db8::/32')],
        dns: { ip: ip('fd00::53'), port: 8600 },
      }),
      6,
    );
    for (const line of text.trimEnd().split('\n')) {
      expect(line).toMatch(/^(\*nat|COMMIT|:[A-Z_]+ - \[0:0\]|-A [A-Z_]+( [-\w.:/[\]]+)+)$/);
      expect(line).not.toMatch(/ {2}|\t|\s$/);
    }
  });
});
