import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import {
  desiredState,
  EMPTY_STATE,
  isEmptyState,
  jumpsMatch,
  listedJumps,
  ownedState,
  parseNatTable,
  renderTransaction,
  ruleTarget,
  stateMatches,
  type OwnedState,
  type SavedRule,
} from '../../src/core/natTable.ts';
import { buildRuleset, OWNED_CHAINS, type RedirectConfig } from '../../src/core/ruleset.ts';
import { redirectConfig, portRanges } from '../helpers/fakes.ts';

// Save-output parsing and restore transactions. Transactions are checked by feeding them to a toy
// `iptables-restore --noflush` below (written from iptables' documented behaviour, not from src): it fails
// where the kernel would (deleting a rule that is not there, deleting a chain that is referenced or not empty).

const fixture = (name: string) => readFileSync(new URL(`../fixtures/saves/${name}.save`, import.meta.url), 'utf8');
const DOCKER = fixture('docker-host');
const CONSUL = fixture('consul-installed');
const REFERENCED = fixture('ours-referenced');

const config = (overrides: Partial<RedirectConfig> = {}) => redirectConfig({ proxyUid: 101, ...overrides });
const wanted = (overrides: Partial<RedirectConfig> = {}) => desiredState(buildRuleset(config(overrides), 4));

/** The flags that produced consul-installed.save (reference §3.2 example plus DNS and SSH). */
const CONSUL_FLAGS = config({
  proxyUid: 1234,
  excludeOutboundPorts: portRanges('80', '443'),
  excludeOutboundCidrs: [{ family: 4, cidr: '10.0.0.0/8' }],
  excludeUids: [0, 100],
  excludeInboundPorts: portRanges('22'),
  dns: { ip: { family: 4, address: '10.0.0.53' } },
});

// ---- a toy nat table and iptables-restore --noflush ----

interface ToyTable {
  order: string[];
  chains: Map<string, string[]>;
}

const BUILTIN = ['PREROUTING', 'INPUT', 'OUTPUT', 'POSTROUTING'];

/** Splits a rule spec into tokens, keeping double-quoted strings whole. */
function tokens(spec: string): string[] {
  return spec.match(/"(?:[^"\\]|\\.)*"|\S+/g) ?? [];
}

/** The chain or verdict a rule's `-j`/`-g` names; the target is always the last such option. */
function targetOf(spec: string): string | undefined {
  const t = tokens(spec);
  for (let i = t.length - 2; i >= 0; i--) if (['-j', '-g', '--jump', '--goto'].includes(t[i] ?? '')) return t[i + 1];
  return undefined;
}

function loadNat(dump: string): ToyTable {
  const table: ToyTable = { order: [], chains: new Map() };
  let inNat = false;
  for (const line of dump.split('\n')) {
    if (line.startsWith('*')) inNat = line.trim() === '*nat';
    else if (!inNat) continue;
    else if (line.startsWith(':')) {
      const name = line.slice(1).split(' ')[0] ?? '';
      table.order.push(name);
      table.chains.set(name, []);
    } else if (line.startsWith('-A ')) {
      const [, chain = '', spec = ''] = /^-A (\S+) ?(.*)$/.exec(line) ?? [];
      table.chains.get(chain)?.push(spec);
    }
  }
  return table;
}

function dumpNat(table: ToyTable): string {
  const lines = ['*nat', ...table.order.map((c) => `:${c} ${BUILTIN.includes(c) ? 'ACCEPT' : '-'} [0:0]`)];
  for (const chain of table.order) for (const spec of table.chains.get(chain) ?? []) lines.push(`-A ${chain} ${spec}`);
  return [...lines, 'COMMIT', ''].join('\n');
}

const VERDICTS = ['RETURN', 'ACCEPT', 'DROP', 'REDIRECT', 'DNAT', 'SNAT', 'MASQUERADE', 'LOG'];

