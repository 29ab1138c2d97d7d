// IPv4 and IPv6 addresses as numbers, and back in the one spelling that iptables-save, ip6tables-save and nft
// print (inet_ntop's). Validation, both backends' renderers and the nft parser all go through these, so an
// address the operator gives and the same address read back from the kernel always compare equal.

/**
 * Dotted quad to a 32-bit number, one character at a time: configs and sets hold thousands of these, and
 * splitting each into strings and testing each with a regular expression cost most of building a 10,000-element
 * set. Octets in decimal without leading zeros: iptables would read `010` as octal, and nft never prints one.
 */
export function parseIpv4(text: string): number | undefined {
  let value = 0;
  let octet = 0;
  let digits = 0;
  let dots = 0;
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    if (code === 46 /* . */) {
      if (digits === 0 || dots === 3) return undefined;
      value = value * 256 + octet;
      octet = 0;
      digits = 0;
      dots++;
    } else if (code >= 48 && code <= 57) {
      if (digits === 1 && octet === 0) return undefined;
      octet = octet * 10 + (code - 48);
      if (octet > 255) return undefined;
      digits++;
    } else {
      return undefined;
    }
  }
  return dots === 3 && digits > 0 ? value * 256 + octet : undefined;
}

export function formatIpv4(value: number): string {
  return `${value >>> 24}.${(value >>> 16) & 255}.${(value >>> 8) & 255}.${value & 255}`;
}

function parseIpv6Groups(text: string): bigint[] | undefined {
  if (text === '') return [];
  const groups: bigint[] = [];
  const parts = text.split(':');
  for (const [index, part] of parts.entries()) {
    // A dotted IPv4 tail (::ffff:192.0.2.1) is two groups; nft prints some addresses that way.
    const tail = index === parts.length - 1 && part.includes('.') ? parseIpv4(part) : undefined;
    if (tail !== undefined) groups.push(BigInt(Math.floor(tail / 65536)), BigInt(tail % 65536));
    else if (/^[0-9a-fA-F]{1,4}$/.test(part)) groups.push(BigInt(`0x${part}`));
    else return undefined;
  }
  return groups;
}

/** Colon-hex IPv6 (`::` at most once, a dotted IPv4 tail allowed) to a 128-bit number. */
export function parseIpv6(text: string): bigint | undefined {
  const halves = text.split('::');
  if (halves.length > 2) return undefined;
  const head = parseIpv6Groups(halves[0] ?? '');
  const tail = halves.length === 2 ? parseIpv6Groups(halves[1] ?? '') : [];
  if (!head || !tail) return undefined;
  const missing = 8 - head.length - tail.length;
  if (halves.length === 2 ? missing < 1 : missing !== 0) return undefined;
  return [...head, ...Array<bigint>(missing).fill(0n), ...tail].reduce((value, group) => (value << 16n) | group, 0n);
}

/**
 * RFC 5952, as inet_ntop prints it: lower-case groups without leading zeros, the first longest run of two or
 * more zero groups as `::`. (inet_ntop prints IPv4-mapped and -compatible addresses dotted; validation refuses
 * those, see values.ts.)
 */
export function formatIpv6(value: bigint): string {
  const groups = [112n, 96n, 80n, 64n, 48n, 32n, 16n, 0n].map((shift) => (value >> shift) & 0xffffn);
  let best = { start: -1, length: 1 };
  for (let start = 0; start < 8; start++) {
    let length = 0;
    while (start + length < 8 && groups[start + length] === 0n) length++;
    if (length > best.length) best = { start, length };
  }
  const hex = (from: number, to: number) => groups.slice(from, to).map((group) => group.toString(16)).join(':');
  return best.start < 0 ? hex(0, 8) : `${hex(0, best.start)}::${hex(best.start + best.length, 8)}`;
}
