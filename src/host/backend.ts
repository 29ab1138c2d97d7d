import type { Dialect } from '../core/dialect.ts';
import type { RedirectConfig } from '../core/ruleset.ts';
import type { Family } from '../core/values.ts';
import { CliError } from '../errors.ts';
import type { ChangeFeed } from './monitor.ts';
import type { NamespaceReads } from './namespaceReads.ts';
import type { CommandRunner } from './runner.ts';

// The seam between the commands and the firewall: a backend is a set of tables, each written in one atomic
// transaction in the backend's own language (its Dialect). Commands see only these interfaces.

/** What `-backend` chooses between. */
export type BackendKind = 'iptables' | 'nftables';
/** A concrete backend: iptables' two variants, or native nftables. */
export type BackendName = 'iptables-nft' | 'iptables-legacy' | 'nftables';

/** One table a backend writes in one transaction: an iptables family's nat table, or the nftables inet table. */
export interface FirewallTable<State = unknown> {
  backend: BackendName;
  /** The address families whose packets its rules see. */
  families: readonly Family[];
  /** For messages: "iptables-nft IPv4", "nftables inet consul_tproxy". */
  label: string;
  dialect: Dialect<State>;
  /** The dump `dialect.parse` reads, without counters, so two reads of an unchanged table are equal. */
  read(): Promise<string>;
  /**
   * Writes `transaction`, which brings the table to `wanted`, and checks the write from the same process:
   * the table read back whole, or a verdict from a cheaper look. Undefined: not checked (read it back).
   */
  write(transaction: string, wanted: State): Promise<WriteCheck | undefined>;
}

/** What a write saw of its table right after writing: the whole dump, or whether the write holds. */
export type WriteCheck = { readBack: string } | { holds: boolean };

/** A table as read: its dump, our part of it, and whether anything of anyone's is in the backend. */
export interface TableSurvey<State = unknown> {
  table: FirewallTable<State>;
  dump: string;
  state: State;
  holdsOurs: boolean;
  /** Any rules at all, ours or not: where the host's firewall lives, for choosing a backend. */
  holdsRules: boolean;
}

/** How a backend reaches its tables. */
export interface TableAccess {
  /** Runs its programs, inside the target namespace when there is one. */
  runner: CommandRunner;
  /** Tells the operator what is being waited for (a lock held by another program), as it happens. */
  notify(message: string): void;
  /** Reads inside the namespace, batched with every other provider's into one process (host/namespaceReads.ts). */
  reads: NamespaceReads;
}

export interface BackendProvider {
  kind: BackendKind;
  /** Whether any of its programs are installed; asks the file system only. */
  installed(): boolean;
  /** Reads every table it has programs for; none when it is not installed. */
  survey(access: TableAccess): Promise<TableSurvey[]>;
  /** The transaction a host without our rules would get, with a header saying what reads it. Runs nothing. */
  dryRun(config: RedirectConfig, version: string): string;
  /** What a cleanup would write, when the tables cannot be read. Runs nothing. */
  dryRunRemoval(): string;
  /**
   * Starts hearing changes to `backend`'s tables as the kernel commits them, calling `onChange` for each.
   * Undefined when this provider does not serve `backend`, or cannot hear it (iptables-legacy produces no
   * events; nor does anything without nft installed): such tables are only polled.
   */
  listen(access: TableAccess, backend: BackendName, onChange: (event: string) => void): Promise<ChangeFeed | undefined>;
}

/**
 * A failed read or write: `lock` when a lock held by another program is the cause (try again), `busy`
 * when a concurrent transaction is (try again), `hard` otherwise (try again only from a changed table).
 */
export class FirewallError extends CliError {
  readonly reason: 'lock' | 'busy' | 'hard';
  constructor(message: string, reason: 'lock' | 'busy' | 'hard') {
    super(message, reason === 'hard' ? 'systemCommand' : 'temporary');
    this.reason = reason;
  }

  get retryable(): boolean {
    return this.reason !== 'hard';
  }
}

/** The first three non-empty lines of a program's stderr, on one line. */
export function stderrExcerpt(stderr: string): string {
  return stderr
    .split('\n')
    .map((line) => line.trim())
    .filter(Boolean)
    .slice(0, 3)
    .join(' | ');
}
