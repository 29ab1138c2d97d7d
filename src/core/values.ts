import { formatIpv4, formatIpv6, parseIpv4, parseIpv6 } from './addresses.ts';
import * as z from 'zod/mini';
import { invalidValue } from '../errors.ts';

// Pure validators for single values. Each returns a canonical form that is safe to place in an
// iptables-restore line: digits, dots, colons, slashes and hex only, never whitespace or a leading dash.

export type Family = 4 | 6;
export const FAMILIES: readonly Family[] = [4, 6];

export const familyLabel = (family: Family) => (family === 4 ? 'IPv4' : 'IPv6');

/** A canonical network (`10.0.0.0/8`, `2001:db8::/32`) and its address family. */
export interface Cidr {
  family: Family;
  cidr: string;
}

/** A canonical IP address and its family. */
export interface IpAddress {
  family: Family;
  address: string;
}

/** An inclusive port range; a single port has low === high. */
export interface PortRange {
  low: number;
  high: number;
}

export const singlePort = (port: number): PortRange => ({ low: port, high: port });

/**
 * A UID as the rules carry it: a number, or (only in a dry run previewing another host) a user name this
 * host does not know, for the target host to resolve. Names are POSIX portable user names (USER_NAME).
 */
export type Uid = number | string;

/** A UID given as a number, or a user name still to be resolved on this host. */
export type UidSpec = { kind: 'id'; uid: number } | { kind: 'name'; name: string };

const MAX_UID = 4294967294; // 2^32-1 is (uid_t)-1, "no user"

/** What a transform's context holds: the value being parsed and the issues found so far. */
type TransformContext = z.core.ParsePayload;

function fail(ctx: TransformContext, message: string): never {
  ctx.issues.push({ code: 'custom', message, input: ctx.value });
  return z.NEVER as never;
}

/** A schema that parses `input` and maps it through `transform`, which reports problems with `fail`. */
export function transformed<In extends z.ZodMiniType, Out>(
  input: In,
  transform: (value: z.output<In>, ctx: TransformContext) => Out,
) {
  return z.pipe(input, z.transform(transform));
}

/** Strings only; config files may also hold plain integers. */
const scalarString = transformed(z.union([z.string(), z.int()]), String);

// Go's ParseInt(s, 0) and iptables' strtoul(s, 0) read a leading zero as octal: refuse it rather than guess.
const DECIMAL = /^(0|[1-9]\d*)$/;

/** A decimal 0..65535 without leading zeros, or undefined. */
export function portText(text: string): number | undefined {
  if (!DECIMAL.test(text) || text.length > 5) return undefined;
  const port = Number(text);
  return port <= 65535 ? port : undefined;
}

function portNumber(text: string): number | undefined {
  const port = portText(text);
  return port === undefined || port === 0 ? undefined : port;
}

export const portSchema = transformed(scalarString, (text, ctx) => {
  return portNumber(text) ?? fail(ctx, 'must be a port number from 1 to 65535');
});

/** A service name as services(5) spells them (`ssh`, `kerberos-adm`, `x11`): never all digits. */
const SERVICE_NAME = /^[A-Za-z][A-Za-z0-9._+-]{0,63}$/;

/**
 * A port, 0 to 65535, or an inclusive range: `a:b`, or open `a:` (to 65535) and `:b` (from 0), as iptables
 * takes them, and `a-b` as nft writes it. A port may be a TCP service name, looked up with `tcpService`
 * (/etc/services), as iptables and Consul's nftables branch do. What both accept, Consul passes on.
 */
export function portOrRangeSchema(tcpService: (name: string) => number | undefined) {
  const port = (text: string) => (SERVICE_NAME.test(text) ? tcpService(text) : portText(text));
  return transformed(scalarString, (text, ctx): PortRange => {
    const sides = /^\d+-\d+$/.test(text) ? text.split('-') : text.split(':');
    const [lowText = '', highText = lowText] = sides;
    const low = lowText === '' ? 0 : port(lowText);
    const high = highText === '' ? 65535 : port(highText);
    if (low === undefined || high === undefined || sides.length > 2 || (lowText === '' && highText === '')) {
      return fail(ctx, 'must be a port from 0 to 65535, a TCP service name (/etc/services) or a range low:high (also low-high, low:, :high)');
    }
    if (low > high) return fail(ctx, `range start ${low} is above its end ${high}`);
    return { low, high };
  });
}