/** Applies a restore input to a copy of the table, atomically: throws (and changes nothing) on error. */
function restoreNoflush(table: ToyTable, input: string): ToyTable {
  const next: ToyTable = { order: [...table.order], chains: new Map([...table.chains].map(([k, v]) => [k, [...v]])) };
  const lines = input.split('\n');
  expect(lines[0]).toBe('*nat');
  expect(lines.at(-2)).toBe('COMMIT');
  expect(lines.at(-1)).toBe('');
  for (const line of lines.slice(1, -2)) {
    const chainDecl = /^:(\S+) - \[0:0\]$/.exec(line);
    if (chainDecl?.[1]) {
      const name = chainDecl[1];
      if (!next.chains.has(name)) next.order.push(name);
      next.chains.set(name, []); // declaring a chain creates or flushes it
      continue;
    }
    const rule = /^-([ADX]) (\S+)(?: (.*))?$/.exec(line);
    if (!rule) throw new Error(`toy restore: bad line ${JSON.stringify(line)}`);
    const [, op, chain = '', spec = ''] = rule;
    const rules = next.chains.get(chain);
    if (!rules) throw new Error(`toy restore: no chain ${chain} (${line})`);
    if (op === 'A') {
      const target = targetOf(spec);
      if (target && !VERDICTS.includes(target) && !next.chains.has(target)) throw new Error(`toy restore: no target ${target}`);
      rules.push(spec);
    } else if (op === 'D') {
      const index = rules.indexOf(spec);
      if (index < 0) throw new Error(`toy restore: Bad rule (does a matching rule exist in that chain?): ${line}`);
      rules.splice(index, 1);
    } else {
      if (rules.length > 0) throw new Error(`toy restore: chain ${chain} not empty`);
      for (const [other, specs] of next.chains) {
        if (specs.some((s) => targetOf(s) === chain)) throw new Error(`toy restore: ${chain} is referenced from ${other}`);
      }
      next.chains.delete(chain);
      next.order = next.order.filter((c) => c !== chain);
    }
  }
  return next;
}

const isOwnedChain = (chain: string) => (OWNED_CHAINS as readonly string[]).includes(chain);

/** Everything that is not ours: foreign chains and their rules, minus jumps into our chains. */
function foreignPart(table: ToyTable) {
  return table.order
    .filter((chain) => !isOwnedChain(chain))
    .map((chain) => [chain, (table.chains.get(chain) ?? []).filter((s) => !isOwnedChain(targetOf(s) ?? ''))]);
}

/** Renders from a dump to `target`, applies it to the toy table, and checks the outcome. */
function applyOver(dump: string, target: OwnedState) {
  const before = loadNat(dump);
  const current = ownedState(parseNatTable(dump));
  const transaction = renderTransaction(current, target);
  const after = restoreNoflush(before, transaction);
  const afterDump = dumpNat(after);
  const reread = ownedState(parseNatTable(afterDump));
  expect(stateMatches(reread, target), `state after:\n${afterDump}`).toBe(true);
  expect(foreignPart(after)).toEqual(foreignPart(before));
  return { transaction, current, after, afterDump, reread };
}

const lines = (text: string) => text.split('\n');
const specLines = (rules: readonly SavedRule[]) => rules.map((r) => `${r.chain} ${r.spec}`);

