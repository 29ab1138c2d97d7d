import { readFileSync } from 'node:fs';
import { NO_NF_TABLES, PROC_NET_FILES, procNetFacts, SECTION_MARK, sections, tablesOfRuleset, type Inventory, type ProcNetFile } from '../core/inventory.ts';
import { SystemCommandError } from '../errors.ts';
import { stderrExcerpt } from './backend.ts';
import { findProgram, type CommandRunner } from './runner.ts';

// Each process this tool starts costs a fork of the Node heap and a program's start-up, often more than the
// work it does. So a survey looks into the namespace once: one process reads the /proc/net files that only
// a process inside the namespace can see, then lists the whole nf_tables ruleset, where iptables-nft's
// tables are too. A backend reads a table on its own only when this look cannot tell it enough.

/**
 * Prints each /proc/net file as a section, then execs `$1 -j list ruleset` when nft is installed. Shell
 * builtins only: reading a file costs no process. The program's path is an argument, never script text.
 */
const SCRIPT = [
  `for file in ${PROC_NET_FILES.join(' ')}; do`,
  `  printf '${SECTION_MARK}%s\\n' "$file"`,
  '  if [ -r "/proc/net/$file" ]; then while IFS= read -r line; do printf \'%s\\n\' "$line"; done < "/proc/net/$file"; fi',
  'done',
  `printf '${SECTION_MARK}nft\\n'`,
  'if [ -n "$1" ]; then exec "$1" -j list ruleset; fi',
].join('\n');

function readProcNet(file: ProcNetFile): string {
  try {
    return readFileSync(`/proc/net/${file}`, 'utf8');
  } catch {
    return '';
  }
}

/** Takes the inventory of the namespace `runner` runs in (this process's own when `inNetns` is false). */
export async function takeInventory(runner: CommandRunner, inNetns: boolean): Promise<Inventory> {
  const nft = findProgram('nft');
  let files: Partial<Record<ProcNetFile, string>>;
  let listing: { exitCode: number; stdout: string; stderr: string } | undefined;
  if (inNetns) {
    const result = await runner.run('/bin/sh', ['-c', SCRIPT, 'redirect-traffic', nft ?? '']);
    const found = sections(result.stdout);
    if (!found.has('nft')) {
      throw new SystemCommandError(`could not look into the namespace (exit ${result.exitCode}): ${stderrExcerpt(result.stderr) || 'no output'}`);
    }
    files = Object.fromEntries(PROC_NET_FILES.map((file) => [file, found.get(file) ?? '']));
    listing = nft === undefined ? undefined : { ...result, stdout: found.get('nft') ?? '' };
  } else {
    // This process sees its own namespace's /proc/net: only nft needs a process.
    const listed = nft === undefined ? undefined : runner.run(nft, ['-j', 'list', 'ruleset']);
    files = Object.fromEntries(PROC_NET_FILES.map((file) => [file, readProcNet(file)]));
    listing = await listed;
  }
  const facts = procNetFacts(files);
  if (listing === undefined) return { ...facts, noNfTables: false };
  if (listing.exitCode !== 0) return { ...facts, noNfTables: NO_NF_TABLES.test(listing.stderr) };
  const nftTables = tablesOfRuleset(listing.stdout);
  return { ...facts, noNfTables: false, ...(nftTables && { nftTables }) };
}
