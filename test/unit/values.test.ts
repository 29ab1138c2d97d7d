import { isIP } from 'node:net';
import IPCIDR from 'ip-cidr';
import { describe, expect, it } from 'vitest';
import type * as z from 'zod/mini';
import {
  cidrSchema,
  durationSchema,
  ipAddressSchema,
  portOrRangeSchema,
  portSchema,
  splitList,
  uidSchema,
  type PortRange,
  type UidSpec,
} from '../../src/core/values.ts';

type Schema = z.ZodMiniType<unknown, unknown>;

/** safeParse that turns a thrown exception into a test failure naming the input. */
function check(schema: Schema, input: unknown): { ok: true; value: unknown } | { ok: false; message: string } {
  let result;
  try {
    result = schema.safeParse(input);
  } catch (error) {
    throw new Error(`schema threw on ${JSON.stringify(input)} instead of reporting an issue: ${(error as Error).message}`);
  }
  return result.success ? { ok: true, value: result.data } : { ok: false, message: result.error.issues[0]?.message ?? '' };
}

const accepts = (schema: Schema, cases: readonly (readonly [unknown, unknown])[]) =>
  it.each(cases)('accepts %j as %j', (input, expected) => {
    expect(check(schema, input)).toEqual({ ok: true, value: expected });
  });

const rejects = (schema: Schema, inputs: readonly unknown[]) =>
  it.each(inputs.map((input) => [input]))('rejects %j', (input) => {
    expect(check(schema, input).ok).toBe(false);
  });

describe('portSchema', () => {
  accepts(portSchema, [
    ['1', 1],
    ['80', 80],
    ['65535', 65535],
    [443, 443],
    [65535, 65535],
  ]);
  rejects(portSchema, ['0', '65536', '99999', '-1', '+80', ' 80', '80 ', '1e3', '0x50', '80.0', '', 'http', '٨٠', '８０', 0, -1, 80.5, 65536, Infinity, NaN, 1e21, true, null]);
  it('gives a message naming the range', () => {
    expect(check(portSchema, '0')).toEqual({ ok: false, message: expect.stringMatching(/1.*65535/) });
  });
});

/** portOrRangeSchema with a services file of three names. */
const portOrRange = portOrRangeSchema((name) => new Map([['ssh', 22], ['http', 80], ['kerberos-adm', 749]]).get(name));

// What iptables and Consul's nftables branch accept (open ranges, 0, a-b, service names), Consul passes on.
describe('portOrRangeSchema', () => {
  accepts(portOrRange, [
    ['22', { low: 22, high: 22 }],
    [22, { low: 22, high: 22 }],
    ['80:90', { low: 80, high: 90 }],
    ['1:65535', { low: 1, high: 65535 }],
    ['8080:8080', { low: 8080, high: 8080 }],
    ['0', { low: 0, high: 0 }],
    ['0:10', { low: 0, high: 10 }],
    ['1024:', { low: 1024, high: 65535 }],
    [':1024', { low: 0, high: 1024 }],
    ['8000-8100', { low: 8000, high: 8100 }],
    ['ssh', { low: 22, high: 22 }],
    ['kerberos-adm', { low: 749, high: 749 }],
    ['ssh:http', { low: 22, high: 80 }],
  ]);
  rejects(portOrRange, ['90:80', ':', '1:65536', '65536', '80:90:100', '80,90', '80 :90', 'a:b', '', '80-', '-80', '80-90-100', '8000-http', 'telnet', 'SSH', 'ssh ', 's;sh', '1e3', '0x50']);
  it('names both ends when the range is backwards', () => {
    expect(check(portOrRange, '90:80')).toEqual({ ok: false, message: expect.stringMatching(/90.*80/) });
  });
});