describe('parseNatTable', () => {
  it('reads only the nat table of a multi-table dump with comments and counters', () => {
    const table = parseNatTable(DOCKER);
    expect(table?.chains).toEqual(['PREROUTING', 'INPUT', 'OUTPUT', 'POSTROUTING', 'DOCKER', 'KUBE-SERVICES']);
    expect(table?.rules).toHaveLength(9);
    expect(table?.rules[0]).toEqual({ chain: 'PREROUTING', spec: '-m addrtype --dst-type LOCAL -j DOCKER' });
    expect(table?.rules.some((r) => r.chain.startsWith('DOCKER-') || r.spec.includes('CHECKSUM'))).toBe(false);
  });

  it('keeps quoted comments verbatim', () => {
    expect(parseNatTable(DOCKER)?.rules.at(-1)).toEqual({
      chain: 'KUBE-SERVICES',
      spec: '-m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j RETURN',
    });
  });

  it('keeps runs of spaces inside quoted comments (a -D must match the rule byte for byte)', () => {
    const rules = parseNatTable(REFERENCED)?.rules ?? [];
    expect(rules).toContainEqual({
      chain: 'MESH-HOOK',
      spec: '-s 10.1.0.0/16 -m comment --comment "hand-off  to consul" -g CONSUL_PROXY_INBOUND',
    });
  });

  it('is undefined without a nat table, empty for an empty one', () => {
    expect(parseNatTable('')).toBeUndefined();
    expect(parseNatTable('*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j ACCEPT\nCOMMIT\n')).toBeUndefined();
    expect(parseNatTable('*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n')).toEqual({
      chains: ['PREROUTING', 'OUTPUT'],
      rules: [],
    });
  });

  it('ignores a same-named chain and its rules in the filter table', () => {
    const table = parseNatTable(CONSUL);
    expect(table?.rules.filter((r) => r.chain === 'CONSUL_PROXY_INBOUND')).toEqual([
      { chain: 'CONSUL_PROXY_INBOUND', spec: '-p tcp -m tcp --dport 22 -j RETURN' },
      { chain: 'CONSUL_PROXY_INBOUND', spec: '-p tcp -j CONSUL_PROXY_IN_REDIRECT' },
    ]);
    expect(table?.rules.some((r) => r.chain === 'INPUT')).toBe(false);
  });

  it('tolerates CRLF line ends and a missing final newline', () => {
    const table = parseNatTable(CONSUL.replace(/\n/g, '\r\n').trimEnd());
    expect(table?.rules).toEqual(parseNatTable(CONSUL)?.rules);
    expect(table?.chains).toEqual(parseNatTable(CONSUL)?.chains);
  });

  it('sees a rule without match or target (`-A CHAIN` alone), so drift inside our chains is noticed', () => {
    const table = parseNatTable('*nat\n:OUTPUT ACCEPT [0:0]\n:CONSUL_PROXY_OUTPUT - [0:0]\n-A CONSUL_PROXY_OUTPUT\nCOMMIT\n');
    expect(table?.rules).toEqual([{ chain: 'CONSUL_PROXY_OUTPUT', spec: '' }]);
  });
});

describe('ruleTarget', () => {
  it.each([
    ['-p tcp -j CONSUL_PROXY_OUTPUT', 'CONSUL_PROXY_OUTPUT'],
    ['-s 10.0.0.0/8 -g CONSUL_PROXY_INBOUND', 'CONSUL_PROXY_INBOUND'],
    ['-p tcp -m tcp --dport 53 -j DNAT --to-destination 10.0.0.53', 'DNAT'],
    ['-m comment --comment "mesh:  see -j CONSUL_PROXY_INBOUND docs" -j MESH-HOOK', 'MESH-HOOK'],
    ['-m comment --comment "no target"', undefined],
    ['-m comment --comment "say \\"-j CONSUL_PROXY_OUTPUT\\" here" -j ACCEPT', 'ACCEPT'],
    ['-m set --match-set CONSUL_PROXY_OUTPUT dst -j RETURN', 'RETURN'],
    ['-p tcp --jump CONSUL_PROXY_OUTPUT', 'CONSUL_PROXY_OUTPUT'],
    ['-s 10.0.0.0/8 --goto CONSUL_PROXY_INBOUND', 'CONSUL_PROXY_INBOUND'],
  ])('%s -> %s', (spec, target) => {
    expect(ruleTarget(spec)).toBe(target);
  });
});

