import { formatIpv4, formatIpv6, parseIpv4, parseIpv6 } from './addresses.ts';
import type { Dialect, HeldElsewhere, TableSummary } from './dialect.ts';
import { buildInetRuleset, isValueSet, OWNED_CHAINS, SET_NAMES, type Hook, type RedirectConfig, type Rule, type Target, type ValueSet } from './ruleset.ts';
import type { Cidr, Family, PortRange, Uid } from './values.ts';

// The native nftables backend's language, as pure functions: Consul's `inet consul_tproxy` table (reference
// section 3.7) as a canonical state, read back from `nft -j list table inet consul_tproxy`, and written as one
// `nft -f -` transaction that replaces the whole table atomically.
//
// Rules are kept as the text `nft list` prints for them, so a state built from a config and one read from the
// kernel compare line by line; anything in the table this module does not recognise (a foreign rule, a counter,
// a comment, a chain or an object we never create) keeps a text of its own and so shows up as a difference.

export const NFT_FAMILY = 'inet';
export const NFT_TABLE = 'consul_tproxy';
const TABLE = `${NFT_FAMILY} ${NFT_TABLE}`;

/** Our base chains, one per hook, as Consul names them. */
export const BASE_CHAINS: Readonly<Record<Hook, string>> = { output: 'CONSUL_NAT_OUTPUT', prerouting: 'CONSUL_NAT_PREROUTING' };

/** Consul's hook priority for both: -100 (`dstnat` for prerouting), as `nft -j` reports it. */
const BASE_PRIORITY = -100;

export interface NftBaseChain {
  type: string;
  hook: string;
  priority: number;
  policy: string;
}

export interface NftChain {
  name: string;
  /** Present for a base chain: where and how it hooks in. */
  base?: NftBaseChain;
  /** In kernel order, each as `nft list` prints it. */
  rules: readonly string[];
}

export interface NftSet {
  name: string;
  type: string;
  flags: readonly string[];
  /** Canonical element texts (`10.0.0.0/8`, `192.0.2.1`, `80`, `1000-2000`), sorted; compared by what they cover. */
  elements: readonly string[];
}

export interface NftTable {
  /** Our chains in creation order, base chains last. */
  chains: readonly NftChain[];
  sets: readonly NftSet[];
  /** Whatever else the table holds (maps, named counters, set flags we never use...), one line each. */
  foreign: readonly string[];
  /** The table's own attributes beyond family, name and handle (`flags dormant`), one line each: we set none. */
  attributes: readonly string[];
  /** Why the dump could not be read, when it could not: the table is ours, but nothing else is known of it. */
  unreadable?: string;
}

/** Table `inet consul_tproxy`, or `undefined` when it does not exist. */
export type NftState = NftTable | undefined;

// ---- values: every set element and address is turned into numbers and printed back from them ----

/**
 * A value of a domain: a plain number for the 16- and 32-bit ones (IPv4, ports, UIDs: exact up to 2^53), a
 * BigInt for IPv6 only. Sets hold thousands of IPv4 elements, and with a BigInt each the allocations and their
 * garbage collection cost more than everything else done with them. A domain never mixes the two.
 */
type Value = number | bigint;

/** What a set of one nft type holds, as unsigned integers of `bits` bits. */
interface Domain {
  bits: number;
  /** Addresses print as prefixes where they can; numbers (ports, UIDs) as `a` or `a-b`. */
  address: boolean;
  /** Whether our sets of this type need `flags interval`: for prefixes and port ranges, not for single UIDs. */
  interval: boolean;
  parse(text: string): Value | undefined;
  format(value: Value): string;
  /** The interval `address/length` covers, or undefined when `address` has host bits set. */
  prefix(address: Value, length: number): Interval | undefined;
  /** The prefix length an interval is exactly, if it is one. */
  prefixLength(interval: Interval): number | undefined;
}

/** Throws: a value that validation should have stopped, or a state this module did not build. A bug, not input. */
function refuse(message: string): never {
  throw new Error(`nftables: ${message}`);
}

const DECIMAL = /^(0|[1-9]\d*)$/;

function parseDecimal(text: string, max: number): number | undefined {
  return DECIMAL.test(text) && text.length <= 10 && Number(text) <= max ? Number(text) : undefined;
}

const parseNumber = (max: number) => (text: string) => {
  return parseDecimal(text, max);
};

// Prefix arithmetic in plain numbers, for domains of up to 32 bits (2^32 is still exact in a double).
const numberPrefix = (bits: number) => (address: Value, length: number): Interval | undefined => {
  const size = 2 ** (bits - length);
  const low = Number(address) - (Number(address) % size);
  return low === address ? { low, high: low + size - 1 } : undefined;
};

function numberPrefixLength(bits: number) {
  return ({ low, high }: Interval): number | undefined => {
    const size = Number(high) - Number(low) + 1;
    const log = Math.log2(size);
    return Number.isInteger(log) && Number(low) % size === 0 ? bits - log : undefined;
  };
}

// The same in BigInt, for IPv6.
function bigintPrefix(address: Value, length: number): Interval | undefined {
  const hostBits = BigInt(128 - length);
  const value = BigInt(address);
  const low = (value >> hostBits) << hostBits;
  // Host bits set (10.0.0.1/8) is not a canonical prefix: nft would never print it, config never holds it.
  return low === value ? { low, high: low | ((1n << hostBits) - 1n) } : undefined;
}

