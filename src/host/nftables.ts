import { iptablesNftChains, NFT_FAMILY, NFT_TABLE, nftablesDialect, type NftState } from '../core/nftables.ts';
import type { Family } from '../core/values.ts';
import { FirewallError, stderrExcerpt, type BackendProvider, type FirewallTable, type TableSurvey } from './backend.ts';
import type { NamespaceReads } from './namespaceReads.ts';
import { nftMonitor } from './monitor.ts';
import { findProgram, type CommandResult, type CommandRunner } from './runner.ts';

// The native nftables backend: one `inet consul_tproxy` table for both families, read with `nft -j` and
// replaced whole by one `nft -f -` transaction.

const TABLE = `${NFT_FAMILY} ${NFT_TABLE}`;
const LABEL = `nftables ${TABLE}`;

/** A kernel without nf_tables answers every request so. */
const NO_NF_TABLES = /Protocol not supported|Operation not supported|Address family not supported/i;

function nftError(action: string, stderr: string, exitCode: number): FirewallError {
  if (NO_NF_TABLES.test(stderr)) {
    return new FirewallError(
      `nft ${action} failed: this kernel has no nf_tables support (is the 'nf_tables' module available?); ` +
        'use -backend=iptables -iptables-mode=legacy on such a host',
      'hard',
    );
  }
  // Another process's transaction got in between: the kernel asks to try again.
  const busy = /temporarily unavailable|Interrupted system call/i.test(stderr);
  return new FirewallError(`nft ${action} failed (exit ${exitCode}): ${stderrExcerpt(stderr) || 'no output'}`, busy ? 'busy' : 'hard');
}

const LIST_ARGS = ['-j', 'list', 'table', NFT_FAMILY, NFT_TABLE];
const listTable = (runner: CommandRunner, nft: string) => runner.run(nft, LIST_ARGS);

/** The table's dump from `nft -j list table`; empty when there is no table. */
function dumpOf(result: CommandResult): string {
  if (result.exitCode === 0) return result.stdout;
  // The one answer that means "no such table": nothing of ours is installed.
  if (/No such file or directory/.test(result.stderr)) return '';
  throw nftError('list', result.stderr, result.exitCode);
}

function openTable(runner: CommandRunner, nft: string): FirewallTable<NftState> {
  return {
    backend: 'nftables',
    families: [4, 6],
    label: LABEL,
    dialect: nftablesDialect,
    read: async () => dumpOf(await listTable(runner, nft)),
    // The transaction deletes and redefines the whole table in one kernel commit: once `nft -f` succeeds,
    // the table is exactly what was written, and reading it back (~9 ms for nft alone) would add nothing but
    // the case of an nft that prints our rules otherwise, which status shows and watch does not loop on.
    async write(transaction) {
      const result = await runner.run(nft, ['-f', '-'], { input: transaction });
      if (result.exitCode !== 0) throw nftError('-f', result.stderr, result.exitCode);
      return { holds: true };
    },
  };
}

export const nftablesProvider: BackendProvider = {
  kind: 'nftables',
  installed: () => findProgram('nft') !== undefined,
  async survey({ runner, reads }) {
    const nft = findProgram('nft');
    if (nft === undefined) return [];
    const listed = await reads.run(nft, LIST_ARGS);
    // A kernel without nf_tables leaves the backend as unusable as a missing nft: no table to read or write,
    // and nothing stopping iptables (legacy) from serving instead.
    if (listed.exitCode !== 0 && NO_NF_TABLES.test(listed.stderr)) return [];
    const table = openTable(runner, nft);
    const dump = dumpOf(listed);
    const state = nftablesDialect.parse(dump);
    const survey: TableSurvey<NftState> = { table, dump, state, holdsOurs: !nftablesDialect.isEmpty(state), holdsRules: dump !== '' };
    return [survey];
  },
  dryRun(config, version) {
    return (
      `# redirect-traffic ${version} --dry-run: nft -f input (${TABLE}, IPv4 and IPv6 in one transaction).\n` +
      nftablesDialect.transaction(nftablesDialect.wanted(undefined), nftablesDialect.wanted(config))
    );
  },
  dryRunRemoval: () => `# nft -f input\n${nftablesDialect.transaction(nftablesDialect.wanted(undefined), nftablesDialect.wanted(undefined))}`,
  async listen({ runner }, backend, onChange) {
    const nft = findProgram('nft');
    if (backend !== 'nftables' || nft === undefined) return undefined;
    return nftMonitor(runner, nft, [TABLE], onChange);
  },
};

/**
 * Our chains in iptables-nft's nat tables, as nft sees them (both are nf_tables), for families that no
 * iptables-nft program can read here; none without nft.
 */
export async function iptablesNftChainsSeen(reads: NamespaceReads, families: readonly Family[]): Promise<{ family: Family; chains: string[] }[]> {
  const nft = findProgram('nft');
  if (nft === undefined || families.length === 0) return [];
  const listed = await reads.run(nft, ['-j', 'list', 'chains']);
  return listed.exitCode === 0 ? iptablesNftChains(listed.stdout, families) : [];
}