describe('ownedState', () => {
  it('finds nothing of ours on a Docker host', () => {
    const state = ownedState(parseNatTable(DOCKER));
    expect(state).toEqual(EMPTY_STATE);
    expect(isEmptyState(state)).toBe(true);
    expect(ownedState(undefined)).toEqual(EMPTY_STATE);
  });

  it('collects a Consul install: five chains in Consul order, their rules in order, duplicate jumps kept', () => {
    const state = ownedState(parseNatTable(CONSUL));
    expect(state.chains).toEqual(OWNED_CHAINS);
    expect(state.chainRules).toHaveLength(14);
    for (const chain of OWNED_CHAINS) {
      expect(state.chainRules.filter((r) => r.chain === chain).map((r) => r.spec)).toEqual(loadNat(CONSUL).chains.get(chain));
    }
    expect(state.chainRules.filter((r) => r.chain === 'CONSUL_PROXY_OUTPUT')).toHaveLength(8);
    expect(specLines(state.jumps)).toEqual([
      'PREROUTING -p tcp -j CONSUL_PROXY_INBOUND',
      'PREROUTING -p tcp -j CONSUL_PROXY_INBOUND',
      'OUTPUT -p udp -m udp --dport 53 -j CONSUL_DNS_REDIRECT',
      'OUTPUT -p tcp -m tcp --dport 53 -j CONSUL_DNS_REDIRECT',
      'OUTPUT -p tcp -j CONSUL_PROXY_OUTPUT',
      'OUTPUT -p tcp -j CONSUL_PROXY_OUTPUT',
    ]);
    expect(state.otherReferences).toEqual([]);
    expect(isEmptyState(state)).toBe(false);
  });

  it('tells jumps from PREROUTING/OUTPUT apart from references in foreign chains, goto included', () => {
    const state = ownedState(parseNatTable(REFERENCED));
    expect(specLines(state.jumps)).toEqual(['PREROUTING -p tcp -j CONSUL_PROXY_INBOUND', 'OUTPUT -p tcp -j CONSUL_PROXY_OUTPUT']);
    expect(specLines(state.otherReferences)).toEqual([
      'MESH-HOOK -s 10.1.0.0/16 -m comment --comment "hand-off  to consul" -g CONSUL_PROXY_INBOUND',
    ]);
  });

  it('does not claim a chain that only shares our prefix, nor rules whose comment names our chain', () => {
    const state = ownedState(parseNatTable(REFERENCED));
    expect(state.chains).not.toContain('CONSUL_PROXY_INBOUND_LOG');
    expect(state.chainRules.some((r) => r.chain === 'CONSUL_PROXY_INBOUND_LOG')).toBe(false);
    expect(specLines(state.jumps).some((s) => s.includes('MESH-HOOK'))).toBe(false);
  });

  it('a leftover empty chain (Consul failed right after -N) still counts as ours', () => {
    const state = ownedState(parseNatTable('*nat\n:OUTPUT ACCEPT [0:0]\n:CONSUL_PROXY_INBOUND - [0:0]\nCOMMIT\n'));
    expect(state.chains).toEqual(['CONSUL_PROXY_INBOUND']);
    expect(isEmptyState(state)).toBe(false);
  });
});

describe('stateMatches', () => {
  const target = wanted({ excludeUids: [5, 6], dns: { port: 8600 } });
  const withRules = (state: OwnedState, changes: Partial<OwnedState>): OwnedState => ({ ...state, ...changes });

  it('an installed ruleset read back from iptables-save matches what was wanted', () => {
    const dump = dumpNat(restoreNoflush(loadNat(DOCKER), renderTransaction(EMPTY_STATE, target)));
    expect(stateMatches(ownedState(parseNatTable(dump)), target)).toBe(true);
  });

  it('order within a chain matters', () => {
    const rules = [...target.chainRules];
    const first = rules.findIndex((r) => r.chain === 'CONSUL_PROXY_OUTPUT');
    [rules[first], rules[first + 1]] = [rules[first + 1]!, rules[first]!];
    expect(stateMatches(withRules(target, { chainRules: rules }), target)).toBe(false);
    const jumps = [...target.jumps];
    const tcpJump = jumps.findIndex((r) => r.spec === '-p tcp -j CONSUL_PROXY_OUTPUT');
    const dnsJump = jumps.findIndex((r) => r.chain === 'OUTPUT' && r.spec.includes('CONSUL_DNS_REDIRECT'));
    [jumps[tcpJump], jumps[dnsJump]] = [jumps[dnsJump]!, jumps[tcpJump]!];
    expect(stateMatches(withRules(target, { jumps }), target)).toBe(false);
  });

  it('order across chains does not', () => {
    const reversedChains = (rules: readonly SavedRule[]) => {
      const chains = [...new Set(rules.map((r) => r.chain))].reverse();
      return chains.flatMap((c) => rules.filter((r) => r.chain === c));
    };
    const shuffled = withRules(target, {
      chains: [...target.chains].reverse(),
      chainRules: reversedChains(target.chainRules),
      jumps: reversedChains(target.jumps),
    });
    expect(stateMatches(shuffled, target)).toBe(true);
  });

  it('a duplicate jump, a missing jump, an extra or missing rule, or a missing chain is a mismatch', () => {
    const [firstJump] = target.jumps;
    expect(stateMatches(withRules(target, { jumps: [...target.jumps, firstJump!] }), target)).toBe(false);
    expect(stateMatches(withRules(target, { jumps: target.jumps.slice(1) }), target)).toBe(false);
    expect(stateMatches(withRules(target, { chainRules: target.chainRules.slice(1) }), target)).toBe(false);
    const extra = { chain: 'CONSUL_PROXY_INBOUND', spec: '-p tcp -m tcp --dport 22 -j RETURN' };
    expect(stateMatches(withRules(target, { chainRules: [extra, ...target.chainRules] }), target)).toBe(false);
    expect(stateMatches(withRules(target, { chains: target.chains.slice(0, 4) }), target)).toBe(false);
    expect(stateMatches(withRules(target, { chains: [...target.chains, 'CONSUL_EXTRA'] }), target)).toBe(false);
    expect(stateMatches(EMPTY_STATE, target)).toBe(false);
    expect(stateMatches(target, EMPTY_STATE)).toBe(false);
  });

  it('references from foreign chains are not part of the comparison', () => {
    const reference = { chain: 'MESH-HOOK', spec: '-g CONSUL_PROXY_INBOUND' };
    expect(stateMatches(withRules(target, { otherReferences: [reference] }), target)).toBe(true);
  });

  it('a Consul install equals our ruleset for the same flags, once its duplicate jumps are gone', () => {
    const consul = ownedState(parseNatTable(CONSUL));
    expect(stateMatches(consul, desiredState(buildRuleset(CONSUL_FLAGS, 4)))).toBe(false);
    const deduplicated = withRules(consul, { jumps: consul.jumps.filter((j, i, all) => all.findIndex((k) => k.spec === j.spec && k.chain === j.chain) === i) });
    expect(stateMatches(deduplicated, desiredState(buildRuleset(CONSUL_FLAGS, 4)))).toBe(true);
  });
});

