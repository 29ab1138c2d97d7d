import type { Family } from './values.ts';

// One look into a network namespace, for every backend at once: the /proc/net files that say what the
// kernel holds besides nf_tables, the names of all nf_tables chains, and our own table. Pure: this module
// only reads the texts; host/inventory.ts takes them, with one process.

/** The /proc/net files read, each printed as a section. */
export const PROC_NET_FILES = ['ip_tables_names', 'ip6_tables_names', 'if_inet6'] as const;
export type ProcNetFile = (typeof PROC_NET_FILES)[number];
/** Starts a section line; nothing else printed starts so (nft -j prints one line, /proc/net these files). */
export const SECTION_MARK = '#== ';

export interface NftListing {
  /** Every chain's name, by table (`ip nat`, `inet consul_tproxy`): cheap to list however many rules there are. */
  chains: ReadonlyMap<string, readonly string[]>;
  /** `nft -j list table inet consul_tproxy`: empty when there is no such table, undefined when it failed otherwise. */
  ours: string | undefined;
}

export interface Inventory {
  /** iptables-legacy holds tables of this family (the kernel lists them; reading loads no module). */
  legacyTables: Readonly<Record<Family, boolean>>;
  /** An address of global scope on any interface: IPv6 traffic that IPv4-only rules would not see. */
  globalIpv6: boolean;
  /** What nft listed; undefined without nft, or when it failed: each backend then reads its own tables. */
  nft?: NftListing;
  /** nft answered that this kernel has no nf_tables. */
  noNfTables: boolean;
}

/** A kernel without nf_tables answers every nft request so. */
export const NO_NF_TABLES = /Protocol not supported|Operation not supported|Address family not supported/i;

/** The facts in the /proc/net files; a missing file (module not loaded, no IPv6) is an empty one. */
export function procNetFacts(files: Readonly<Partial<Record<ProcNetFile, string>>>): Pick<Inventory, 'legacyTables' | 'globalIpv6'> {
  const listed = (file: ProcNetFile) => (files[file] ?? '').trim() !== '';
  // "20010db8000000000000000000000001 02 40 00 80 eth0": address, ifindex, prefix length, scope, flags, name.
  const globalIpv6 = (files.if_inet6 ?? '').split('\n').some((line) => line.trim().split(/\s+/)[3] === '00');
  return { legacyTables: { 4: listed('ip_tables_names'), 6: listed('ip6_tables_names') }, globalIpv6 };
}

/** Splits the inventory script's output into its sections: each section line's text, and what follows it. */
export function sections(output: string): Map<string, string> {
  const found = new Map<string, string>();
  let name: string | undefined;
  let lines: string[] = [];
  const close = () => {
    if (name !== undefined) found.set(name, lines.join('\n'));
  };
  for (const line of output.split('\n')) {
    if (line.startsWith(SECTION_MARK)) {
      close();
      name = line.slice(SECTION_MARK.length);
      lines = [];
    } else {
      lines.push(line);
    }
  }
  close();
  return found;
}

const isRecord = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value);

/** `nft -j list chains` as chain names by table, or undefined when it is not the JSON nft prints. */
export function chainsByTable(json: string): Map<string, string[]> | undefined {
  let document: unknown;
  try {
    document = JSON.parse(json);
  } catch {
    return undefined;
  }
  const objects = isRecord(document) ? document['nftables'] : undefined;
  if (!Array.isArray(objects)) return undefined;
  const tables = new Map<string, string[]>();
  for (const object of objects) {
    const chain = isRecord(object) ? object['chain'] : undefined;
    if (!isRecord(chain)) continue;
    const key = `${String(chain['family'])} ${String(chain['table'])}`;
    tables.set(key, [...(tables.get(key) ?? []), String(chain['name'])]);
  }
  return tables;
}