function bigintPrefixLength({ low, high }: Interval): number | undefined {
  const size = BigInt(high) - BigInt(low) + 1n;
  if ((size & (size - 1n)) !== 0n || BigInt(low) % size !== 0n) return undefined;
  // A power of two converts to a double exactly, even 2^128.
  return 128 - Math.log2(Number(size));
}

const DOMAINS: Readonly<Record<string, Domain>> = {
  ipv4_addr: { bits: 32, address: true, interval: true, parse: parseIpv4, format: (value) => formatIpv4(Number(value)), prefix: numberPrefix(32), prefixLength: numberPrefixLength(32) },
  ipv6_addr: { bits: 128, address: true, interval: true, parse: parseIpv6, format: (value) => formatIpv6(BigInt(value)), prefix: bigintPrefix, prefixLength: bigintPrefixLength },
  inet_service: { bits: 16, address: false, interval: true, parse: parseNumber(65535), format: String, prefix: numberPrefix(16), prefixLength: numberPrefixLength(16) },
  // A hash set: UIDs are single values, and duplicates in one definition are folded by nft 1.0.6 as well.
  uid: { bits: 32, address: false, interval: false, parse: parseNumber(2 ** 32 - 1), format: String, prefix: numberPrefix(32), prefixLength: numberPrefixLength(32) },
};

const domain = (type: string): Domain => DOMAINS[type] ?? refuse(`no set type ${type}`);

interface Interval {
  readonly low: Value;
  readonly high: Value;
}

/** The value after `value`, in its own representation. */
const next = (value: Value): Value => (typeof value === 'bigint' ? value + 1n : value + 1);

/** `a/len`, `a-b` or `a` in a domain, or undefined. */
function parseInterval(d: Domain, text: string): Interval | undefined {
  const slash = text.indexOf('/');
  if (slash >= 0) {
    const address = d.address ? d.parse(text.slice(0, slash)) : undefined;
    const length = parseDecimal(text.slice(slash + 1), d.bits);
    if (address === undefined || length === undefined) return undefined;
    // Host bits set (10.0.0.1/8) is not a canonical prefix: nft would never print it, config never holds it.
    return d.prefix(address, length);
  }
  const dash = text.indexOf('-');
  const low = d.parse(dash < 0 ? text : text.slice(0, dash));
  const high = dash < 0 ? low : d.parse(text.slice(dash + 1));
  return low === undefined || high === undefined || low > high ? undefined : { low, high };
}

/** As nft prints an element: a prefix (a host as a bare address) where the interval is one, else `a-b`. */
function formatInterval(d: Domain, interval: Interval): string {
  const { low, high } = interval;
  if (low === high) return d.format(low);
  const length = d.address ? d.prefixLength(interval) : undefined;
  return length === undefined ? `${d.format(low)}-${d.format(high)}` : `${d.format(low)}/${length}`;
}

/**
 * Sorted, with overlapping intervals folded into one; with `adjacent`, touching ones too. nft 1.0.6 refuses a
 * set whose elements overlap (or an element twice) unless the set has `auto-merge`, and Consul's flags allow
 * both. We fold overlaps ourselves before rendering instead of using auto-merge: what `nft -j list` then shows
 * is exactly what we rendered, element for element, and each excluded CIDR still reads as the CIDR given
 * (adjacent ones are kept apart; nft loads them fine). Sets are still compared by the union they cover
 * (`adjacent`), so a table whose elements are merged differently but cover the same reads as in sync.
 */
function merged(intervals: readonly Interval[], adjacent: boolean): Interval[] {
  const sorted = [...intervals].sort((a, b) => (a.low < b.low ? -1 : a.low > b.low ? 1 : 0));
  const result: Interval[] = [];
  for (const interval of sorted) {
    const last = result.at(-1);
    // Intervals are shared, never changed: only a fold makes a new one (at 10,000 elements, copies cost GC time).
    if (!last || interval.low > (adjacent ? next(last.high) : last.high)) result.push(interval);
    else if (interval.high > last.high) result[result.length - 1] = { low: last.low, high: interval.high };
  }
  return result;
}

function elementInterval(d: Domain, text: string): Interval {
  return parseInterval(d, text) ?? refuse(`set element ${JSON.stringify(text)} is not canonical`);
}

// Each set this module builds, from a config or a dump, keeps its elements' intervals here: with thousands of
// elements, reading the texts back on every comparison would cost more than the comparison.
const elementIntervals = new WeakMap<NftSet, readonly Interval[]>();

function withIntervals(set: NftSet, intervals: readonly Interval[]): NftSet {
  elementIntervals.set(set, intervals);
  return set;
}

/** The interval of each element, in element order. */
function intervalsOf(set: NftSet): readonly Interval[] {
  return elementIntervals.get(set) ?? set.elements.map((text) => elementInterval(domain(set.type), text));
}

/** The union of values a set holds, as disjoint, non-touching intervals in order. */
const coverage = (set: NftSet): Interval[] => merged(intervalsOf(set), true);