describe('listedJumps and jumpsMatch (the check of a write that reads back the hook chains only)', () => {
  // `iptables -t nat -S PREROUTING` / `-S OUTPUT`, as iptables prints them: a -P line, then the rules.
  const listings = (prerouting: string[], output: string[]) => [
    ['-P PREROUTING ACCEPT', ...prerouting].join('\n') + '\n',
    ['-P OUTPUT ACCEPT', ...output].join('\n') + '\n',
  ];
  const OURS_PREROUTING = '-A PREROUTING -p tcp -j CONSUL_PROXY_INBOUND';
  const OURS_OUTPUT = '-A OUTPUT -p tcp -j CONSUL_PROXY_OUTPUT';
  const DOCKER_RULE = '-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER';

  it('keeps only the jumps into our chains, in listing order', () => {
    expect(listedJumps(listings([OURS_PREROUTING], [DOCKER_RULE, OURS_OUTPUT]))).toEqual<SavedRule[]>([
      { chain: 'PREROUTING', spec: '-p tcp -j CONSUL_PROXY_INBOUND' },
      { chain: 'OUTPUT', spec: '-p tcp -j CONSUL_PROXY_OUTPUT' },
    ]);
  });

  it('matches the wanted jumps exactly once each, whatever foreign rules sit around them', () => {
    expect(jumpsMatch(listedJumps(listings([OURS_PREROUTING], [DOCKER_RULE, OURS_OUTPUT])), wanted())).toBe(true);
  });

  it('a duplicate jump (two racing writes) or a missing one is a mismatch', () => {
    const duplicated = listings([OURS_PREROUTING, OURS_PREROUTING], [OURS_OUTPUT]);
    expect(jumpsMatch(listedJumps(duplicated), wanted())).toBe(false);
    expect(jumpsMatch(listedJumps(listings([], [OURS_OUTPUT])), wanted())).toBe(false);
  });

  it('after a cleanup, no jump is what is wanted', () => {
    expect(jumpsMatch(listedJumps(listings([], [DOCKER_RULE])), EMPTY_STATE)).toBe(true);
    expect(jumpsMatch(listedJumps(listings([OURS_PREROUTING], [])), EMPTY_STATE)).toBe(false);
  });
});

