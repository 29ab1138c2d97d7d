import { readFileSync } from 'node:fs';
import IPCIDR from 'ip-cidr';
import { describe, expect, it } from 'vitest';
import { BASE_CHAINS, iptablesNftChains, NFT_TABLE, nftablesDialect as nft, referencesIptablesCannotShow, type NftSet, type NftTable } from '../../src/core/nftables.ts';
import type { RedirectConfig } from '../../src/core/ruleset.ts';
import type { IpAddress } from '../../src/core/values.ts';
import { BASE, cidr, ip, ports, VARIANTS } from '../fixtures/nft/variants.ts';

// The wanted state is checked against an oracle written from Consul's nftables script (reference section 3.7),
// not from src: Consul's own commands, one rule per exclusion, replayed (`add` appends, `insert` prepends) and
// spelled the way `nft list` prints them. Listings of real nft 1.0.6 (test/fixtures/nft, see capture.ts) check
// that parse() reads back exactly what transaction() loads.

const OWNED = ['CONSUL_PROXY_INBOUND', 'CONSUL_PROXY_IN_REDIRECT', 'CONSUL_PROXY_OUTPUT', 'CONSUL_PROXY_REDIRECT', 'CONSUL_DNS_REDIRECT'];
const NAT_OUTPUT = 'CONSUL_NAT_OUTPUT';
const NAT_PREROUTING = 'CONSUL_NAT_PREROUTING';

const portText = ({ low, high }: { low: number; high: number }) => (low === high ? `${low}` : `${low}-${high}`);

/** Consul's `nft` commands for a config (minus `nft` and `inet consul_tproxy`), as `add`/`insert rule <chain> ...`. */
function consulCommands(c: RedirectConfig): string[] {
  const cmds: string[] = [];
  if (!c.dualStack) cmds.push(`add rule ${NAT_OUTPUT} meta nfproto ipv6 return`, `add rule ${NAT_PREROUTING} meta nfproto ipv6 return`);
  cmds.push(`add rule CONSUL_PROXY_REDIRECT meta l4proto tcp redirect to :${c.outboundPort}`);
  const { ip: dnsIp, port: dnsPort } = c.dns;
  if (dnsIp !== undefined && dnsPort === undefined) {
    const family = dnsIp.family === 6 ? 'ip6' : 'ip';
    for (const p of ['udp', 'tcp']) cmds.push(`add rule CONSUL_DNS_REDIRECT ${p} dport 53 dnat ${family} to ${dnsIp.address}`);
    for (const p of ['udp', 'tcp']) cmds.push(`add rule ${NAT_OUTPUT} ${p} dport 53 jump CONSUL_DNS_REDIRECT`);
  } else if (dnsPort !== undefined) {
    const addresses: IpAddress[] = dnsIp ? [dnsIp] : c.dualStack ? [ip('127.0.0.1'), ip('::1')] : [ip('127.0.0.1')];
    for (const a of addresses) {
      const match = a.family === 6 ? `ip6 daddr ${a.address}` : `ip daddr ${a.address}`;
      const to = a.family === 6 ? `[${a.address}]:${dnsPort}` : `${a.address}:${dnsPort}`;
      for (const p of ['udp', 'tcp']) cmds.push(`add rule CONSUL_DNS_REDIRECT ${match} ${p} dport 53 dnat to ${to}`);
      for (const p of ['udp', 'tcp']) cmds.push(`add rule ${NAT_OUTPUT} ${match} ${p} dport 53 jump CONSUL_DNS_REDIRECT`);
    }
  }
  cmds.push(
    `add rule ${NAT_OUTPUT} meta l4proto tcp jump CONSUL_PROXY_OUTPUT`,
    `add rule CONSUL_PROXY_OUTPUT skuid ${c.proxyUid} return`,
    'add rule CONSUL_PROXY_OUTPUT ip daddr 127.0.0.1/32 return',
    'add rule CONSUL_PROXY_OUTPUT ip6 daddr ::1/128 return',
    'add rule CONSUL_PROXY_OUTPUT jump CONSUL_PROXY_REDIRECT',
  );
  for (const p of c.excludeOutboundPorts) cmds.push(`insert rule CONSUL_PROXY_OUTPUT tcp dport ${portText(p)} return`);
  for (const x of c.excludeOutboundCidrs) cmds.push(`insert rule CONSUL_PROXY_OUTPUT ${x.family === 6 ? 'ip6' : 'ip'} daddr ${x.cidr} return`);
  for (const u of c.excludeUids) cmds.push(`insert rule CONSUL_PROXY_OUTPUT skuid ${u} return`);
  cmds.push(
    `add rule CONSUL_PROXY_IN_REDIRECT meta l4proto tcp redirect to :${c.inboundPort}`,
    `add rule ${NAT_PREROUTING} meta l4proto tcp jump CONSUL_PROXY_INBOUND`,
    'add rule CONSUL_PROXY_INBOUND meta l4proto tcp jump CONSUL_PROXY_IN_REDIRECT',
  );
  for (const p of c.excludeInboundPorts) cmds.push(`insert rule CONSUL_PROXY_INBOUND tcp dport ${portText(p)} return`);
  return cmds;
}

