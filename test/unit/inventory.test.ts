import { describe, expect, it } from 'vitest';
import { chainsByTable, procNetFacts, sections } from '../../src/core/inventory.ts';

describe('the namespace inventory, as read', () => {
  it('finds legacy tables and global IPv6 addresses in the /proc/net files', () => {
    const ifInet6 = [
      '00000000000000000000000000000001 01 80 10 80       lo',
      'fe800000000000000000000000000001 02 40 20 80     eth0',
      'fec00000000000000000000000000001 02 40 40 80     eth0',
    ].join('\n');
    expect(procNetFacts({ if_inet6: ifInet6 })).toEqual({ legacyTables: { 4: false, 6: false }, globalIpv6: false });
    expect(procNetFacts({ ip_tables_names: 'nat\nfilter\n', if_inet6: `${ifInet6}\n20010db8000000000000000000000001 02 40 00 80     eth0` })).toEqual({
      legacyTables: { 4: true, 6: false },
      globalIpv6: true,
    });
    expect(procNetFacts({ ip6_tables_names: 'nat\n' }).legacyTables).toEqual({ 4: false, 6: true });
  });

  it('splits the script output into sections by their lines', () => {
    const found = sections('#== a\none\ntwo\n#== b\n#== chains status 0\n');
    expect(found.get('a')).toBe('one\ntwo');
    expect(found.get('b')).toBe('');
    expect(found.has('chains status 0')).toBe(true);
  });

  it('lists chain names by table from nft -j list chains, and refuses anything else', () => {
    const listing = JSON.stringify({
      nftables: [
        { metainfo: { version: '1.0.6' } },
        { chain: { family: 'ip', table: 'nat', name: 'PREROUTING', handle: 1, type: 'nat', hook: 'prerouting', prio: -100, policy: 'accept' } },
        { chain: { family: 'ip', table: 'nat', name: 'CONSUL_PROXY_INBOUND', handle: 5 } },
        { chain: { family: 'inet', table: 'consul_tproxy', name: 'CONSUL_NAT_OUTPUT', handle: 2 } },
      ],
    });
    expect(chainsByTable(listing)).toEqual(
      new Map([
        ['ip nat', ['PREROUTING', 'CONSUL_PROXY_INBOUND']],
        ['inet consul_tproxy', ['CONSUL_NAT_OUTPUT']],
      ]),
    );
    expect(chainsByTable('{"nftables": [{"table": {"family": "inet", "name": "x", "flags": ftp-standard}}]}')).toBeUndefined();
    expect(chainsByTable('{"something": []}')).toBeUndefined();
  });
});