/** Whether `interval` lies inside one of `covered` (sorted, disjoint). */
function isCovered(covered: readonly Interval[], interval: Interval): boolean {
  let low = 0;
  let high = covered.length - 1;
  while (low <= high) {
    const middle = (low + high) >> 1;
    const candidate = covered[middle] as Interval;
    if (interval.low < candidate.low) high = middle - 1;
    else if (interval.low > candidate.high) low = middle + 1;
    else return interval.high <= candidate.high;
  }
  return false;
}

// ---- the wanted state, from the typed ruleset ----

function integer(value: number, min: number, max: number): number {
  return Number.isInteger(value) && value >= min && value <= max ? value : refuse(`${value} is not an integer in ${min}..${max}`);
}

// Anything that names a chain or a set: constants in ruleset.ts and here, checked anyway.
const NAME = /^[A-Za-z][A-Za-z0-9_]*$/;
const name = (text: string) => (NAME.test(text) ? text : refuse(`${JSON.stringify(text)} is not a safe name`));

const FAMILY_DOMAIN = { 4: 'ipv4_addr', 6: 'ipv6_addr' } as const;
export const FAMILY_PAYLOAD = { 4: 'ip', 6: 'ip6' } as const;

function cidrInterval(cidr: Cidr): Interval {
  return elementInterval(domain(FAMILY_DOMAIN[cidr.family]), cidr.cidr);
}

// Port 0 included: iptables and nft take it, so Consul passes it on.
const portInterval = ({ low, high }: PortRange): Interval => ({
  low: integer(low, 0, 65535),
  high: integer(high, low, 65535),
});

const uidInterval = (uid: number): Interval => ({ low: integer(uid, 0, 2 ** 32 - 1), high: uid });

/** A single value's text (a rule's own `ip daddr`, `tcp dport`, `meta skuid`), as nft prints it. */
const valueText = (type: string, interval: Interval) => formatInterval(domain(type), interval);

/** A set's declaration from the values one rule matches; overlaps folded (see `merged`). */
function declaredSet<T>(values: ValueSet<T>, type: string, interval: (value: T) => Interval): NftSet {
  const d = domain(type);
  const intervals = merged(values.elements.map(interval), false);
  const elements = intervals.map((i) => formatInterval(d, i));
  return withIntervals({ name: name(values.set), type, flags: d.interval ? ['interval'] : [], elements }, intervals);
}

/** One match: `<left> <value>`, the value a single one or `@set`, whose declaration goes to `sets`. */
function matchText<T>(left: string, value: T | ValueSet<T>, type: string, interval: (value: T) => Interval, sets: NftSet[]): string {
  if (!isValueSet(value)) return `${left} ${valueText(type, interval(value))}`;
  sets.push(declaredSet(value, type, interval));
  return `${left} @${name(value.set)}`;
}

/**
 * `meta skuid`: numbers as any value; user names (kept only by a dry run previewing another host, for that
 * host's nft to resolve) as the names, after the numbers in a set.
 */
function uidMatch(uidOwner: Uid | ValueSet<Uid>, sets: NftSet[]): string {
  const isNumber = (uid: Uid): uid is number => typeof uid === 'number';
  if (!isValueSet(uidOwner)) return `meta skuid ${isNumber(uidOwner) ? valueText('uid', uidInterval(uidOwner)) : userName(uidOwner)}`;
  const numbers = uidOwner.elements.filter(isNumber);
  const names = [...new Set(uidOwner.elements.filter((uid) => !isNumber(uid)))].map(userName);
  const set = declaredSet({ set: uidOwner.set, elements: numbers }, 'uid', uidInterval);
  sets.push(names.length === 0 ? set : { ...set, elements: [...set.elements, ...names] });
  return `meta skuid @${name(uidOwner.set)}`;
}

// POSIX portable user names, written quoted: unquoted, a name that is an nft keyword (`accept`, `counter`) is a
// syntax error. Quoted, nft still resolves the name on the host that loads the script.
const USER_NAME = /^[A-Za-z_][A-Za-z0-9_.-]*$/;
const userName = (text: string) => (USER_NAME.test(text) ? `"${text}"` : refuse(`user name ${JSON.stringify(text)} cannot be written for nft`));

function targetText(target: Target): string {
  switch (target.kind) {
    case 'jump':
      return `jump ${name(target.chain)}`;
    case 'return':
      return 'return';
    case 'redirect':
      return `redirect to :${integer(target.port, 1, 65535)}`;
    case 'dnat': {
      const { address, port } = target.to;
      const text = valueText(FAMILY_DOMAIN[address.family], cidrInterval({ family: address.family, cidr: address.address }));
      const family = FAMILY_PAYLOAD[address.family];
      if (port === undefined) return `dnat ${family} to ${text}`;
      return `dnat ${family} to ${address.family === 6 ? `[${text}]` : text}:${integer(port, 1, 65535)}`;
    }
  }
}

/** A rule as `nft list` prints it; the sets it matches are added to `sets`. */
function ruleText(rule: Rule, sets: NftSet[]): string {
  const words: string[] = [];
  if (rule.family !== undefined) words.push(`meta nfproto ipv${rule.family}`);
  const { destination, destinationPort, protocol, uidOwner } = rule;
  if (destination !== undefined) {
    const type = FAMILY_DOMAIN[destination.family];
    words.push(matchText(`${FAMILY_PAYLOAD[destination.family]} daddr`, destination, type, (cidr: Cidr) => cidrInterval(cidr), sets));
  }
  if (destinationPort !== undefined) {
    // `tcp dport` implies `meta l4proto tcp`, and nft prints it without.
    if (protocol === undefined) refuse('a port match needs a protocol');
    words.push(matchText(`${protocol} dport`, destinationPort, 'inet_service', portInterval, sets));
  } else if (protocol !== undefined) {
    words.push(`meta l4proto ${protocol}`);
  }
  if (uidOwner !== undefined) words.push(uidMatch(uidOwner, sets));
  words.push(targetText(rule.target));
  return words.join(' ');
}