describe('renderTransaction', () => {
  it('over a clean table: declares the five chains, adds everything, deletes nothing', () => {
    const target = wanted({ excludeInboundPorts: portRanges('22') });
    const { transaction, after } = applyOver(DOCKER, target);
    expect(transaction).toBe(renderTransaction(EMPTY_STATE, target));
    expect(transaction).not.toMatch(/^-[DX] /m);
    expect(transaction).not.toContain('DOCKER');
    expect(lines(transaction).filter((l) => l.startsWith(':'))).toEqual(OWNED_CHAINS.map((c) => `:${c} - [0:0]`));
    // Docker's hooks stay first in OUTPUT/PREROUTING, ours are appended (-A), as Consul does.
    expect(after.chains.get('OUTPUT')?.[0]).toContain('-j DOCKER');
    expect(after.chains.get('PREROUTING')?.at(-1)).toBe('-p tcp -j CONSUL_PROXY_INBOUND');
  });

  it('over our own earlier run with other flags: old jumps deleted, new rules in, no chain removed', () => {
    const first = applyOver(DOCKER, wanted({ dns: { port: 8600 }, excludeUids: [7] }));
    const second = wanted({ inboundPort: 21000, excludeInboundPorts: portRanges('22') });
    const { transaction, afterDump } = applyOver(first.afterDump, second);
    expect(lines(transaction).filter((l) => l.startsWith('-D '))).toEqual([
      '-D PREROUTING -p tcp -j CONSUL_PROXY_INBOUND',
      '-D OUTPUT -d 127.0.0.1/32 -p udp -m udp --dport 53 -j CONSUL_DNS_REDIRECT',
      '-D OUTPUT -d 127.0.0.1/32 -p tcp -m tcp --dport 53 -j CONSUL_DNS_REDIRECT',
      '-D OUTPUT -p tcp -j CONSUL_PROXY_OUTPUT',
    ]);
    expect(transaction).not.toMatch(/^-X /m);
    expect(afterDump).not.toContain('8600');
    expect(afterDump).not.toContain('--uid-owner 7 ');
    expect(afterDump).toContain('--to-ports 21000');
  });

  it('re-applying the same flags is a no-op: the state already matches, and rendering anyway changes nothing', () => {
    const target = wanted({ excludeInboundPorts: portRanges('22'), dns: { ip: { family: 4, address: '10.0.0.53' } } });
    const first = applyOver(DOCKER, target);
    expect(stateMatches(first.reread, target)).toBe(true);
    const second = applyOver(first.afterDump, target);
    expect(second.afterDump).toBe(first.afterDump);
  });

  it("over Consul's own rules with duplicate jumps: every copy is deleted, one of each is added", () => {
    const target = desiredState(buildRuleset(CONSUL_FLAGS, 4));
    const { transaction, after } = applyOver(CONSUL, target);
    const deletes = lines(transaction).filter((l) => l.startsWith('-D '));
    expect(deletes.filter((l) => l === '-D PREROUTING -p tcp -j CONSUL_PROXY_INBOUND')).toHaveLength(2);
    expect(deletes.filter((l) => l === '-D OUTPUT -p tcp -j CONSUL_PROXY_OUTPUT')).toHaveLength(2);
    expect(deletes).toHaveLength(6);
    expect(after.chains.get('PREROUTING')?.filter((s) => s.includes('CONSUL'))).toEqual(['-p tcp -j CONSUL_PROXY_INBOUND']);
  });

  it('over a Consul 1.10 install (four chains, no DNS chain): the DNS chain is created', () => {
    const dump = CONSUL.replace(/^.*CONSUL_DNS_REDIRECT.*\n/gm, '');
    const target = desiredState(buildRuleset(config(), 4));
    const { transaction } = applyOver(dump, target);
    expect(transaction).toContain(':CONSUL_DNS_REDIRECT - [0:0]');
  });

  it('keeps a foreign reference to our chain when the chain stays', () => {
    const target = wanted();
    const { after, transaction } = applyOver(REFERENCED, target);
    expect(transaction).not.toContain('MESH-HOOK');
    expect(after.chains.get('MESH-HOOK')).toContain('-s 10.1.0.0/16 -m comment --comment "hand-off  to consul" -g CONSUL_PROXY_INBOUND');
  });

  it('cleanup of a Consul install: flushes and deletes the five chains and every jump, nothing else', () => {
    const { transaction, after } = applyOver(CONSUL, EMPTY_STATE);
    expect(lines(transaction).filter((l) => l.startsWith('-X '))).toEqual(OWNED_CHAINS.map((c) => `-X ${c}`));
    expect(lines(transaction).filter((l) => l.startsWith('-D '))).toHaveLength(6);
    expect(transaction).not.toMatch(/^-A /m);
    expect(after.order).toEqual(['PREROUTING', 'INPUT', 'OUTPUT', 'POSTROUTING', 'DOCKER']);
    expect(dumpNat(after)).not.toContain('CONSUL');
  });

  it('cleanup deletes a foreign chain\'s reference to our chain (verbatim) and leaves the rest of that chain', () => {
    const { transaction, after } = applyOver(REFERENCED, EMPTY_STATE);
    expect(transaction).toContain('-D MESH-HOOK -s 10.1.0.0/16 -m comment --comment "hand-off  to consul" -g CONSUL_PROXY_INBOUND\n');
    expect(after.chains.get('MESH-HOOK')).toEqual(['-j CONSUL_PROXY_INBOUND_LOG']);
    expect(after.chains.get('PREROUTING')).toEqual(['-m comment --comment "mesh:  see -j CONSUL_PROXY_INBOUND docs" -j MESH-HOOK']);
    expect(after.chains.has('CONSUL_PROXY_INBOUND_LOG')).toBe(true);
  });

  it('cleanup deletes every copy of a duplicated foreign reference, and the chain it blocked', () => {
    const dump = [
      '*nat',
      ':PREROUTING ACCEPT [0:0]',
      ':OUTPUT ACCEPT [0:0]',
      ':CONSUL_PROXY_OUTPUT - [0:0]',
      ':LEGACY-HOOK - [0:0]',
      '-A OUTPUT -j LEGACY-HOOK',
      '-A LEGACY-HOOK -p tcp -j CONSUL_PROXY_OUTPUT',
      '-A LEGACY-HOOK -p tcp -j CONSUL_PROXY_OUTPUT',
      '-A LEGACY-HOOK -j RETURN',
      '-A CONSUL_PROXY_OUTPUT -j RETURN',
      'COMMIT',
      '',
    ].join('\n');
    const { transaction, after } = applyOver(dump, EMPTY_STATE);
    expect(lines(transaction).filter((l) => l === '-D LEGACY-HOOK -p tcp -j CONSUL_PROXY_OUTPUT')).toHaveLength(2);
    expect(after.chains.get('LEGACY-HOOK')).toEqual(['-j RETURN']);
    expect(after.chains.get('OUTPUT')).toEqual(['-j LEGACY-HOOK']);
  });

  it('cleanup of a leftover empty chain deletes only what exists', () => {
    const dump = '*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:CONSUL_PROXY_INBOUND - [0:0]\nCOMMIT\n';
    const { transaction } = applyOver(dump, EMPTY_STATE);
    expect(transaction).toBe('*nat\n:CONSUL_PROXY_INBOUND - [0:0]\n-X CONSUL_PROXY_INBOUND\nCOMMIT\n');
  });

  it('cleanup on a clean table is an empty transaction', () => {
    expect(renderTransaction(ownedState(parseNatTable(DOCKER)), EMPTY_STATE)).toBe('*nat\nCOMMIT\n');
    expect(renderTransaction(EMPTY_STATE, EMPTY_STATE)).toBe('*nat\nCOMMIT\n');
  });

  it('never emits -X when every chain stays', () => {
    for (const dump of [DOCKER, CONSUL, REFERENCED]) {
      expect(renderTransaction(ownedState(parseNatTable(dump)), wanted())).not.toMatch(/^-X /m);
    }
  });

  it('renders an apply over an earlier run exactly: the fresh transaction plus one -D per old jump', () => {
    const first = applyOver('*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n', wanted());
    const target = wanted({ outboundPort: 15002 });
    const fresh = renderTransaction(EMPTY_STATE, target);
    const lastDeclaration = ':CONSUL_DNS_REDIRECT - [0:0]\n';
    expect(renderTransaction(first.reread, target)).toBe(
      fresh.replace(
        lastDeclaration,
        `${lastDeclaration}-D PREROUTING -p tcp -j CONSUL_PROXY_INBOUND\n-D OUTPUT -p tcp -j CONSUL_PROXY_OUTPUT\n`,
      ),
    );
    expect(fresh).toContain('-A CONSUL_PROXY_REDIRECT -p tcp -j REDIRECT --to-ports 15002\n');
  });
});
