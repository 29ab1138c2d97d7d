import IPCIDR from 'ip-cidr';
import { isIP } from 'node:net';
import * as z from 'zod';

// Pure validators for single values. Each returns a canonical form that is safe to place in an
// iptables-restore line: digits, dots, colons, slashes and hex only, never whitespace or a leading dash.

export type Family = 4 | 6;

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

/** A UID given as a number, or a user name still to be resolved on this host. */
export type UidSpec = { kind: 'id'; uid: number } | { kind: 'name'; name: string };

const MAX_UID = 4294967294; // 2^32-1 is (uid_t)-1, "no user"

function fail(ctx: z.core.$RefinementCtx<string>, message: string): never {
  ctx.addIssue({ code: 'custom', message });
  return z.NEVER as never;
}

/** Strings only; config files may also hold plain integers. */
export const scalarString = z.union([z.string(), z.number().int()]).transform(String);

function portNumber(text: string): number | undefined {
  if (!/^\d{1,5}$/.test(text)) return undefined;
  const port = Number(text);
  return port >= 1 && port <= 65535 ? port : undefined;
}

export const portSchema = scalarString.transform((text, ctx) => {
  return portNumber(text) ?? fail(ctx, 'must be a port number from 1 to 65535');
});

/** A port or an inclusive range `a:b` (a <= b); `a:a` collapses to `a`, as iptables-save prints it. */
export const portOrRangeSchema = scalarString.transform((text, ctx) => {
  const match = /^(\d+)(?::(\d+))?$/.exec(text);
  const low = match?.[1] === undefined ? undefined : portNumber(match[1]);
  const high = match?.[2] === undefined ? low : portNumber(match[2]);
  if (low === undefined || high === undefined) {
    return fail(ctx, 'must be a port from 1 to 65535 or a range low:high');
  }
  if (low > high) return fail(ctx, `range start ${low} is above its end ${high}`);
  return low === high ? String(low) : `${low}:${high}`;
});

// POSIX portable user names, plus the trailing $ of machine accounts.
const USER_NAME = /^[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?$/;

export const uidSchema = scalarString.transform((text, ctx): UidSpec => {
  if (/^\d+$/.test(text)) {
    const uid = Number(text);
    if (text.length > 10 || uid > MAX_UID) return fail(ctx, `must be a UID from 0 to ${MAX_UID} or a user name`);
    return { kind: 'id', uid };
  }
  if (!USER_NAME.test(text)) return fail(ctx, 'must be a numeric UID or a user name');
  return { kind: 'name', name: text };
});

/** An address or prefix; host bits are allowed (iptables masks them) and are masked here too. */
export const cidrSchema = z.string().transform((text, ctx): Cidr => {
  const family = isIP(text.split('/')[0] ?? '');
  // ip-cidr would accept zone IDs and silently turn ::ffff:a.b.c.d into IPv4, dropping the prefix.
  if (family === 0 || text.includes('%') || /^::ffff:/i.test(text) || !/^[0-9A-Fa-f:./]+$/.test(text)) {
    return fail(ctx, 'must be an IPv4 or IPv6 address or CIDR prefix (host names are not accepted)');
  }
  const prefixText = text.includes('/') ? text.slice(text.indexOf('/') + 1) : String(family === 4 ? 32 : 128);
  const prefix = /^\d{1,3}$/.test(prefixText) ? Number(prefixText) : NaN;
  if (!(prefix <= (family === 4 ? 32 : 128))) return fail(ctx, 'has an invalid prefix length');
  const address = text.split('/')[0] ?? '';
  const range = new IPCIDR(`${address}/${prefix}`);
  return { family: family === 4 ? 4 : 6, cidr: `${range.addressStart.correctForm()}/${prefix}` };
});

export const ipAddressSchema = z.string().transform((text, ctx): IpAddress => {
  const family = isIP(text);
  if (family === 0 || /^::ffff:/i.test(text)) return fail(ctx, 'must be an IPv4 or IPv6 address');
  if (family === 4) return { family: 4, address: text };
  return { family: 6, address: IPCIDR.createAddress(text).correctForm() };
});

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** A Go-style duration (`500ms`, `5s`, `1m30s`) or plain seconds, in milliseconds. */
export const durationSchema = scalarString.transform((text, ctx) => {
  if (/^\d+(\.\d+)?$/.test(text)) return Math.round(Number(text) * 1000);
  if (!/^(\d+(\.\d+)?(ms|s|m|h))+$/.test(text)) {
    return fail(ctx, 'must be a duration such as 500ms, 5s, 2m or 1m30s');
  }
  let total = 0;
  for (const [, amount, unit] of text.matchAll(/(\d+(?:\.\d+)?)(ms|s|m|h)/g)) {
    total += Number(amount) * (DURATION_UNITS[unit ?? 's'] ?? 1000);
  }
  return Math.round(total);
});

/** Splits `a,b , c` into items; an empty item is an error, not silently dropped. */
export function splitList(values: readonly string[]): string[] {
  return values.flatMap((value) => value.split(',').map((item) => item.replace(/^ +| +$/g, '')));
}