const isHook = (chain: Rule['chain']): chain is Hook => chain in BASE_CHAINS;

function wantedTable(config: RedirectConfig): NftTable {
  const ruleset = buildInetRuleset(config);
  const rules = new Map<string, string[]>(OWNED_CHAINS.map((chain) => [chain, []]));
  for (const chain of Object.values(BASE_CHAINS)) rules.set(chain, []);
  const sets: NftSet[] = [];
  for (const rule of ruleset.rules) {
    const chain = isHook(rule.chain) ? BASE_CHAINS[rule.chain] : rule.chain;
    const chainRules = rules.get(chain) ?? refuse(`no chain ${chain}`);
    chainRules.push(ruleText(rule, sets));
  }
  const hooks = Object.entries(BASE_CHAINS) as [Hook, string][];
  const baseOf = new Map(hooks.map(([hook, chain]) => [chain, { type: 'nat', hook, priority: BASE_PRIORITY, policy: 'accept' }]));
  const chains = [...rules].map(([chainName, chainRules]): NftChain => {
    const base = baseOf.get(chainName);
    return base ? { name: chainName, base, rules: chainRules } : { name: chainName, rules: chainRules };
  });
  return { chains, sets, foreign: [], attributes: [] };
}

// ---- reading `nft -j list table inet consul_tproxy` ----

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type JsonObject = { [key: string]: Json };

const isObject = (value: Json | undefined): value is JsonObject => typeof value === 'object' && value !== null && !Array.isArray(value);

/** The one key of an nft JSON object such as `{"match": {...}}`, with its value. */
function single(value: Json | undefined): [string, Json] | undefined {
  if (!isObject(value)) return undefined;
  const entries = Object.entries(value);
  return entries.length === 1 ? entries[0] : undefined;
}

/** The keys of `object` other than `known`, as `key=value` text: what we do not model. */
function extraKeys(object: JsonObject, known: readonly string[]): string[] {
  return Object.entries(object)
    .filter(([key]) => !known.includes(key))
    .map(([key, value]) => `${key}=${JSON.stringify(value)}`);
}

/** An address as we print it, so nft's spelling and ours never differ; other text unchanged. */
function canonicalAddress(text: string): string {
  for (const type of ['ipv4_addr', 'ipv6_addr']) {
    const d = domain(type);
    const value = d.parse(text);
    if (value !== undefined) return d.format(value);
  }
  return text;
}

/** A value on the right of a match, or an element of a set, as nft prints it. */
function valueOf(value: Json): string {
  if (typeof value === 'string') return canonicalAddress(value);
  if (typeof value === 'number') return String(value);
  const [kind, body] = single(value) ?? [];
  if (kind === 'prefix' && isObject(body) && typeof body['addr'] === 'string' && typeof body['len'] === 'number') {
    const address = canonicalAddress(body['addr']);
    // A host prefix prints as the bare address.
    const full = address.includes(':') ? 128 : 32;
    return body['len'] === full ? address : `${address}/${body['len']}`;
  }
  if (kind === 'range' && Array.isArray(body) && body.length === 2) return `${valueOf(body[0] ?? null)}-${valueOf(body[1] ?? null)}`;
  if (kind === 'set' && Array.isArray(body)) return `{ ${body.map(valueOf).join(', ')} }`;
  return JSON.stringify(value);
}

function leftOf(value: Json | undefined): string {
  const [kind, body] = single(value) ?? [];
  if (kind === 'payload' && isObject(body) && extraKeys(body, ['protocol', 'field']).length === 0) {
    return `${body['protocol']} ${body['field']}`;
  }
  if (kind === 'meta' && isObject(body) && extraKeys(body, ['key']).length === 0) return `meta ${body['key']}`;
  return JSON.stringify(value);
}

/** A dnat statement's target: `1.2.3.4`, `1.2.3.4:53`, `[::1]:53`. */
function dnatTarget(body: JsonObject): string | undefined {
  const { addr, port, family } = body;
  if (typeof addr !== 'string' || extraKeys(body, ['addr', 'port', 'family']).length > 0) return undefined;
  const address = canonicalAddress(addr);
  if (port === undefined) return address;
  return typeof port === 'number' ? `${family === 'ip6' ? `[${address}]` : address}:${port}` : undefined;
}

