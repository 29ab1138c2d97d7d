import type { Family } from './values.ts';

// One look into a network namespace, for every backend at once: the whole nf_tables ruleset as
// `nft -j list ruleset` prints it, and the /proc/net files that say what else the kernel holds. Pure: this
// module only reads the texts; host/inventory.ts takes them, with one process.

/** The /proc/net files read, each as `#== <name>` then its lines; the ruleset follows `#== nft`. */
export const PROC_NET_FILES = ['ip_tables_names', 'ip6_tables_names', 'if_inet6'] as const;
export type ProcNetFile = (typeof PROC_NET_FILES)[number];
export const SECTION_MARK = '#== ';

/** The objects of one nf_tables table, in the order nft listed them (the table object first). */
export type TableObjects = readonly Record<string, unknown>[];

export interface Inventory {
  /** iptables-legacy holds tables of this family (the kernel lists them; reading loads no module). */
  legacyTables: Readonly<Record<Family, boolean>>;
  /** An address of global scope on any interface: IPv6 traffic that IPv4-only rules would not see. */
  globalIpv6: boolean;
  /**
   * Every nf_tables table, keyed `<family> <name>` ("ip nat", "inet consul_tproxy"). Undefined when the
   * ruleset was not listed or could not be read (nft missing or failing, JSON nft 1.0.6 misprints):
   * each backend then reads its own tables.
   */
  nftTables?: ReadonlyMap<string, TableObjects>;
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

/** Splits the inventory script's output into its sections, by name. */
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

/**
 * `nft -j list ruleset` grouped by table, or undefined when it is not the JSON nft prints (nft 1.0.6 prints
 * some attributes, a dormant table's flags, as broken JSON).
 */
export function tablesOfRuleset(json: string): Map<string, Record<string, unknown>[]> | undefined {
  let document: unknown;
  try {
    document = JSON.parse(json);
  } catch {
    return undefined;
  }
  const objects = isRecord(document) ? document['nftables'] : undefined;
  if (!Array.isArray(objects)) return undefined;
  const tables = new Map<string, Record<string, unknown>[]>();
  for (const object of objects) {
    if (!isRecord(object)) return undefined;
    const [kind, body] = Object.entries(object)[0] ?? [];
    if (kind === 'metainfo') continue;
    if (!isRecord(body)) return undefined;
    const name = kind === 'table' ? body['name'] : body['table'];
    const key = `${String(body['family'])} ${String(name)}`;
    const table = tables.get(key) ?? [];
    table.push(object);
    tables.set(key, table);
  }
  return tables;
}

/** A table's objects as `nft -j list table <family> <name>` prints them; empty when there is no such table. */
export const tableDump = (objects: TableObjects | undefined): string =>
  objects === undefined ? '' : JSON.stringify({ nftables: objects });
