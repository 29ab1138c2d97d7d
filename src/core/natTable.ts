import type { Dialect, TableSummary } from './dialect.ts';
import {
  buildRuleset,
  isValueSet,
  OWNED_CHAINS,
  redirectedFamilies,
  type Hook,
  type Rule,
  type Ruleset,
  type Target,
} from './ruleset.ts';
import type { Family, PortRange } from './values.ts';

// The iptables dialect: reading `iptables-save` output and writing `iptables-restore --noflush`
// transactions, for one address family's nat table. Pure text in, text out.

/** iptables' built-in chains where Consul hooks in. */
export const HOOK_CHAINS: readonly string[] = ['PREROUTING', 'OUTPUT'];
const HOOK_CHAIN: Record<Hook, string> = { prerouting: 'PREROUTING', output: 'OUTPUT' };

const chainName = (chain: Rule['chain']) => (chain === 'prerouting' || chain === 'output' ? HOOK_CHAIN[chain] : chain);

const portText = (range: PortRange) => (range.low === range.high ? String(range.low) : `${range.low}:${range.high}`);

/** A rule's match and target exactly as `iptables-save` prints them, so installed and wanted compare as text. */
export function ruleSpec(rule: Rule): string {
  const { destination, destinationPort, uidOwner } = rule;
  // Sets and family matches belong to nftables' inet tables; an iptables table is one family, one rule each.
  if (isValueSet(destination) || isValueSet(destinationPort) || isValueSet(uidOwner) || rule.family !== undefined) {
    throw new Error('an iptables rule matches single values only');
  }
  let match = '';
  // A /0 destination matches everything, and iptables-save leaves it out.
  if (destination !== undefined && !destination.cidr.endsWith('/0')) match += `-d ${destination.cidr} `;
  if (rule.protocol !== undefined) match += `-p ${rule.protocol} `;
  // Every port (0:65535) matches like no --dport, and iptables-save leaves it out.
  if (destinationPort !== undefined) {
    const everyPort = destinationPort.low === 0 && destinationPort.high === 65535;
    match += `-m ${rule.protocol ?? 'tcp'} ${everyPort ? '' : `--dport ${portText(destinationPort)} `}`;
  }
  if (uidOwner !== undefined) match += `-m owner --uid-owner ${uidOwner} `;
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
    case 'dnat': {
      const { address, port } = target.to;
      if (port === undefined) return `-j DNAT --to-destination ${address.address}`;
      return `-j DNAT --to-destination ${address.family === 6 ? `[${address.address}]` : address.address}:${port}`;
    }
  }
}

export interface SavedRule {
  chain: string;
  /** Everything after `-A <chain> `, verbatim, so it can be fed back as `-D <chain> <spec>`. */
  spec: string;
}

/** The `*nat` table of one `iptables-save` dump. */
export interface NatTable {
  chains: readonly string[];
  rules: readonly SavedRule[];
}

/** Parses the nat table out of an `iptables-save` dump; undefined when the dump has no nat table. */
export function parseNatTable(saveOutput: string): NatTable | undefined {
  let inNat = false;
  let seen = false;
  const chains: string[] = [];
  const rules: SavedRule[] = [];
  for (const rawLine of saveOutput.split('\n')) {
    const line = rawLine.trim();
    if (line.startsWith('*')) {
      inNat = line === '*nat';
      seen ||= inNat;
    } else if (!inNat || line === '' || line.startsWith('#')) {
      continue;
    } else if (line === 'COMMIT') {
      inNat = false;
    } else if (line.startsWith(':')) {
      const name = line.slice(1).split(/\s+/)[0];
      if (name) chains.push(name);
    } else {
      const rule = parseRuleLine(line);
      if (rule) rules.push(rule);
    }
  }
  return seen ? { chains, rules } : undefined;
}

/** An `-A <chain> <spec>` line, as iptables-save and `iptables -S` print it. */
function parseRuleLine(line: string): SavedRule | undefined {
  // The spec stays verbatim: a quoted comment's spacing must survive into a `-D` that matches it.
  const match = /^-A (\S+)(?: (.*))?$/.exec(line);
  return match?.[1] ? { chain: match[1], spec: match[2] ?? '' } : undefined;
}