/** One expression of a rule as `nft list` prints it; anything else as its JSON, so it never matches ours. */
function expressionText(expression: Json): string {
  const [kind, body] = single(expression) ?? [];
  if (kind === 'match' && isObject(body) && Object.keys(body).length === 3) {
    const op = body['op'] === '==' ? '' : `${body['op']} `;
    return `${leftOf(body['left'])} ${op}${valueOf(body['right'] ?? null)}`;
  }
  if ((kind === 'return' || kind === 'accept' || kind === 'drop' || kind === 'continue') && body === null) return kind;
  if ((kind === 'jump' || kind === 'goto') && isObject(body) && Object.keys(body).length === 1) return `${kind} ${body['target']}`;
  if (kind === 'redirect' && isObject(body) && Object.keys(body).length === 1 && typeof body['port'] === 'number') {
    return `redirect to :${body['port']}`;
  }
  if (kind === 'dnat' && isObject(body)) {
    const target = dnatTarget(body);
    if (target !== undefined) return `dnat ${body['family'] === undefined ? '' : `${body['family']} `}to ${target}`;
  }
  if (kind === 'counter' && isObject(body)) return `counter packets ${body['packets']} bytes ${body['bytes']}`;
  return JSON.stringify(expression);
}

function ruleOf(rule: JsonObject): string {
  const expressions = Array.isArray(rule['expr']) ? rule['expr'] : [];
  const words = expressions.map(expressionText);
  if (typeof rule['comment'] === 'string') words.push(`comment ${JSON.stringify(rule['comment'])}`);
  return [...words, ...extraKeys(rule, ['family', 'table', 'chain', 'handle', 'expr', 'comment'])].join(' ');
}

/** A set element from nft's JSON (`80`, `"192.0.2.1"`, a prefix, a range), or undefined for any other shape. */
function jsonInterval(d: Domain, element: Json): Interval | undefined {
  if (typeof element === 'string' || typeof element === 'number') {
    const value = d.parse(String(element));
    return value === undefined ? undefined : { low: value, high: value };
  }
  const [kind, body] = single(element) ?? [];
  if (kind === 'prefix' && isObject(body)) return parseInterval(d, `${body['addr']}/${body['len']}`);
  if (kind === 'range' && Array.isArray(body) && body.length === 2) {
    const [low, high] = body.map((end) => jsonInterval(d, end));
    return low && high && low.low <= high.high ? { low: low.low, high: high.high } : undefined;
  }
  return undefined;
}

function parsedSet(set: JsonObject, foreign: string[]): NftSet {
  const setName = String(set['name']);
  const type = typeof set['type'] === 'string' ? set['type'] : JSON.stringify(set['type']);
  const flags = Array.isArray(set['flags']) ? set['flags'].map(String).sort() : [];
  const d = DOMAINS[type];
  const intervals: Interval[] = [];
  for (const element of Array.isArray(set['elem']) ? set['elem'] : []) {
    const interval = d && jsonInterval(d, element);
    // An element we cannot read (another type's, or with a comment or timeout) is reported, never dropped.
    if (interval) intervals.push(interval);
    else foreign.push(`set ${setName} element ${JSON.stringify(element)}`);
  }
  foreign.push(...extraKeys(set, ['family', 'name', 'table', 'type', 'handle', 'flags', 'elem']).map((extra) => `set ${setName} ${extra}`));
  // Hash sets list in hash order: sorted, equal sets read alike.
  intervals.sort((a, b) => (a.low < b.low ? -1 : a.low > b.low ? 1 : 0));
  const elements = d ? intervals.map((interval) => formatInterval(d, interval)) : [];
  return withIntervals({ name: setName, type, flags, elements }, intervals);
}

function parsedChain(chain: JsonObject, foreign: string[]): NftChain {
  const chainName = String(chain['name']);
  foreign.push(...extraKeys(chain, ['family', 'table', 'name', 'handle', 'type', 'hook', 'prio', 'policy']).map((extra) => `chain ${chainName} ${extra}`));
  if (chain['hook'] === undefined) return { name: chainName, rules: [] };
  const base = { type: String(chain['type']), hook: String(chain['hook']), priority: Number(chain['prio']), policy: String(chain['policy']) };
  return { name: chainName, base, rules: [] };
}

const isOurs = (object: JsonObject, nameKey: string) => object['family'] === NFT_FAMILY && object[nameKey] === NFT_TABLE;

/**
 * The table's own keys beyond family, name and handle. `flags dormant` stops every rule in the table; nft 1.0.6
 * lists a dormant table's flags wrongly (as the table's name, or cut off), so any flag may mean the same.
 */
function tableAttributes(table: JsonObject): string[] {
  return Object.entries(table)
    .filter(([key]) => !['family', 'name', 'handle'].includes(key))
    .map(([key, value]) => (key === 'flags' ? `flags ${(Array.isArray(value) ? value : [value]).map(String).join(',')}` : `${key}=${JSON.stringify(value)}`));
}

/** What an attribute of the table means for us, as a difference. */
function attributeDifference(attribute: string): string {
  if (!attribute.startsWith('flags ')) return `table ${attribute}: we set no such attribute`;
  return `table ${attribute}: ${/\bdormant\b/.test(attribute) ? 'our rules do not run' : 'our rules may not run (a dormant table runs none)'}`;
}

/** Our table whose dump could not be read: it holds ours, differs from every wanted state, and is replaced. */
const unreadableTable = (reason: string): NftTable => ({ chains: [], sets: [], foreign: [], attributes: [], unreadable: reason });

