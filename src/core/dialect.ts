import type { RedirectConfig } from './ruleset.ts';
import type { Family } from './values.ts';

// What a firewall backend knows about its own language, as pure functions: the state it wants, the state
// a dump shows, how they compare, and the one transaction that turns one into the other. The host side
// (host/backend.ts) only reads dumps and writes transactions.

/** What of ours one table holds, for `status` and `--json`. */
export interface TableSummary {
  /** Each of our chains and how many rules it holds. */
  chains: Record<string, number>;
  /** The rules that hook our chains in, in the backend's own spelling. */
  hooks: string[];
  /** How many rules of ours, each counted once: in nftables the hooks are rules of our own base chains. */
  rules: number;
  /** Named sets and how many elements each holds (nftables only). */
  sets?: Record<string, number>;
  /** Why the table holding ours could not be read (nftables only): then nothing else of it is known. */
  unreadable?: string;
}

/** Chains of ours another backend (named as "iptables-nft") holds, for Dialect.disarming. */
export interface HeldElsewhere {
  backend: string;
  families: readonly Family[];
  chains: readonly string[];
}

export interface Dialect<State> {
  /** What the table must hold for `config`; `undefined`: nothing of ours. */
  wanted(config: RedirectConfig | undefined): State;
  /** Our part of a dump as the backend prints it. */
  parse(dump: string): State;
  isEmpty(state: State): boolean;
  /** True when `installed` is exactly `wanted`. */
  same(installed: State, wanted: State): boolean;
  /** Why `installed` is not `wanted`, one line each, prefixed with nothing (the caller names the table). */
  differences(installed: State, wanted: State): string[];
  /** One atomic transaction, in the backend's input language, that turns `installed` into `wanted`. */
  transaction(installed: State, wanted: State): string;
  /**
   * What of someone else's the transaction deletes, spelled for a message: in iptables, rules that jump into
   * chains that must go (they would block removing them); in nftables, whatever else our table held.
   */
  foreignRulesRemoved(installed: State, wanted: State): string[];
  describe(state: State): TableSummary;
  /**
   * Lines for this backend's transaction that empty, in the same kernel commit, chains of ours that another
   * backend holds in kernel tables this one can write too (iptables-nft's chains are nf_tables chains). A
   * switch of backend then never has both redirecting, even if the run dies before it sweeps the old ones.
   * Empty where there are none; absent in a backend that shares no tables with another.
   */
  disarming?(elsewhere: readonly HeldElsewhere[]): string;
}
