import { readFileSync } from 'node:fs';
import { isEmptyState, ownedState, parseNatTable, type OwnedState } from '../core/natTable.ts';
import type { Family } from '../core/values.ts';
import { BACKENDS, openTable, systemDefaultBackend, type BackendName, type IptablesTable } from './iptables.ts';
import type { IptablesMode } from '../options.ts';
import type { CommandRunner } from './runner.ts';

/** One backend's view of one family: everything it holds, and what of that is ours. */
export interface TableSurvey {
  table: IptablesTable;
  /** Full `iptables-save` of the tables the kernel has; its nat part is the state an apply starts from. */
  dump: string;
  owned: OwnedState;
  holdsOurs: boolean;
  holdsRules: boolean;
}

const FAMILIES: readonly Family[] = [4, 6];

// iptables-legacy lists loaded tables here; reading it costs no process and loads no module.
function legacyTablesLoaded(family: Family): boolean {
  try {
    return readFileSync(family === 4 ? '/proc/net/ip_tables_names' : '/proc/net/ip6_tables_names', 'utf8').trim() !== '';
  } catch {
    return false;
  }
}

/**
 * Reads every installed backend and family. A plain save (no `-t`) dumps only tables that already exist,
 * so surveying never instantiates a legacy table. iptables-legacy is read only when the kernel holds
 * legacy tables of that family: this process sees that in /proc/net; inside another namespace,
 * iptables-nft-save says so (and without iptables-nft, legacy is read anyway).
 */
export async function surveyTables(runner: CommandRunner, inNetns: boolean): Promise<TableSurvey[]> {
  const open = (backend: BackendName) => FAMILIES.flatMap((family) => openTable(runner, backend, family) ?? []);
  const nftSaves = new Map(open('nft').map((table) => [table.family, { table, saved: table.saveAll() }]));
  const legacyHoldsTables = async (family: Family) => {
    if (!inNetns) return legacyTablesLoaded(family);
    const nft = nftSaves.get(family);
    return nft === undefined || (await nft.saved).legacyTablesPresent;
  };
  const dumps = [
    ...[...nftSaves.values()].map(({ table, saved }) => ({ table, dump: saved.then((save) => save.dump) })),
    ...open('legacy').map((table) => ({
      table,
      dump: legacyHoldsTables(table.family).then(async (held) => (held ? (await table.saveAll()).dump : '')),
    })),
  ];
  return Promise.all(
    dumps.map(async ({ table, dump: dumping }) => {
      const dump = await dumping;
      const owned = ownedState(parseNatTable(dump));
      return { table, dump, owned, holdsOurs: !isEmptyState(owned), holdsRules: /^-A /m.test(dump) };
    }),
  );
}

export interface BackendChoice {
  backend: BackendName;
  reason: string;
}

/**
 * The backend that already holds our chains, else the one holding any rules, else the system default
 * (what plain `iptables` is), as Istio and Kuma decide. A forced mode wins. Surveys must not be empty.
 */
export function chooseBackend(
  surveys: readonly TableSurvey[],
  mode: IptablesMode,
  systemDefault: BackendName | undefined = systemDefaultBackend(),
): BackendChoice {
  if (mode !== 'auto') return { backend: mode, reason: 'set by -iptables-mode' };
  const installed = BACKENDS.filter((backend) => surveys.some((s) => s.table.backend === backend));
  const preferDefault = (candidates: BackendName[]) =>
    systemDefault !== undefined && candidates.includes(systemDefault) ? systemDefault : (candidates[0] ?? 'nft');
  const holding = (test: (s: TableSurvey) => boolean) =>
    installed.filter((backend) => surveys.some((s) => s.table.backend === backend && test(s)));
  const withOurs = holding((s) => s.holdsOurs);
  if (withOurs.length > 0) return { backend: preferDefault(withOurs), reason: 'it holds the existing redirection chains' };
  const withRules = holding((s) => s.holdsRules);
  if (withRules.length > 0) return { backend: preferDefault(withRules), reason: "it holds the host's other rules" };
  return { backend: preferDefault(installed), reason: 'it is the system default, or the only one installed' };
}
