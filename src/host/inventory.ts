import { chainsByTable, NO_NF_TABLES, PROC_NET_FILES, procNetFacts, SECTION_MARK, sections, type Inventory, type NftListing } from '../core/inventory.ts';
import { NFT_FAMILY, NFT_TABLE } from '../core/nftables.ts';
import { SystemCommandError } from '../errors.ts';
import { stderrExcerpt } from './backend.ts';
import { findProgram, type CommandRunner } from './runner.ts';

// Each process this tool starts costs a fork of the Node heap and a program's start-up, often more than the
// work it does. So a survey looks into the namespace once, with one shell: it reads the /proc/net files that
// only a process inside the namespace can see, then asks nft for the names of all chains (where iptables-nft's
// chains are too) and for our table. Neither listing grows with other tables' rules. A backend reads a table on
// its own only when this look cannot tell it enough.

/**
 * Prints each /proc/net file as a section (shell builtins: reading costs no process), then, when nft is
 * installed (`$1`), the two listings, each followed by its exit status. nft's path is an argument, never
 * script text.
 */
const SCRIPT = [
  `for file in ${PROC_NET_FILES.join(' ')}; do`,
  `  printf '${SECTION_MARK}%s\\n' "$file"`,
  '  if [ -r "/proc/net/$file" ]; then while IFS= read -r line; do printf \'%s\\n\' "$line"; done < "/proc/net/$file"; fi',
  'done',
  `printf '${SECTION_MARK}end of files\\n'`,
  '[ -n "$1" ] || exit 0',
  `printf '${SECTION_MARK}chains\\n'; "$1" -j list chains; printf '\\n${SECTION_MARK}chains status %s\\n' "$?"`,
  `printf '${SECTION_MARK}ours\\n'; "$1" -j list table ${NFT_FAMILY} ${NFT_TABLE} 2>&1; printf '\\n${SECTION_MARK}ours status %s\\n' "$?"`,
].join('\n');

/** The exit status a section line `<name> status N` reports, or undefined when there is none. */
function statusOf(found: Map<string, string>, name: string): number | undefined {
  for (const key of found.keys()) {
    const match = new RegExp(`^${name} status (\\d+)$`).exec(key);
    if (match) return Number(match[1]);
  }
  return undefined;
}

/** Takes the inventory of the namespace `runner` runs in. */
export async function takeInventory(runner: CommandRunner): Promise<Inventory> {
  const nft = findProgram('nft');
  const result = await runner.run('/bin/sh', ['-c', SCRIPT, 'redirect-traffic', nft ?? ''], { name: 'the namespace inventory (sh)' });
  const found = sections(result.stdout);
  if (!found.has('end of files')) {
    throw new SystemCommandError(`could not look into the namespace (exit ${result.exitCode}): ${stderrExcerpt(result.stderr) || 'no output'}`);
  }
  const facts = procNetFacts(Object.fromEntries(PROC_NET_FILES.map((file) => [file, found.get(file) ?? ''])));
  if (nft === undefined) return { ...facts, noNfTables: false };
  const chainsStatus = statusOf(found, 'chains');
  const oursStatus = statusOf(found, 'ours');
  const oursText = (found.get('ours') ?? '').trim();
  // Both listings refused the way a kernel without nf_tables refuses everything: not a failure of one table.
  if (chainsStatus !== 0 && oursStatus !== 0 && NO_NF_TABLES.test(result.stderr) && NO_NF_TABLES.test(oursText)) {
    return { ...facts, noNfTables: true };
  }
  const chains = chainsStatus === 0 ? chainsByTable(found.get('chains') ?? '') : undefined;
  if (chains === undefined) return { ...facts, noNfTables: false };
  // Our table absent is nft's one "No such file or directory"; anything else the nftables backend reads itself.
  const ours = oursStatus === 0 ? oursText : /No such file or directory/.test(oursText) ? '' : undefined;
  const listing: NftListing = { chains, ours };
  return { ...facts, noNfTables: false, nft: listing };
}