describe('leading zeros are rejected (Go and iptables read 010 as octal 8)', () => {
  const schemas: Record<string, Schema> = { port: portSchema, portOrRange, uid: uidSchema, cidr: cidrSchema };
  it.each([
    ['port', '08'],
    ['port', '010'],
    ['port', '0080'],
    ['portOrRange', '010'],
    ['portOrRange', '08:09'],
    ['portOrRange', '80:090'],
    ['uid', '010'],
    ['uid', '00'],
    ['cidr', '1.2.3.4/010'],
    ['cidr', '1.2.3.4/08'],
    ['cidr', '::1/0128'],
  ])('%s rejects %j', (kind, input) => {
    expect(check(schemas[kind]!, input).ok).toBe(false);
  });
});

describe('uidSchema', () => {
  const id = (uid: number): UidSpec => ({ kind: 'id', uid });
  const name = (text: string): UidSpec => ({ kind: 'name', name: text });
  accepts(uidSchema, [
    ['0', id(0)],
    [0, id(0)],
    ['101', id(101)],
    ['4294967294', id(4294967294)],
    [4294967294, id(4294967294)],
    ['envoy', name('envoy')],
    ['_apt', name('_apt')],
    ['systemd-network', name('systemd-network')],
    ['first.last', name('first.last')],
    ['HOST$', name('HOST$')],
  ]);
  rejects(uidSchema, [
    '4294967295',
    '99999999999',
    '-1',
    -1,
    1.5,
    '',
    '-envoy',
    '1envoy',
    '1e3',
    'a b',
    'envoy\n',
    'en$voy',
    'a'.repeat(40),
    '٠',
    'envoy\u200b',
    'ënvoy',
    4294967295,
  ]);
});

describe('cidrSchema', () => {
  accepts(cidrSchema, [
    ['10.0.0.0/8', { family: 4, cidr: '10.0.0.0/8' }],
    ['10.1.2.3/8', { family: 4, cidr: '10.0.0.0/8' }],
    ['192.168.1.7', { family: 4, cidr: '192.168.1.7/32' }],
    ['0.0.0.0/0', { family: 4, cidr: '0.0.0.0/0' }],
    ['169.254.169.254/32', { family: 4, cidr: '169.254.169.254/32' }],
    ['2001:db8::/32', { family: 6, cidr: '2001:db8::/32' }],
    ['2001:DB8:0:0::1/32', { family: 6, cidr: '2001:db8::/32' }],
    ['2001:db8::1', { family: 6, cidr: '2001:db8::1/128' }],
    ['FE80::/10', { family: 6, cidr: 'fe80::/10' }],
    ['::/0', { family: 6, cidr: '::/0' }],
    ['::1', { family: 6, cidr: '::1/128' }],
  ]);
  rejects(cidrSchema, [
    '10.0.0.0/33',
    '::1/129',
    '1.2.3.4/',
    '1.2.3.4/-1',
    '1.2.3.4/+8',
    '1.2.3.4/8/8',
    '010.0.0.1',
    '1.2.3',
    '256.0.0.0/8',
    'example.com',
    'localhost',
    'fe80::1%eth0',
    'fe80::1%eth0/64',
    '::ffff:1.2.3.4',
    '::FFFF:1.2.3.4/120',
    '10.0.0.0/8,',
    ' 10.0.0.0/8',
    '10.0.0.0/8 ',
    '10.0.0.0/8\n',
    '',
    10,
  ]);

  it.each(['::1.2.3.4', '::1.2.3.4/128', '0::ffff:1.2.3.4', '0:0:0:0:0:FFFF:1.2.3.4', '::ffff:0:1.2.3.4', '64:ff9b::1.2.3.4/120'])(
    'never throws, and an accepted IPv4-embedded IPv6 value stays IPv6 text: %j',
    (input) => {
      const result = check(cidrSchema, input);
      if (result.ok) {
        const { family, cidr } = result.value as { family: number; cidr: string };
        expect(family).toBe(6);
        expect(isIP(cidr.split('/')[0] ?? '')).toBe(6);
        expect(cidr).toMatch(/\/\d+$/);
      }
    },
  );

  it('spells IPv6 networks exactly as ip-cidr (an independent implementation) does, on random addresses and prefixes', () => {
    let seed = 7;
    const random = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    // Runs of zero groups of every length and place, so that every `::` choice is exercised.
    const group = () => (random(3) === 0 ? '0' : random(0x10000).toString(16).padStart(random(2) ? 4 : 1, '0'));
    for (let i = 0; i < 3000; i++) {
      const address = Array.from({ length: 8 }, group).join(':');
      const prefix = random(129);
      const expected = new IPCIDR(`${address}/${prefix}`).addressStart.correctForm();
      const result = check(cidrSchema, `${address}/${prefix}`);
      if (/^::(ffff:)?[0-9a-f]{1,4}:[0-9a-f]{1,4}$/.test(expected)) continue; // refused: IPv4 written as IPv6
      expect(result, `${address}/${prefix}`).toEqual({ ok: true, value: { family: 6, cidr: `${expected}/${prefix}` } });
    }
  });
});