// POSIX portable user names, plus the trailing $ of machine accounts.
const USER_NAME = /^[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?$/;

export const uidSchema = transformed(scalarString, (text, ctx): UidSpec => {
  if (/^\d+$/.test(text)) {
    const uid = Number(text);
    if (!DECIMAL.test(text) || text.length > 10 || uid > MAX_UID) {
      return fail(ctx, `must be a UID from 0 to ${MAX_UID} (no leading zeros) or a user name`);
    }
    return { kind: 'id', uid };
  }
  if (!USER_NAME.test(text)) return fail(ctx, 'must be a numeric UID or a user name');
  return { kind: 'name', name: text };
});

// IPv4 inside IPv6, however written: ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible), which inet_ntop,
// so ip6tables-save and nft, print dotted: such a rule would never read back as written.
const IPV4_IN_IPV6 = /^::(ffff:)?[0-9a-f]{1,4}:[0-9a-f]{1,4}$/;

/** An IPv6 address as a number; zone IDs mean nothing to iptables, and dotted IPv4 tails are refused. */
function ipv6Number(text: string): bigint | undefined {
  return text.includes(':') && !/[%.]/.test(text) ? parseIpv6(text) : undefined;
}

function prefixLength(text: string | undefined, family: Family): number | undefined {
  const max = family === 4 ? 32 : 128;
  if (text === undefined) return max;
  if (!DECIMAL.test(text) || text.length > 3) return undefined;
  const prefix = Number(text);
  return prefix <= max ? prefix : undefined;
}

function canonicalCidr(text: string): Cidr | string {
  const slash = text.indexOf('/');
  const address = slash < 0 ? text : text.slice(0, slash);
  const prefixText = slash < 0 ? undefined : text.slice(slash + 1);
  if (prefixText?.includes('/')) return 'must be an address or address/prefix';
  const ipv4 = parseIpv4(address);
  const ipv6 = ipv4 === undefined ? ipv6Number(address) : undefined;
  if (ipv4 === undefined && ipv6 === undefined) {
    return 'must be an IPv4 or IPv6 address or CIDR prefix (host names are not accepted)';
  }
  const family: Family = ipv4 === undefined ? 6 : 4;
  const prefix = prefixLength(prefixText, family);
  if (prefix === undefined) return 'has an invalid prefix length';
  // Host bits are masked away, as iptables and nft do, so the rule reads back as they print it.
  if (ipv4 !== undefined) {
    const mask = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
    const network = (ipv4 & mask) >>> 0;
    // Already canonical (the usual case, thousands at a time): keep the caller's string.
    if (network === ipv4 && prefixText !== undefined) return { family, cidr: text };
    return { family, cidr: `${formatIpv4(network)}/${prefix}` };
  }
  const hostBits = BigInt(128 - prefix);
  const network = formatIpv6(((ipv6 as bigint) >> hostBits) << hostBits);
  if (IPV4_IN_IPV6.test(formatIpv6(ipv6 as bigint)) || IPV4_IN_IPV6.test(network)) {
    return 'must not be an IPv4 address written as IPv6; give the IPv4 form';
  }
  return { family, cidr: `${network}/${prefix}` };
}

/** An address or prefix; host bits are allowed (iptables masks them) and are masked here too. */
export const cidrSchema = transformed(z.string(), (text, ctx): Cidr => {
  const result = canonicalCidr(text);
  return typeof result === 'string' ? fail(ctx, result) : result;
});

/**
 * A list of addresses or prefixes in one pass: config files carry thousands, and a schema run per item (even
 * a bare z.string()) would cost more than the parsing itself. A refused item is reported at its index.
 */
export const cidrListSchema = transformed(
  z.custom<unknown[]>(Array.isArray, { error: 'must be a list of addresses or prefixes' }),
  (items, ctx): Cidr[] => {
    const cidrs: Cidr[] = [];
    for (let index = 0; index < items.length; index++) {
      const item = items[index];
      const result = typeof item === 'string' ? canonicalCidr(item) : 'must be a string';
      if (typeof result === 'string') {
        ctx.issues.push({ code: 'custom', message: result, input: item, path: [index] });
        return z.NEVER as never;
      }
      cidrs.push(result);
    }
    return cidrs;
  },
);

export const ipAddressSchema = transformed(z.string(), (text, ctx): IpAddress => {
  if (parseIpv4(text) !== undefined) return { family: 4, address: text };
  const ipv6 = ipv6Number(text);
  if (ipv6 === undefined || IPV4_IN_IPV6.test(formatIpv6(ipv6))) return fail(ctx, 'must be an IPv4 or IPv6 address');
  return { family: 6, address: formatIpv6(ipv6) };
});

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** Go's strconv.ParseBool, as Consul reads booleans: 1, t, true, 0, f, false in any case. */
export function parseBoolean(where: string, text: string): boolean {
  if (/^(1|t|true)$/i.test(text)) return true;
  if (/^(0|f|false)$/i.test(text)) return false;
  throw invalidValue(where, text, 'must be true or false');
}

// Node's timers treat anything longer as 1 ms.
const MAX_DURATION_MS = 2 ** 31 - 1;

/** A Go-style duration (`500ms`, `5s`, `1m30s`) or plain seconds, in milliseconds. */
export const durationSchema = transformed(scalarString, (text, ctx) => {
  if (/^\d+(\.\d+)?$/.test(text)) {
    const ms = Number(text) * 1000;
    return ms > MAX_DURATION_MS ? fail(ctx, 'must be at most 24 days') : Math.round(ms);
  }
  if (!/^(\d+(\.\d+)?(ms|s|m|h))+$/.test(text)) {
    return fail(ctx, 'must be a duration such as 500ms, 5s, 2m or 1m30s');
  }
  let total = 0;
  for (const [, amount, unit] of text.matchAll(/(\d+(?:\.\d+)?)(ms|s|m|h)/g)) {
    total += Number(amount) * (DURATION_UNITS[unit ?? 's'] ?? 1000);
  }
  return total > MAX_DURATION_MS ? fail(ctx, 'must be at most 24 days') : Math.round(total);
});

/** Splits `a,b , c` into items; an empty item is kept, for the schema to reject, not silently dropped. */
export function splitList(values: readonly string[]): string[] {
  const items: string[] = [];
  for (const value of values) {
    // Most items (thousands in a config file) are one plain value each: no new strings for those.
    if (!value.includes(',') && !value.startsWith(' ') && !value.endsWith(' ')) items.push(value);
    else for (const item of value.split(',')) items.push(item.replace(/^ +| +$/g, ''));
  }
  return items;
}