/** The jumps into owned chains in `iptables -S <hook chain>` listings. */
export function listedJumps(listings: readonly string[]): SavedRule[] {
  return listings
    .flatMap((listing) => listing.split('\n'))
    .flatMap((line) => parseRuleLine(line.trim()) ?? [])
    .filter((rule) => isOwned(ruleTarget(rule.spec) ?? ''));
}

/** Splits a saved rule into words the way iptables-restore does: double quotes group, `\"` escapes. */
function ruleWords(spec: string): string[] {
  return [...spec.matchAll(/"((?:[^"\\]|\\.)*)"|(\S+)/g)].map((m) => m[1] ?? m[2] ?? '');
}

/** The chain a rule jumps or goes to, if any: the last -j/-g word, never one inside a quoted comment. */
export function ruleTarget(spec: string): string | undefined {
  const words = ruleWords(spec);
  const flagAt = words.findLastIndex((word) => ['-j', '--jump', '-g', '--goto'].includes(word));
  return flagAt < 0 ? undefined : words[flagAt + 1];
}

const OWNED = new Set<string>(OWNED_CHAINS);
const isOwned = (chain: string) => OWNED.has(chain);

/** What of ours is in a table: owned chains, their rules, and the jumps into them. */
export interface OwnedState {
  chains: readonly string[];
  /** Rules inside owned chains, in order. */
  chainRules: readonly SavedRule[];
  /** Rules in PREROUTING/OUTPUT whose target is an owned chain: where Consul hooks in. */
  jumps: readonly SavedRule[];
  /** Jumps into owned chains from anyone else's chains; only removed when the chain itself goes. */
  otherReferences: readonly SavedRule[];
}

export const EMPTY_STATE: OwnedState = { chains: [], chainRules: [], jumps: [], otherReferences: [] };

export function ownedState(table: NatTable | undefined): OwnedState {
  if (!table) return EMPTY_STATE;
  const references = table.rules.filter((rule) => !isOwned(rule.chain) && isOwned(ruleTarget(rule.spec) ?? ''));
  return {
    chains: OWNED_CHAINS.filter((chain) => table.chains.includes(chain)),
    chainRules: table.rules.filter((rule) => isOwned(rule.chain)),
    jumps: references.filter((rule) => HOOK_CHAINS.includes(rule.chain)),
    otherReferences: references.filter((rule) => !HOOK_CHAINS.includes(rule.chain)),
  };
}

/** The state a ruleset leaves behind, in `iptables-save` form. */
export function desiredState(ruleset: Ruleset): OwnedState {
  const chainRules: SavedRule[] = [];
  const jumps: SavedRule[] = [];
  for (const rule of ruleset.rules) {
    const chain = chainName(rule.chain);
    (isOwned(chain) ? chainRules : jumps).push({ chain, spec: ruleSpec(rule) });
  }
  return { chains: OWNED_CHAINS, chainRules, jumps, otherReferences: [] };
}

function specsByChain(rules: readonly SavedRule[]): Map<string, string[]> {
  const map = new Map<string, string[]>();
  for (const rule of rules) {
    const specs = map.get(rule.chain);
    if (specs) specs.push(rule.spec);
    else map.set(rule.chain, [rule.spec]);
  }
  return map;
}

// Order matters within a chain (Consul's exclusions are order-sensitive), not across chains.
function sameRules(a: readonly SavedRule[], b: readonly SavedRule[]): boolean {
  const left = specsByChain(a);
  const right = specsByChain(b);
  return (
    left.size === right.size &&
    [...left].every(([chain, specs]) => {
      const other = right.get(chain);
      return other !== undefined && other.length === specs.length && specs.every((spec, i) => spec === other[i]);
    })
  );
}

/** True when the hook chains hold exactly the jumps `wanted` has, in order. */
export const jumpsMatch = (jumps: readonly SavedRule[], wanted: OwnedState) => sameRules(jumps, wanted.jumps);

/** True when the table holds exactly `wanted`: same chains, same rules in the same order, one copy of each jump. */
export function stateMatches(current: OwnedState, wanted: OwnedState): boolean {
  return (
    current.chains.length === wanted.chains.length &&
    wanted.chains.every((chain) => current.chains.includes(chain)) &&
    sameRules(current.chainRules, wanted.chainRules) &&
    sameRules(current.jumps, wanted.jumps)
  );
}