describe('ipAddressSchema', () => {
  accepts(ipAddressSchema, [
    ['10.0.0.53', { family: 4, address: '10.0.0.53' }],
    ['127.0.0.1', { family: 4, address: '127.0.0.1' }],
    ['::1', { family: 6, address: '::1' }],
    ['FD00::53', { family: 6, address: 'fd00::53' }],
    ['2001:0db8:0000:0000:0000:0000:0000:0001', { family: 6, address: '2001:db8::1' }],
  ]);
  rejects(ipAddressSchema, [
    '',
    '01.2.3.4',
    '1.2.3.4/32',
    '10.0.0.0/8',
    'localhost',
    'consul.service.consul',
    '::ffff:1.2.3.4',
    '1.2.3.4 ',
    '1.2.3.4\n',
    'fe80::1%eth0',
    16909060,
  ]);

  it('takes exactly the dotted quads a reference regex takes (no leading zeros, octets to 255), on random input', () => {
    const OCTET = '(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])';
    const reference = new RegExp(`^${OCTET}\\.${OCTET}\\.${OCTET}\\.${OCTET}$`);
    const pieces = ['0', '1', '9', '00', '01', '10', '99', '100', '199', '255', '256', '300', '1000', '.', '..', 'a', ' ', '-'];
    let seed = 1;
    const random = (n: number) => ((seed = (seed * 48271) % 2147483647) % n);
    const mismatches: string[] = [];
    for (let round = 0; round < 20_000; round++) {
      const parts = Array.from({ length: 1 + random(7) }, () => pieces[random(pieces.length)]);
      const text = random(2) ? parts.join('') : parts.slice(0, 4).join('.');
      if (check(ipAddressSchema, text).ok !== reference.test(text)) mismatches.push(text);
    }
    expect(mismatches).toEqual([]);
  });

  it.each(['::1.2.3.4', '0::ffff:1.2.3.4', '0:0:0:0:0:FFFF:1.2.3.4'])('an accepted %j has an address of its own family', (input) => {
    const result = check(ipAddressSchema, input);
    if (result.ok) {
      const { family, address } = result.value as { family: 4 | 6; address: string };
      expect(isIP(address)).toBe(family);
    }
  });
});

describe('durationSchema', () => {
  accepts(durationSchema, [
    ['500ms', 500],
    ['5s', 5000],
    ['1.5s', 1500],
    ['2m', 120_000],
    ['1m30s', 90_000],
    ['1h', 3_600_000],
    ['0', 0],
    ['2', 2000],
    [5, 5000],
  ]);
  rejects(durationSchema, ['', '-1s', '5 s', 's', '1d', '.5s', '5.s', 'forever', '1e3s', '5s ', '٥s']);
  it('rejects durations Node timers cannot hold (> 2^31-1 ms fire at once)', () => {
    expect(check(durationSchema, '999999999999999999999h').ok).toBe(false);
    expect(check(durationSchema, '600h').ok).toBe(false);
    expect(check(durationSchema, '596h').ok).toBe(true);
  });
});