function parseTable(dump: string): NftState {
  // `nft -j list table` succeeded, so the table exists even when its dump cannot be read: nft 1.0.6 prints a
  // dormant table's flags as broken JSON. Reading it as absent, or failing, would leave it for good.
  let document: Json;
  try {
    document = JSON.parse(dump) as Json;
  } catch (error) {
    return unreadableTable(`nft -j printed something that is not JSON: ${(error as Error).message}`);
  }
  if (!isObject(document) || !Array.isArray(document['nftables'])) return unreadableTable('nft -j printed no "nftables" list');
  const objects = document['nftables'];
  let attributes: string[] = [];
  const chains: NftChain[] = [];
  const sets: NftSet[] = [];
  const foreign: string[] = [];
  const rules: [string, string][] = [];
  let present = false;
  for (const object of objects) {
    const [kind, body] = single(object) ?? [];
    if (kind === 'metainfo') continue;
    if (kind === 'table' && isObject(body) && isOurs(body, 'name')) {
      present = true;
      attributes = tableAttributes(body);
    }
    else if (kind === 'chain' && isObject(body) && isOurs(body, 'table')) chains.push(parsedChain(body, foreign));
    else if (kind === 'set' && isObject(body) && isOurs(body, 'table')) sets.push(parsedSet(body, foreign));
    else if (kind === 'rule' && isObject(body) && isOurs(body, 'table')) rules.push([String(body['chain']), ruleOf(body)]);
    else foreign.push(JSON.stringify(object));
  }
  if (!present) return undefined;
  const byName = new Map(chains.map((chain) => [chain.name, chain.rules as string[]]));
  for (const [chain, rule] of rules) {
    const chainRules = byName.get(chain);
    if (chainRules) chainRules.push(rule);
    else foreign.push(`rule in unlisted chain ${chain}: ${rule}`);
  }
  return { chains, sets, foreign, attributes };
}

// ---- comparing ----

/** Up to `shown` items, then how many more: a drifted table may hold thousands. */
function sample(lines: readonly string[], shown = 5): string[] {
  return lines.length <= shown ? [...lines] : [...lines.slice(0, shown), `... and ${lines.length - shown} more`];
}

/** The items of `a` not matched one for one in `b`. */
function multisetMinus(a: readonly string[], b: readonly string[]): string[] {
  const counts = new Map<string, number>();
  for (const item of b) counts.set(item, (counts.get(item) ?? 0) + 1);
  return a.filter((item) => {
    const count = counts.get(item) ?? 0;
    counts.set(item, count - 1);
    return count <= 0;
  });
}

const baseText = (base: NftBaseChain | undefined) =>
  base ? `type ${base.type} hook ${base.hook} priority ${base.priority}; policy ${base.policy};` : 'a regular chain';

function chainDifferences(installed: NftChain, wanted: NftChain): string[] {
  const where = `chain ${wanted.name}`;
  const lines: string[] = [];
  if (baseText(installed.base) !== baseText(wanted.base)) {
    lines.push(`${where}: is ${baseText(installed.base)}, wanted ${baseText(wanted.base)}`);
  }
  const missing = multisetMinus(wanted.rules, installed.rules);
  const unexpected = multisetMinus(installed.rules, wanted.rules);
  lines.push(...sample(missing.map((rule) => `${where}: missing rule ${JSON.stringify(rule)}`)));
  lines.push(...sample(unexpected.map((rule) => `${where}: unexpected rule ${JSON.stringify(rule)}`)));
  if (missing.length === 0 && unexpected.length === 0 && installed.rules.some((rule, i) => rule !== wanted.rules[i])) {
    lines.push(`${where}: rules out of order`);
  }
  return lines;
}

/** Elements of `set` whose values `other` does not cover. */
function uncovered(set: NftSet, other: NftSet): string[] {
  const covered = coverage(other);
  const intervals = intervalsOf(set);
  return set.elements.filter((_, index) => !isCovered(covered, intervals[index] as Interval));
}

const elementCount = (count: number) => `${count} element${count === 1 ? '' : 's'}`;

function setDifferences(installed: NftSet, wanted: NftSet): string[] {
  const where = `set ${wanted.name}`;
  if (installed.type !== wanted.type) return [`${where}: type ${installed.type}, wanted ${wanted.type}`];
  const lines: string[] = [];
  const flags = (set: NftSet) => [...set.flags].sort().join(',') || 'none';
  if (flags(installed) !== flags(wanted)) lines.push(`${where}: flags ${flags(installed)}, wanted ${flags(wanted)}`);
  // Both directions by coverage: equal unions leave nothing uncovered either way.
  const missing = uncovered(wanted, installed);
  const unexpected = uncovered(installed, wanted);
  if (missing.length > 0) lines.push(`${where}: ${elementCount(missing.length)} missing (e.g. ${missing[0]})`);
  if (unexpected.length > 0) lines.push(`${where}: ${elementCount(unexpected.length)} unexpected (e.g. ${unexpected[0]})`);
  return lines;
}

/** Named things present on one side only, and the differences of those on both. */
function pairDifferences<T extends { name: string }>(
  kind: string,
  installed: readonly T[],
  wanted: readonly T[],
  size: (item: T) => string,
  compare: (installed: T, wanted: T) => string[],
): string[] {
  const installedByName = new Map(installed.map((item) => [item.name, item]));
  const wantedNames = new Set(wanted.map((item) => item.name));
  return [
    ...wanted.flatMap((item) => {
      const found = installedByName.get(item.name);
      return found ? compare(found, item) : [`${kind} ${item.name} is missing`];
    }),
    ...installed.filter((item) => !wantedNames.has(item.name)).map((item) => `unexpected ${kind} ${item.name} (${size(item)})`),
  ];
}