export const isEmptyState = (state: OwnedState) => state.chains.length === 0 && state.jumps.length === 0;

/** Rules in someone else's chains jumping into one of `removed`: a chain cannot be deleted while referenced. */
const blockingReferences = (current: OwnedState, removed: readonly string[]) =>
  current.otherReferences.filter((rule) => removed.includes(ruleTarget(rule.spec) ?? ''));

const removedChains = (current: OwnedState, target: OwnedState) => current.chains.filter((chain) => !target.chains.includes(chain));

/**
 * One `--noflush` transaction that turns `current` into `target`: declaring a chain creates or empties it,
 * every hook jump found is deleted (duplicates included), the target's rules are added, and owned chains
 * the target lacks are deleted, together with any reference to them that would block the deletion.
 */
export function renderTransaction(current: OwnedState, target: OwnedState): string {
  const lines = ['*nat'];
  const declared: string[] = OWNED_CHAINS.filter((chain) => target.chains.includes(chain) || current.chains.includes(chain));
  const removed = declared.filter((chain) => !target.chains.includes(chain));
  for (const chain of declared) lines.push(`:${chain} - [0:0]`);
  for (const jump of [...current.jumps, ...blockingReferences(current, removed)]) lines.push(`-D ${jump.chain} ${jump.spec}`);
  // Chain contents first, hook jumps last: nothing is reachable before its chain is filled.
  for (const rule of [...target.chainRules, ...target.jumps]) lines.push(`-A ${rule.chain} ${rule.spec}`);
  for (const chain of removed) lines.push(`-X ${chain}`);
  lines.push('COMMIT', '');
  return lines.join('\n');
}

/** Why `current` is not `target`, one line each: chains missing, rules missing or unexpected, order. */
function differences(current: OwnedState, target: OwnedState): string[] {
  const lines: string[] = [];
  for (const chain of target.chains) {
    if (!current.chains.includes(chain)) lines.push(`chain ${chain} is missing`);
  }
  for (const chain of current.chains) {
    if (!target.chains.includes(chain)) lines.push(`chain ${chain} is not asked for`);
  }
  const all = (state: OwnedState) => [...state.chainRules, ...state.jumps];
  const have = specsByChain(all(current));
  const want = specsByChain(all(target));
  for (const chain of new Set([...have.keys(), ...want.keys()])) {
    const haveSpecs = have.get(chain) ?? [];
    const wantSpecs = want.get(chain) ?? [];
    if (haveSpecs.join('\n') === wantSpecs.join('\n')) continue;
    const haveSet = new Set(haveSpecs);
    const wantSet = new Set(wantSpecs);
    const missing = wantSpecs.filter((s) => !haveSet.has(s));
    const unexpected = haveSpecs.filter((s) => !wantSet.has(s));
    for (const spec of missing) lines.push(`missing    -A ${chain} ${spec}`);
    for (const spec of unexpected) lines.push(`unexpected -A ${chain} ${spec}`);
    if (missing.length === 0 && unexpected.length === 0) lines.push(`${chain} has the right rules in the wrong order or count`);
  }
  return lines;
}

function describe(state: OwnedState): TableSummary {
  const chains: Record<string, number> = {};
  for (const chain of state.chains) chains[chain] = state.chainRules.filter((rule) => rule.chain === chain).length;
  const hooks = [...state.jumps, ...state.otherReferences].map((rule) => `-A ${rule.chain} ${rule.spec}`);
  return { chains, hooks, rules: state.chainRules.length + hooks.length };
}

/** The iptables dialect of one family's nat table. */
export function iptablesDialect(family: Family): Dialect<OwnedState> {
  return {
    wanted: (config) =>
      config !== undefined && redirectedFamilies(config).includes(family) ? desiredState(buildRuleset(config, family)) : EMPTY_STATE,
    parse: (dump) => ownedState(parseNatTable(dump)),
    isEmpty: isEmptyState,
    same: stateMatches,
    differences,
    transaction: renderTransaction,
    foreignRulesRemoved: (current, target) =>
      blockingReferences(current, removedChains(current, target)).map((rule) => `-A ${rule.chain} ${rule.spec}`),
    describe,
  };
}