describe('splitList', () => {
  it('splits comma lists and trims spaces around items', () => {
    expect(splitList(['22,80 , 443', '8500'])).toEqual(['22', '80', '443', '8500']);
  });
  it('keeps empty items so validation reports them instead of silently dropping them', () => {
    expect(splitList(['22,,80'])).toEqual(['22', '', '80']);
    expect(splitList([','])).toEqual(['', '']);
    expect(splitList([''])).toEqual(['']);
  });
  it('does not trim other whitespace, so it is rejected later', () => {
    expect(splitList(['22\n'])).toEqual(['22\n']);
    expect(check(portOrRange, splitList(['22\t'])[0]).ok).toBe(false);
  });
  it('returns nothing for no values', () => {
    expect(splitList([])).toEqual([]);
  });
});

describe('no accepted value can smuggle anything into a restore line', () => {
  /** The text each schema's output puts into a rule. */
  const tokenOf: [string, Schema, (value: unknown) => string[]][] = [
    ['port', portSchema, (v) => [String(v)]],
    ['portOrRange', portOrRange, (v) => [String((v as PortRange).low), String((v as PortRange).high)]],
    ['uid', uidSchema, (v) => [(v as UidSpec).kind === 'id' ? String((v as { uid: number }).uid) : (v as { name: string }).name]],
    ['cidr', cidrSchema, (v) => [(v as { cidr: string }).cidr]],
    ['ip', ipAddressSchema, (v) => [(v as { address: string }).address]],
    ['duration', durationSchema, (v) => [String(v)]],
  ];

  const seeds = ['22', '80:90', '0', '101', 'envoy', '10.0.0.0/8', '10.0.0.53', '::1', 'fd00::/8', '5s'];
  const junk = [
    ' -j ACCEPT',
    '\n-A OUTPUT -j DROP',
    '\r\n-X CONSUL_PROXY_OUTPUT',
    ' ',
    '\t',
    '\n',
    '\r',
    '\0',
    '\v',
    '\f',
    '\u00a0',
    '\u2028',
    '\u200b',
    '\ufeff',
    ';id',
    '$(id)',
    '`id`',
    '"',
    "'",
    '#',
    ',23',
    ' --dport 1',
    '/../../etc',
    '٣',
    '３',
    '\u0661\u0662',
  ];
  const nasty = [
    '22 -j ACCEPT',
    '22\n-A OUTPUT -j DROP',
    '10.0.0.0/8 -j ACCEPT',
    '10.0.0.0/8\nCOMMIT',
    '$(id)',
    '`reboot`',
    '\0',
    '22\0',
    '-22',
    '--dport',
    '-j',
    '-1',
    '٢٢',
    '２２',
    '𝟐𝟐',
    '22\u200b',
    'envoy\n-A',
    'root -j ACCEPT',
    '-A OUTPUT',
    '*nat',
    'COMMIT',
    ':CONSUL_PROXY_OUTPUT - [0:0]',
    '',
    ' ',
    ...seeds.flatMap((seed) => junk.flatMap((j) => [`${seed}${j}`, `${j}${seed}`])),
  ];

  const SAFE = /^[0-9A-Za-z_.:/$[\]]([0-9A-Za-z_.:/$[\]-]*)$/;

  it.each(tokenOf)('%s: every nasty input is rejected or becomes one safe token', (_name, schema, tokens) => {
    const accepted: string[] = [];
    for (const input of nasty) {
      const result = check(schema, input);
      if (!result.ok) continue;
      accepted.push(input);
      for (const token of tokens(result.value)) {
        expect(token, `from ${JSON.stringify(input)}`).toMatch(SAFE);
        expect(token).not.toMatch(/\s/);
        expect(token.startsWith('-')).toBe(false);
      }
    }
    // Nothing junk-laden is accepted at all; `COMMIT` is a well-formed user name (resolved to a number later).
    expect(accepted).toEqual(_name === 'uid' ? ['COMMIT'] : []);
  });

  it.each(tokenOf)('%s: the clean seeds that it accepts are safe tokens too', (_name, schema, tokens) => {
    for (const seed of seeds) {
      const result = check(schema, seed);
      if (result.ok) for (const token of tokens(result.value)) expect(token).toMatch(SAFE);
    }
  });
});