const ruleCount = (chain: NftChain) => `${chain.rules.length} rule${chain.rules.length === 1 ? '' : 's'}`;

function differences(installed: NftState, wanted: NftState): string[] {
  if (!installed) return wanted ? [`table ${TABLE} is missing`] : [];
  if (installed.unreadable !== undefined) {
    return [`table ${TABLE} could not be read (${installed.unreadable}): it is ${wanted ? 'replaced' : 'deleted'}`];
  }
  if (!wanted) return [`table ${TABLE} is present`];
  return [
    ...multisetMinus(installed.attributes, wanted.attributes).map(attributeDifference),
    ...pairDifferences('chain', installed.chains, wanted.chains, ruleCount, chainDifferences),
    ...pairDifferences('set', installed.sets, wanted.sets, (set) => elementCount(set.elements.length), setDifferences),
    ...sample(multisetMinus(installed.foreign, wanted.foreign).map((line) => `unexpected ${line}`)),
  ];
}

// ---- writing `nft -f -` ----

// What may reach the script besides names: nft keywords, numbers, addresses, `@set`, `[::1]:53`, and a quoted
// user name after `meta skuid` or as a set element. No other quote, no `;`, `#`, brace or newline, so no value
// can end its statement or open another.
const RULE_TEXT = /^(?:[A-Za-z0-9_ .:/@\[\]-]|(?<=meta skuid )"[A-Za-z_][A-Za-z0-9_.-]*")+$/;
const ELEMENT_TEXT = /^([0-9a-f.:/-]+|"[A-Za-z_][A-Za-z0-9_.-]*")$/;
const safe = (text: string, pattern: RegExp) => (pattern.test(text) ? text : refuse(`refusing to render ${JSON.stringify(text)}`));

function setBlock(set: NftSet): string[] {
  const lines = [`\tset ${name(set.name)} {`, `\t\ttype ${name(set.type)}`];
  if (set.flags.length > 0) lines.push(`\t\tflags ${set.flags.map(name).join(', ')}`);
  if (set.elements.length > 0) {
    // One element a line, and the closing brace on its own: nft 1.0.6 wants a newline before every `}`. Joined
    // in one go: a string per line would be 10,000 more allocations.
    for (const element of set.elements) safe(element, ELEMENT_TEXT);
    lines.push('\t\telements = {', `\t\t\t${set.elements.join(',\n\t\t\t')}`, '\t\t}');
  }
  lines.push('\t}');
  return lines;
}

function chainBlock(chain: NftChain): string[] {
  const lines = [`\tchain ${name(chain.name)} {`];
  const { base } = chain;
  if (base) {
    const priority = integer(base.priority, -1000, 1000);
    lines.push(`\t\ttype ${name(base.type)} hook ${name(base.hook)} priority ${priority}; policy ${name(base.policy)};`);
  }
  lines.push(...chain.rules.map((rule) => `\t\t${safe(rule, RULE_TEXT)}`), '\t}');
  return lines;
}

/**
 * The whole script: `add` then `delete` the table (which works whether it exists or not, unlike a bare delete;
 * `destroy` needs nft 1.0.8), then define it afresh. nft applies the file as one transaction, so the table is
 * replaced atomically and loading the same script twice leaves one copy.
 */
function transaction(_installed: NftState, wanted: NftState): string {
  const lines = [`add table ${TABLE}`, `delete table ${TABLE}`];
  if (wanted) {
    lines.push(`table ${TABLE} {`, ...wanted.sets.flatMap(setBlock), ...wanted.chains.flatMap(chainBlock), '}');
  }
  return `${lines.join('\n')}\n`;
}

// What any config of ours creates, so what is not ours whichever config wrote the table.
const OUR_CHAINS: ReadonlySet<string> = new Set([...OWNED_CHAINS, ...Object.values(BASE_CHAINS)]);
const OUR_SETS: ReadonlySet<string> = new Set(Object.values(SET_NAMES));
// The shape of every rule ruleText writes. A rule of another shape (a counter, a comment, a verdict such as
// drop, a log) is someone else's; one shaped like ours cannot be told from a rule of an earlier config of ours.
const OUR_RULE =
  /^(meta nfproto ipv[46] )?((ip|ip6) daddr \S+ )?((tcp|udp) dport \S+ |meta l4proto (tcp|udp) )?(meta skuid \S+ )?(jump [A-Z_]+|return|redirect to :\d+|dnat (ip|ip6) to \S+)$/;

/**
 * What replacing the table deletes that is not ours, one line each: chains and sets no config of ours
 * creates, rules of another shape in our chains, anything else we do not model, and the table's attributes.
 * A chain of someone else's goes with its rules: named once, with how many.
 */
function foreignRemoved(installed: NftState): string[] {
  if (!installed) return [];
  return [
    ...installed.attributes.map((attribute) => `table ${attribute}`),
    ...installed.chains.filter((chain) => !OUR_CHAINS.has(chain.name)).map((chain) => `chain ${chain.name} (${baseText(chain.base)}, ${ruleCount(chain)})`),
    ...installed.chains
      .filter((chain) => OUR_CHAINS.has(chain.name))
      .flatMap((chain) => chain.rules.filter((rule) => !OUR_RULE.test(rule)).map((rule) => `rule in chain ${chain.name}: ${rule}`)),
    ...installed.sets.filter((set) => !OUR_SETS.has(set.name)).map((set) => `set ${set.name} (type ${set.type}, ${elementCount(set.elements.length)})`),
    ...installed.foreign,
  ];
}