/** A rule as Consul writes it, as `nft list` prints it back: `meta skuid`, host prefixes bare, `dnat ip to`. */
function nftPrinted(rule: string): string {
  return rule
    .replace(/^skuid /, 'meta skuid ')
    .replace(/\bip daddr (\S+)\/32\b/, 'ip daddr $1')
    .replace(/\bip6 daddr (\S+)\/128\b/, 'ip6 daddr $1')
    .replace(/\bdnat to \[/, 'dnat ip6 to [')
    .replace(/\bdnat to (?=\d)/, 'dnat ip to ');
}

/** Replays the commands on empty chains: each chain's rules in kernel order. */
function replay(commands: readonly string[]): Map<string, string[]> {
  const chains = new Map<string, string[]>([...OWNED, NAT_OUTPUT, NAT_PREROUTING].map((chain) => [chain, []]));
  // Inserted rules collected apart and reversed once: thousands of unshifts would be quadratic.
  const inserted = new Map<string, string[]>();
  for (const command of commands) {
    const [op, , chain = '', ...words] = command.split(' ');
    const rule = nftPrinted(words.join(' '));
    if (op === 'add') chains.get(chain)?.push(rule) ?? expect.unreachable(`no chain ${chain}`);
    else if (inserted.get(chain)?.push(rule) === undefined) inserted.set(chain, [rule]);
  }
  for (const [chain, rules] of inserted) chains.set(chain, [...rules.reverse(), ...(chains.get(chain) ?? [])]);
  return chains;
}

/** Our wanted rules with every `@set` rule expanded into one rule per element, as Consul would write them. */
function expanded(table: NftTable): Map<string, string[]> {
  const sets = new Map(table.sets.map((set) => [set.name, set]));
  return new Map(
    table.chains.map((chain) => [
      chain.name,
      chain.rules.flatMap((rule) => {
        const name = /@(\w+)/.exec(rule)?.[1];
        const set = name === undefined ? undefined : sets.get(name);
        return set ? set.elements.map((element) => rule.replace(`@${name}`, element)) : [rule];
      }),
    ]),
  );
}

/** Where a `<match> <value> return` rule's value lies, computed with ip-cidr (not src) for addresses. */
function span(match: string, value: string): [bigint, bigint] {
  if (match === 'ip daddr' || match === 'ip6 daddr') {
    const range = new IPCIDR(value.includes('/') ? value : `${value}/${match === 'ip daddr' ? 32 : 128}`);
    return [range.start({ type: 'bigInteger' }), range.end({ type: 'bigInteger' })];
  }
  const [low = '', high = low] = value.split('-');
  return /^\d+$/.test(low) ? [BigInt(low), BigInt(high)] : expect.unreachable(`no numbers in ${match} ${value}`);
}

/** What a run of `return` rules excludes, per match: all are returns, so their order within the run is irrelevant. */
function excluded(rules: readonly string[]): Record<string, string[]> {
  const spans = new Map<string, [bigint, bigint][]>();
  for (const rule of rules) {
    const words = rule.split(' ');
    const match = words.slice(0, -2).join(' ');
    const value = words.at(-2) ?? '';
    const list = spans.get(match) ?? [];
    list.push(match === 'meta nfproto' ? [value === 'ipv6' ? 6n : 4n, value === 'ipv6' ? 6n : 4n] : span(match, value));
    spans.set(match, list);
  }
  const result: Record<string, string[]> = {};
  for (const [match, list] of spans) {
    list.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
    const union: [bigint, bigint][] = [];
    for (const [low, high] of list) {
      const last = union.at(-1);
      if (last && low <= last[1] + 1n) last[1] = high > last[1] ? high : last[1];
      else union.push([low, high]);
    }
    result[match] = union.map(([low, high]) => `${low}-${high}`);
  }
  return result;
}

/** Each chain as: what its leading `return` rules exclude, then the rest of its rules in order. */
function semantics(chains: Map<string, string[]>) {
  return Object.fromEntries(
    [...chains].map(([chain, rules]) => {
      const returns = rules.findIndex((rule) => !rule.endsWith(' return'));
      const split = returns < 0 ? rules.length : returns;
      return [chain, { excluded: excluded(rules.slice(0, split)), then: rules.slice(split) }];
    }),
  );
}

function wantedTable(config: RedirectConfig): NftTable {
  return nft.wanted(config) ?? expect.unreachable('wanted() of a config is a table');
}

function expectLikeConsul(config: RedirectConfig) {
  expect(semantics(expanded(wantedTable(config)))).toEqual(semantics(replay(consulCommands(config))));
}

const fixture = (name: string) => readFileSync(new URL(`../fixtures/nft/${name}.json`, import.meta.url), 'utf8');

const THOUSANDS: RedirectConfig = {
  ...BASE,
  dualStack: true,
  excludeOutboundCidrs: [
    ...Array.from({ length: 10_000 }, (_, i) => cidr(`10.${i >> 8}.${i & 255}.0/24`)),
    ...Array.from({ length: 1_000 }, (_, i) => cidr(`2001:db8:${i.toString(16)}::/48`)),
    cidr('10.0.0.0/16'),
  ],
  excludeOutboundPorts: ports(...Array.from({ length: 2_000 }, (_, i): [number, number] => [1024 + i * 30, 1024 + i * 30 + 10])),
  excludeInboundPorts: ports(...Array.from({ length: 3_000 }, (_, i) => 30_000 + i)),
  excludeUids: Array.from({ length: 1_000 }, (_, i) => 2000 + i),
};

describe('wanted state against Consul nftables commands', () => {
  it.each(Object.entries(VARIANTS))('%s', (_, config) => expectLikeConsul(config));

  it.each([
    ['no DNS, single stack', BASE],
    ['DNS port, single stack, no ::1 rules', { ...BASE, dns: { port: 8600 } }],
    ['DNS ip only, IPv6, single stack', { ...BASE, dns: { ip: ip('fd00::53') } }],
    ['port ranges', { ...BASE, excludeOutboundPorts: ports([1, 1023], 8080, [65000, 65535]), excludeInboundPorts: ports([9000, 9100]) }],
    ['inbound exclusions only', { ...BASE, excludeInboundPorts: ports(22, 8500, 8501) }],
    ['UID exclusions only', { ...BASE, excludeUids: [0, 33, 65534] }],
    ['IPv6 exclusions with dual stack', { ...BASE, dualStack: true, excludeOutboundCidrs: [cidr('::/0'), cidr('fe80::/10')] }],
    ['everything', { ...BASE, ...VARIANTS['overlapping'], dualStack: true, dns: { ip: ip('10.0.34.16'), port: 8600 } }],
    ['thousands of exclusions', THOUSANDS],
  ])('%s', (_, config) => expectLikeConsul(config));

  it('matches each kind of exclusion with one rule, however many there are', () => {
    const rules = (chain: string) => wantedTable(THOUSANDS).chains.find((c) => c.name === chain)?.rules;
    expect(rules('CONSUL_PROXY_OUTPUT')).toEqual([
      'meta skuid @excluded_uids return',
      'ip6 daddr @excluded_v6 return',
      'ip daddr @excluded_v4 return',
      'tcp dport @excluded_outbound_ports return',
      'meta skuid 123 return',
      'ip daddr 127.0.0.1 return',
      'ip6 daddr ::1 return',
      'jump CONSUL_PROXY_REDIRECT',
    ]);
    expect(rules('CONSUL_PROXY_INBOUND')).toEqual(['tcp dport @excluded_inbound_ports return', 'meta l4proto tcp jump CONSUL_PROXY_IN_REDIRECT']);
  });

  it('hooks with base chains of type nat at priority -100, and no sets without exclusions', () => {
    const table = wantedTable(BASE);
    expect(table.chains.map((chain) => chain.name)).toEqual([...OWNED, BASE_CHAINS.output, BASE_CHAINS.prerouting]);
    expect(table.chains.filter((chain) => chain.base).map((chain) => chain.base)).toEqual([
      { type: 'nat', hook: 'output', priority: -100, policy: 'accept' },
      { type: 'nat', hook: 'prerouting', priority: -100, policy: 'accept' },
    ]);
    expect(table.sets).toEqual([]);
    expect(nft.wanted(undefined)).toBeUndefined();
  });
});

describe('overlapping and duplicate exclusions', () => {
  const elements = (table: NftTable) => Object.fromEntries(table.sets.map((set) => [set.name, set.elements]));

  it('are folded before rendering, since nft 1.0.6 refuses overlapping interval elements', () => {
    expect(elements(wantedTable(VARIANTS['overlapping'] ?? BASE))).toEqual({
      excluded_inbound_ports: ['20-25', '8000-8200'],
      excluded_outbound_ports: ['70-100', '443', '444'],
      excluded_v4: ['10.0.0.0/8'],
      excluded_v6: ['2001:db8::/32'],
      excluded_uids: ['5', '7'],
    });
  });

  it('take port 0 and the whole port range, as Consul passes them on', () => {
    const config = { ...BASE, excludeInboundPorts: [{ low: 0, high: 0 }, { low: 1024, high: 65535 }], excludeOutboundPorts: [{ low: 0, high: 1023 }] };
    expect(elements(wantedTable(config))).toEqual({ excluded_inbound_ports: ['0', '1024-65535'], excluded_outbound_ports: ['0-1023'] });
  });

  it('keep adjacent CIDRs as given, and a /32 reads as its address, as nft lists them', () => {
    const config = { ...BASE, excludeOutboundCidrs: ['10.0.0.0/9', '10.128.0.0/9', '192.0.2.1/32', '2001:db8::1/128'].map(cidr) };
    expect(elements(wantedTable(config))).toEqual({ excluded_v4: ['10.0.0.0/9', '10.128.0.0/9', '192.0.2.1'], excluded_v6: ['2001:db8::1'] });
  });
});

describe('parse against real nft 1.0.6 listings', () => {
  it.each(Object.entries(VARIANTS))('%s reads back as exactly what was loaded', (name, config) => {
    const installed = nft.parse(fixture(name));
    expect(installed).toEqual(nft.wanted(config));
    expect(nft.differences(installed, nft.wanted(config))).toEqual([]);
    expect(nft.same(installed, nft.wanted(config))).toBe(true);
  });

  it('reports a rule added by hand, counter and all', () => {
    const installed = nft.parse(fixture('foreign-rule'));
    const wanted = nft.wanted(VARIANTS['exclusions']);
    expect(nft.same(installed, wanted)).toBe(false);
    expect(nft.differences(installed, wanted)).toEqual([
      'chain CONSUL_PROXY_OUTPUT: unexpected rule "ip daddr 198.51.100.0/24 counter packets 0 bytes 0 accept"',
    ]);
  });

  it('reads the base-chain priority from JSON, where prerouting is -100 and not "dstnat"', () => {
    const prerouting = nft.parse(fixture('basic'))?.chains.find((chain) => chain.name === BASE_CHAINS.prerouting);
    expect(prerouting?.base).toEqual({ type: 'nat', hook: 'prerouting', priority: -100, policy: 'accept' });
  });

  it('reads an empty dump as no table', () => {
    expect(nft.parse('')).toBeUndefined();
    expect(nft.isEmpty(nft.parse(''))).toBe(true);
    expect(nft.isEmpty(nft.parse(fixture('basic')))).toBe(false);
  });

  // nft 1.0.6 lists a dormant table's flags as garbage: as the table's name, or cut off right after `"flags": `.
  const TRUNCATED = '{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"table": {"family": "inet", "name": "consul_tproxy", "handle": 1, "flags": ';

  it('reads a dump that is not JSON as our table, unreadable: replaced by an apply, deleted by a cleanup', () => {
    const installed = nft.parse(TRUNCATED);
    const wanted = nft.wanted(VARIANTS['basic']);
    expect(nft.isEmpty(installed)).toBe(false);
    expect(nft.same(installed, wanted)).toBe(false);
    expect(nft.same(installed, undefined)).toBe(false);
    expect(nft.differences(installed, wanted)).toEqual([
      expect.stringMatching(/^table inet consul_tproxy could not be read \(nft -j printed something that is not JSON: .+\): it is replaced$/),
    ]);
    expect(nft.differences(installed, undefined)).toEqual([expect.stringMatching(/could not be read .*: it is deleted$/)]);
    expect(nft.describe(installed)).toEqual({ chains: {}, hooks: [], rules: 0, sets: {}, unreadable: expect.stringContaining('not JSON') });
    // The replacing transaction does not depend on what was installed.
    expect(nft.transaction(installed, wanted)).toBe(nft.transaction(undefined, wanted));
  });

  it.each([
    ['newer nft', 'dormant', 'table flags dormant: our rules do not run'],
    ['newer nft, as a list', ['dormant'], 'table flags dormant: our rules do not run'],
    ["nft 1.0.6's misprint", 'consul_tproxy', 'table flags consul_tproxy: our rules may not run (a dormant table runs none)'],
  ])('reports flags on the table (%s) as a difference: a dormant table runs none of our rules', (_, flags, line) => {
    const installed = nft.parse(edited((objects) => Object.assign(body(objects, 'table', NFT_TABLE), { flags })));
    expect(nft.same(installed, nft.wanted(VARIANTS['basic']))).toBe(false);
    expect(nft.differences(installed, nft.wanted(VARIANTS['basic']))).toEqual([line]);
  });
});

/** A listing of `basic` with `edit` applied to its JSON objects. */
function edited(edit: (objects: Record<string, Record<string, unknown>>[]) => void): string {
  const document = JSON.parse(fixture('basic')) as { nftables: Record<string, Record<string, unknown>>[] };
  edit(document.nftables);
  return JSON.stringify(document);
}

const body = (objects: Record<string, Record<string, unknown>>[], kind: string, name: string) =>
  objects.find((object) => object[kind]?.['name'] === name)?.[kind] ?? expect.unreachable(`no ${kind} ${name}`);

describe('differences', () => {
  const wanted = nft.wanted(BASE);
  const table = wantedTable(BASE);

  it('name a missing table, and one that should be gone', () => {
    expect(nft.differences(undefined, wanted)).toEqual([`table inet ${NFT_TABLE} is missing`]);
    expect(nft.differences(wanted, undefined)).toEqual([`table inet ${NFT_TABLE} is present`]);
    expect(nft.differences(undefined, undefined)).toEqual([]);
  });

  it('name missing, unexpected and reordered rules, and chains we do not own', () => {
    const output = (rules: string[]) => ({ ...table, chains: table.chains.map((c) => (c.name === 'CONSUL_PROXY_OUTPUT' ? { ...c, rules } : c)) });
    const rules = table.chains.find((c) => c.name === 'CONSUL_PROXY_OUTPUT')?.rules ?? [];
    expect(nft.differences(output(rules.slice(1)), wanted)).toEqual(['chain CONSUL_PROXY_OUTPUT: missing rule "meta skuid 123 return"']);
    expect(nft.differences(output([...rules, ...rules.slice(0, 1)]), wanted)).toEqual([
      'chain CONSUL_PROXY_OUTPUT: unexpected rule "meta skuid 123 return"',
    ]);
    expect(nft.differences(output([...rules].reverse()), wanted)).toEqual(['chain CONSUL_PROXY_OUTPUT: rules out of order']);
    const extraChain = { ...table, chains: [...table.chains, { name: 'MINE', rules: ['return'] }] };
    expect(nft.differences(extraChain, wanted)).toEqual(['unexpected chain MINE (1 rule)']);
    expect(nft.differences({ ...table, chains: table.chains.slice(1) }, wanted)).toEqual(['chain CONSUL_PROXY_INBOUND is missing']);
  });

  it('name a base chain hooked differently', () => {
    const dump = edited((objects) => {
      body(objects, 'chain', BASE_CHAINS.output)['prio'] = 0;
    });
    expect(nft.differences(nft.parse(dump), wanted)).toEqual([
      'chain CONSUL_NAT_OUTPUT: is type nat hook output priority 0; policy accept;, wanted type nat hook output priority -100; policy accept;',
    ]);
  });

  it('keep what they do not model: comments, other objects, odd set elements', () => {
    const dump = edited((objects) => {
      body(objects, 'chain', 'CONSUL_PROXY_REDIRECT')['comment'] = 'hi';
      objects.push({ map: { family: 'inet', name: 'm', table: NFT_TABLE, type: 'ipv4_addr', map: 'verdict' } });
      const rule = objects.find((object) => object['rule']?.['chain'] === 'CONSUL_PROXY_REDIRECT')?.['rule'];
      if (rule) rule['comment'] = 'mine';
    });
    expect(nft.differences(nft.parse(dump), wanted)).toEqual([
      'chain CONSUL_PROXY_REDIRECT: missing rule "meta l4proto tcp redirect to :15001"',
      'chain CONSUL_PROXY_REDIRECT: unexpected rule "meta l4proto tcp redirect to :15001 comment \\"mine\\""',
      'unexpected chain CONSUL_PROXY_REDIRECT comment="hi"',
      'unexpected {"map":{"family":"inet","name":"m","table":"consul_tproxy","type":"ipv4_addr","map":"verdict"}}',
    ]);
  });

  describe('of sets, by the values they cover', () => {
    const config = { ...BASE, excludeOutboundCidrs: [cidr('10.0.0.0/8'), cidr('192.0.2.0/24')] };
    const wantedSets = wantedTable(config);
    const withV4 = (set: Partial<NftSet>): NftTable => ({
      ...wantedSets,
      sets: wantedSets.sets.map((s) => (s.name === 'excluded_v4' ? { ...s, ...set } : s)),
    });

    it('read in sync when the same values are split differently', () => {
      const split = withV4({ elements: ['10.0.0.0/9', '10.128.0.0/9', '192.0.2.0-192.0.2.255'] });
      expect(nft.differences(split, wantedSets)).toEqual([]);
    });

    it('count missing and unexpected elements', () => {
      expect(nft.differences(withV4({ elements: ['10.0.0.0/9'] }), wantedSets)).toEqual([
        'set excluded_v4: 2 elements missing (e.g. 10.0.0.0/8)',
      ]);
      expect(nft.differences(withV4({ elements: ['10.0.0.0/8', '192.0.2.0/24', '198.51.100.1'] }), wantedSets)).toEqual([
        'set excluded_v4: 1 element unexpected (e.g. 198.51.100.1)',
      ]);
    });

    it('name a different type or flags, and missing or unexpected sets', () => {
      expect(nft.differences(withV4({ flags: [] }), wantedSets)).toEqual(['set excluded_v4: flags none, wanted interval']);
      expect(nft.differences(withV4({ type: 'ipv6_addr' }), wantedSets)).toEqual(['set excluded_v4: type ipv6_addr, wanted ipv4_addr']);
      expect(nft.differences({ ...wantedSets, sets: [] }, wantedSets)).toEqual(['set excluded_v4 is missing']);
      expect(nft.differences(wantedSets, table)).toEqual([
        'chain CONSUL_PROXY_OUTPUT: unexpected rule "ip daddr @excluded_v4 return"',
        'unexpected set excluded_v4 (2 elements)',
      ]);
    });

    it('report an element nft shows in a form we never write', () => {
      const dump = edited((objects) => {
        objects.push({ set: { family: 'inet', name: 'excluded_v4', table: NFT_TABLE, type: 'ipv4_addr', flags: ['interval'] } });
        body(objects, 'set', 'excluded_v4')['elem'] = [{ elem: { val: '10.0.0.1', comment: 'x' } }];
      });
      expect(nft.differences(nft.parse(dump), wanted)).toEqual([
        'unexpected set excluded_v4 (0 elements)',
        'unexpected set excluded_v4 element {"elem":{"val":"10.0.0.1","comment":"x"}}',
      ]);
    });
  });
});

describe('transaction', () => {
  const lines = (script: string) => script.split('\n');

  it('replaces the table in one go: add, delete, define', () => {
    const script = nft.transaction(undefined, nft.wanted(VARIANTS['dns-port-dual-stack']));
    expect(lines(script).slice(0, 3)).toEqual([`add table inet ${NFT_TABLE}`, `delete table inet ${NFT_TABLE}`, `table inet ${NFT_TABLE} {`]);
    expect(script.endsWith('}\n')).toBe(true);
    // Sets are declared before the chains that match them.
    expect(script.indexOf('\tset ')).toBeLessThan(script.indexOf('\tchain '));
  });

  it('removes the table whether or not it exists', () => {
    const removal = `add table inet ${NFT_TABLE}\ndelete table inet ${NFT_TABLE}\n`;
    expect(nft.transaction(nft.wanted(BASE), undefined)).toBe(removal);
    expect(nft.transaction(undefined, undefined)).toBe(removal);
  });

  it('never puts a brace with content on one line (nft 1.0.6 refuses `{ ... }` without a newline before `}`)', () => {
    for (const config of [...Object.values(VARIANTS), THOUSANDS]) {
      for (const line of lines(nft.transaction(undefined, nft.wanted(config)))) {
        if (line.includes('{')) expect(line).toMatch(/^[^{}]* \{$/);
        if (line.includes('}')) expect(line).toMatch(/^\t*\}$/);
      }
    }
  });

  it('renders the rules and elements that the real listing shows', () => {
    const script = nft.transaction(undefined, nft.wanted(VARIANTS['dns-ip6-port-dual-stack']));
    expect(script).toContain('\t\tip6 daddr 2001:db8:0:1::53 udp dport 53 dnat ip6 to [2001:db8:0:1::53]:8600\n');
    const sets = nft.transaction(undefined, nft.wanted(VARIANTS['exclusions']));
    expect(sets).toContain('\tset excluded_uids {\n\t\ttype uid\n\t\telements = {\n\t\t\t0,\n\t\t\t1000,\n\t\t\t4294967294\n\t\t}\n\t}\n');
    expect(sets).toContain('\t\ttype inet_service\n\t\tflags interval\n\t\telements = {\n\t\t\t80,\n\t\t\t1000-2000\n\t\t}\n');
  });
});

describe('disarming', () => {
  it("empties iptables-nft's chains of ours in each of its families (created first, so a vanished one is no failure)", () => {
    const text = nft.disarming?.([
      { backend: 'iptables-nft', families: [4, 6], chains: ['CONSUL_PROXY_OUTPUT', 'CONSUL_DNS_REDIRECT'] },
      { backend: 'iptables-legacy', families: [4], chains: ['CONSUL_PROXY_OUTPUT'] },
      { backend: 'iptables-nft', families: [6], chains: [] },
    ]);
    expect(text).toBe(
      [
        'add table ip nat', 'add chain ip nat CONSUL_PROXY_OUTPUT', 'flush chain ip nat CONSUL_PROXY_OUTPUT',
        'add chain ip nat CONSUL_DNS_REDIRECT', 'flush chain ip nat CONSUL_DNS_REDIRECT',
        'add table ip6 nat', 'add chain ip6 nat CONSUL_PROXY_OUTPUT', 'flush chain ip6 nat CONSUL_PROXY_OUTPUT',
        'add chain ip6 nat CONSUL_DNS_REDIRECT', 'flush chain ip6 nat CONSUL_DNS_REDIRECT', '',
      ].join('\n'),
    );
    expect(nft.disarming?.([{ backend: 'iptables-legacy', families: [4, 6], chains: ['CONSUL_PROXY_OUTPUT'] }])).toBe('');
  });

  it('never writes a chain name that is not a plain name', () => {
    expect(() => nft.disarming?.([{ backend: 'iptables-nft', families: [4], chains: ['X; flush ruleset'] }])).toThrow();
  });
});

describe('iptablesNftChains', () => {
  const chain = (family: string, table: string, name: string) => ({ chain: { family, table, name, handle: 1 } });
  const dump = JSON.stringify({
    nftables: [
      { metainfo: { version: '1.0.6' } },
      chain('ip', 'nat', 'OUTPUT'),
      chain('ip', 'nat', 'CONSUL_PROXY_OUTPUT'),
      chain('ip', 'filter', 'CONSUL_PROXY_INBOUND'),
      chain('ip6', 'nat', 'CONSUL_DNS_REDIRECT'),
      chain('inet', 'consul_tproxy', 'CONSUL_PROXY_OUTPUT'),
      chain('ip', 'nat', 'CONSUL_SOMETHING_ELSE'),
    ],
  });

  it("finds our chain names in iptables-nft's nat tables only, for the families asked", () => {
    expect(iptablesNftChains(dump, [4, 6])).toEqual([
      { family: 4, chains: ['CONSUL_PROXY_OUTPUT'] },
      { family: 6, chains: ['CONSUL_DNS_REDIRECT'] },
    ]);
    expect(iptablesNftChains(dump, [6])).toEqual([{ family: 6, chains: ['CONSUL_DNS_REDIRECT'] }]);
  });

  it('reads nothing from output that is not nft JSON', () => {
    for (const text of ['', 'not json', '{}', '{"nftables": 3}', '[]']) expect(iptablesNftChains(text, [4, 6])).toEqual([]);
  });
});

describe('referencesIptablesCannotShow', () => {
  const rule = (chain: string, expr: unknown[]) => ({ rule: { family: 'ip', table: 'nat', chain, handle: 3, expr } });
  const jump = (target: string) => ({ jump: { target } });
  const SHOWN = new Set(['OUTPUT', 'PREROUTING', 'FOO', 'BAR', 'CONSUL_PROXY_OUTPUT']);

  it('finds our chains in verdict maps and map elements, not in rules that jump to them (iptables shows those)', () => {
    const dump = JSON.stringify({
      nftables: [
        { metainfo: { version: '1.0.6' } },
        rule('OUTPUT', [{ match: { op: '==', left: { meta: { key: 'l4proto' } }, right: 'tcp' } }, jump('CONSUL_PROXY_OUTPUT')]),
        rule('FOO', [{ vmap: { key: { payload: { protocol: 'ip', field: 'daddr' } }, data: { set: [['198.18.5.5', jump('CONSUL_PROXY_INBOUND')]] } } }]),
        { map: { family: 'ip', name: 'm', table: 'nat', type: 'ipv4_addr', map: 'verdict', elem: [['198.18.5.6', { goto: { target: 'CONSUL_DNS_REDIRECT' } }]] } },
        rule('BAR', [{ vmap: { key: 'x', data: { set: [['1', jump('SOMEONE_ELSES')]] } } }]),
      ],
    });
    expect(referencesIptablesCannotShow(dump, SHOWN)?.sort()).toEqual(['CONSUL_DNS_REDIRECT', 'CONSUL_PROXY_INBOUND']);
  });

  // A native base chain of another priority: iptables-nft-save leaves it out, and says the table is incompatible.
  it("a rule's own jump counts where iptables does not show its chain", () => {
    const dump = JSON.stringify({ nftables: [rule('NATIVE', [{ numgen: {} }, jump('CONSUL_PROXY_INBOUND')])] });
    expect(referencesIptablesCannotShow(dump, SHOWN)).toEqual(['CONSUL_PROXY_INBOUND']);
    expect(referencesIptablesCannotShow(dump, new Set([...SHOWN, 'NATIVE']))).toEqual([]);
  });

  it('finds nothing in a table of plain jumps; cannot tell from output that is not nft JSON', () => {
    expect(referencesIptablesCannotShow(JSON.stringify({ nftables: [rule('OUTPUT', [jump('CONSUL_PROXY_OUTPUT')])] }), SHOWN)).toEqual([]);
    for (const text of ['', 'nope', '{}']) expect(referencesIptablesCannotShow(text, SHOWN)).toBeUndefined();
  });
});

describe('only validated values reach the script', () => {
  it.each([
    ['a CIDR with a statement after it', { excludeOutboundCidrs: [{ family: 4, cidr: '10.0.0.0/8 } ; flush ruleset' }] }],
    ['a CIDR with host bits', { excludeOutboundCidrs: [cidr('10.0.0.1/8')] }],
    ['an IPv6 CIDR that is not one', { excludeOutboundCidrs: [{ family: 6, cidr: '2001:db8::/200' }] }],
    ['a DNS address that is not one', { dns: { ip: { family: 4, address: '127.0.0.1;' }, port: 8600 } }],
    ['a port out of range', { excludeOutboundPorts: ports(70_000) }],
    ['a reversed range', { excludeInboundPorts: ports([90, 80]) }],
    ['a UID that is not an integer', { excludeUids: [1.5] }],
    ['a negative proxy UID', { proxyUid: -1 }],
    ['a fractional redirect port', { outboundPort: 15001.5 }],
  ] as [string, Partial<RedirectConfig>][])('refuses %s', (_, overrides) => {
    expect(() => nft.wanted({ ...BASE, ...overrides })).toThrow(/nftables:/);
  });

  it('refuses to render a state whose text could end a statement', () => {
    const table = wantedTable(BASE);
    const evil = (rule: string): NftTable => ({ ...table, chains: [{ name: 'CONSUL_PROXY_OUTPUT', rules: [rule] }] });
    expect(() => nft.transaction(undefined, evil('return\n}\nflush ruleset'))).toThrow(/refusing to render/);
    expect(() => nft.transaction(undefined, evil('return; flush ruleset'))).toThrow(/refusing to render/);
    expect(() => nft.transaction(undefined, evil('return comment "x"'))).toThrow(/refusing to render/);
    expect(() => nft.transaction(undefined, { ...table, chains: [{ name: 'X {', rules: [] }] })).toThrow(/not a safe name/);
  });
});

describe('describe', () => {
  it('counts rules per chain and elements per set, and lists the base-chain rules', () => {
    expect(nft.describe(nft.wanted(VARIANTS['dns-port-dual-stack']))).toEqual({
      chains: {
        CONSUL_PROXY_INBOUND: 2,
        CONSUL_PROXY_IN_REDIRECT: 1,
        CONSUL_PROXY_OUTPUT: 8,
        CONSUL_PROXY_REDIRECT: 1,
        CONSUL_DNS_REDIRECT: 4,
        CONSUL_NAT_OUTPUT: 5,
        CONSUL_NAT_PREROUTING: 1,
      },
      hooks: [
        'CONSUL_NAT_OUTPUT ip daddr 127.0.0.1 udp dport 53 jump CONSUL_DNS_REDIRECT',
        'CONSUL_NAT_OUTPUT ip daddr 127.0.0.1 tcp dport 53 jump CONSUL_DNS_REDIRECT',
        'CONSUL_NAT_OUTPUT ip6 daddr ::1 udp dport 53 jump CONSUL_DNS_REDIRECT',
        'CONSUL_NAT_OUTPUT ip6 daddr ::1 tcp dport 53 jump CONSUL_DNS_REDIRECT',
        'CONSUL_NAT_OUTPUT meta l4proto tcp jump CONSUL_PROXY_OUTPUT',
        'CONSUL_NAT_PREROUTING meta l4proto tcp jump CONSUL_PROXY_INBOUND',
      ],
      // The base-chain rules are hooks and rules of our chains both, and counted once.
      rules: 22,
      sets: { excluded_uids: 3, excluded_v6: 2, excluded_v4: 2, excluded_outbound_ports: 2, excluded_inbound_ports: 2 },
    });
    expect(nft.describe(undefined)).toEqual({ chains: {}, hooks: [], rules: 0, sets: {} });
  });
});

describe('foreignRulesRemoved', () => {
  const wanted = nft.wanted(VARIANTS['basic']);

  it('is empty for a table of ours, whatever config wrote it, and for no table', () => {
    expect(nft.foreignRulesRemoved(nft.parse(fixture('basic')), wanted)).toEqual([]);
    expect(nft.foreignRulesRemoved(nft.parse(fixture('exclusions')), wanted)).toEqual([]);
    expect(nft.foreignRulesRemoved(undefined, wanted)).toEqual([]);
  });

  it("names each chain, set, rule, object and flag of someone else's that replacing the table deletes", () => {
    const dump = edited((objects) => {
      Object.assign(body(objects, 'table', NFT_TABLE), { flags: 'dormant' });
      const ours = { family: 'inet', table: NFT_TABLE };
      objects.push(
        { chain: { ...ours, name: 'OPERATOR_CHAIN', handle: 90, type: 'filter', hook: 'output', prio: 0, policy: 'drop' } },
        { rule: { ...ours, chain: 'OPERATOR_CHAIN', handle: 91, expr: [{ accept: null }] } },
        { rule: { ...ours, chain: 'CONSUL_PROXY_OUTPUT', handle: 92, expr: [{ counter: { packets: 0, bytes: 0 } }, { drop: null }] } },
        // Shaped like ours: a rule of an earlier config, replaced without a word.
        { rule: { ...ours, chain: 'CONSUL_PROXY_OUTPUT', handle: 93, expr: [{ match: { op: '==', left: { payload: { protocol: 'tcp', field: 'dport' } }, right: 22 } }, { return: null }] } },
        { set: { ...ours, name: 'operator_hosts', handle: 94, type: 'ipv4_addr', elem: ['192.0.2.1'] } },
        { counter: { ...ours, name: 'operator_counter', handle: 95, packets: 0, bytes: 0 } },
      );
    });
    expect(nft.foreignRulesRemoved(nft.parse(dump), wanted)).toEqual([
      'table flags dormant',
      'chain OPERATOR_CHAIN (type filter hook output priority 0; policy drop;, 1 rule)',
      'rule in chain CONSUL_PROXY_OUTPUT: counter packets 0 bytes 0 drop',
      'set operator_hosts (type ipv4_addr, 1 element)',
      expect.stringContaining('"operator_counter"'),
    ]);
    // Cleanup deletes the same.
    expect(nft.foreignRulesRemoved(nft.parse(dump), undefined)).toHaveLength(5);
  });
});

describe('user names (a dry run previewing another host)', () => {
  it('are quoted, so a name that is an nft keyword still parses; numeric UIDs stay bare', () => {
    const script = nft.transaction(undefined, nft.wanted({ ...BASE, proxyUid: 'accept', excludeUids: [1000, 'counter', 'daemon'] }));
    expect(script).toContain('\t\tmeta skuid "accept" return\n');
    expect(script).toContain('\t\tmeta skuid @excluded_uids return\n');
    expect(script).toContain('\t\t\t1000,\n\t\t\t"counter",\n\t\t\t"daemon"\n');
    expect(nft.transaction(undefined, nft.wanted({ ...BASE, proxyUid: 101 }))).toContain('meta skuid 101 return');
  });

  it('are refused where they are not user names', () => {
    expect(() => nft.wanted({ ...BASE, excludeUids: ['a"b'] })).toThrow(/cannot be written for nft/);
    const table = wantedTable(BASE);
    // A quote is let through only around a user name after `meta skuid`, or as a set element.
    expect(() => nft.transaction(undefined, { ...table, chains: [{ name: 'CONSUL_PROXY_OUTPUT', rules: ['ip daddr "x" return'] }] })).toThrow(/refusing/);
    const uids: NftSet = { name: 'excluded_uids', type: 'uid', flags: [], elements: ['"a b"'] };
    expect(() => nft.transaction(undefined, { ...table, sets: [uids] })).toThrow(/refusing/);
  });
});