function describe(state: NftState): TableSummary {
  if (state?.unreadable !== undefined) return { chains: {}, hooks: [], rules: 0, sets: {}, unreadable: state.unreadable };
  const chains = Object.fromEntries((state?.chains ?? []).map((chain) => [chain.name, chain.rules.length]));
  const hooks = (state?.chains ?? []).filter((chain) => chain.base).flatMap((chain) => chain.rules.map((rule) => `${chain.name} ${rule}`));
  const sets = Object.fromEntries((state?.sets ?? []).map((set) => [set.name, set.elements.length]));
  const rules = (state?.chains ?? []).reduce((sum, chain) => sum + chain.rules.length, 0);
  return { chains, hooks, rules, sets };
}

/**
 * Our chains in iptables-nft's nat tables (`ip nat`, `ip6 nat`), from `nft -j list chains`: what nft sees of
 * iptables-nft where no iptables-nft program is installed to read them. Family by family, in `families`.
 */
export function iptablesNftChains(dump: string, families: readonly Family[]): { family: Family; chains: string[] }[] {
  let document: Json;
  try {
    document = JSON.parse(dump) as Json;
  } catch {
    return [];
  }
  const objects = isObject(document) && Array.isArray(document['nftables']) ? document['nftables'] : [];
  const owned: ReadonlySet<string> = new Set(OWNED_CHAINS);
  return families.flatMap((family) => {
    const chains = objects.flatMap((object) => {
      const [kind, body] = single(object) ?? [];
      const ours = kind === 'chain' && isObject(body) && body['family'] === FAMILY_PAYLOAD[family] && body['table'] === 'nat';
      return ours && typeof body['name'] === 'string' && owned.has(body['name']) ? [body['name']] : [];
    });
    return chains.length === 0 ? [] : [{ family, chains }];
  });
}

/**
 * Our chains that something in a table refers to where iptables cannot show it: a jump inside a verdict map
 * or a map's elements, or a rule's own jump in a chain iptables does not print (`shownChains`: the chains its
 * save lists; a native base chain of another priority is left out). From `nft -j list table`; undefined when
 * that is not nft's JSON.
 */
export function referencesIptablesCannotShow(dump: string, shownChains: ReadonlySet<string>): string[] | undefined {
  let document: Json;
  try {
    document = JSON.parse(dump) as Json;
  } catch {
    return undefined;
  }
  if (!isObject(document) || !Array.isArray(document['nftables'])) return undefined;
  const owned: ReadonlySet<string> = new Set(OWNED_CHAINS);
  const found = new Set<string>();
  const walk = (value: Json | undefined): void => {
    if (Array.isArray(value)) value.forEach(walk);
    else if (isObject(value)) {
      for (const [key, inner] of Object.entries(value)) {
        const target = (key === 'jump' || key === 'goto') && isObject(inner) ? inner['target'] : undefined;
        if (typeof target === 'string' && owned.has(target)) found.add(target);
        else walk(inner);
      }
    }
  };
  for (const object of document['nftables']) {
    const [kind, body] = single(object) ?? [];
    if (!isObject(body)) continue;
    if (kind === 'rule' && Array.isArray(body['expr'])) {
      // A rule's own verdict is what iptables shows as -j, if it shows the rule's chain at all; our own chains'
      // jumps between them go with them.
      const chain = body['chain'];
      const shown = typeof chain === 'string' && (shownChains.has(chain) || owned.has(chain));
      for (const expression of body['expr']) {
        const verdict = single(expression)?.[0];
        if (!shown || (verdict !== 'jump' && verdict !== 'goto')) walk(expression);
      }
    } else if (kind === 'map' || kind === 'set' || kind === 'element') walk(body);
  }
  return [...found];
}

/**
 * iptables-nft keeps each family's nat table as `ip nat` / `ip6 nat`: its chains of ours, emptied. `add` first,
 * so a chain gone since the survey makes no failure (the sweep after removes what this leaves).
 */
function disarming(elsewhere: readonly HeldElsewhere[]): string {
  const lines: string[] = [];
  for (const { backend, families, chains } of elsewhere) {
    if (backend !== 'iptables-nft' || chains.length === 0) continue;
    for (const family of families) {
      const table = `${FAMILY_PAYLOAD[family]} nat`;
      lines.push(`add table ${table}`);
      for (const chain of chains) lines.push(`add chain ${table} ${name(chain)}`, `flush chain ${table} ${name(chain)}`);
    }
  }
  return lines.length === 0 ? '' : `${lines.join('\n')}\n`;
}

export const nftablesDialect: Dialect<NftState> = {
  wanted: (config) => (config === undefined ? undefined : wantedTable(config)),
  parse: (dump) => (dump.trim() === '' ? undefined : parseTable(dump)),
  isEmpty: (state) => state === undefined,
  same: (installed, wanted) => differences(installed, wanted).length === 0,
  differences,
  transaction,
  // Nothing outside the table can jump into it (nft jumps stay within a table), but someone may add to it.
  foreignRulesRemoved: foreignRemoved,
  describe,
  disarming,
};
