import { MissingProgramError } from '../errors.ts';
import type { RedirectConfig } from '../core/ruleset.ts';
import { redirectedFamilies } from '../core/ruleset.ts';
import { familyLabel } from '../core/values.ts';
import type { BackendKind, BackendName, TableSurvey } from '../host/backend.ts';
import { notFound, outsidePath } from '../host/runner.ts';
import type { HostOptions } from '../options.ts';
import type { Survey } from './context.ts';

// Deciding what to write where, from what the tables hold: pure, so every case is a unit test.

export interface BackendChoice {
  backend: BackendName;
  reason: string;
}

/** One table and the state it must end in. */
export interface TableStep {
  survey: TableSurvey;
  wanted: unknown;
  /** Added to this write's transaction: empties sweeps' chains in the same commit (Dialect.disarming). */
  disarming?: string;
  /** A sweep's chains are emptied by that write's transaction, if it writes. */
  disarmedBy?: TableStep;
}

export interface ApplyPlan {
  choice: BackendChoice;
  /** The chosen backend's tables, in order; if one fails, all written so far are rolled back. */
  writes: TableStep[];
  /** Our rules in any other backend, removed once the writes succeed: they would run too, and disagree. */
  sweeps: TableStep[];
}

const BACKENDS_OF: Record<BackendKind, readonly BackendName[]> = {
  iptables: ['iptables-nft', 'iptables-legacy'],
  nftables: ['nftables'],
};
export const kindOf = (backend: BackendName): BackendKind => (backend === 'nftables' ? 'nftables' : 'iptables');

const PACKAGE_HINT: Record<BackendKind, string> = {
  iptables: "install the 'iptables' package (on RHEL, 'iptables-legacy' for the legacy variant)",
  nftables: "install the 'nftables' package, or use -backend=iptables (-iptables-mode=legacy on a kernel without nf_tables)",
};

/**
 * Nothing to read and nothing to write with: neither backend's programs are installed; or not the backend
 * -backend names, whose tables then cannot be read (status would say "absent", cleanup "nothing to clean up").
 */
export function requireSomeBackend(surveys: readonly TableSurvey[], host: Pick<HostOptions, 'backend'>): void {
  if (surveys.length === 0) {
    throw notFound(
      'iptables (with iptables-save and iptables-restore) or nft',
      "install the 'iptables' package (RHEL/Fedora: iptables-nft) or the 'nftables' package",
      ['iptables', 'nft'],
    );
  }
  const forced = host.backend;
  if (forced !== 'auto' && !surveys.some((survey) => kindOf(survey.table.backend) === forced)) {
    throw new MissingProgramError(`${unusable(forced)}: ${PACKAGE_HINT[forced]}`);
  }
}

/**
 * Why rules of ours here cannot be read or removed, or undefined. The kind of backend (iptables or nftables)
 * the last apply wrote (`written`, from its record) must still be readable: its rules are in the kernel
 * whatever happened to its programs since, and unread, status would call them absent, cleanup would find
 * nothing, and an apply would put a second redirection beside them. (The kind only: iptables-legacy is
 * surveyed only where the kernel holds legacy tables, so a missing legacy survey can mean no rules at all.)
 * And chains of ours (or Consul's) that nft sees in iptables-nft's tables need an iptables-nft program.
 */
export function unreadableRules(survey: Pick<Survey, 'tables' | 'unmanageable'>, written: BackendName | undefined): string | undefined {
  const problems: string[] = [];
  if (written !== undefined && !survey.tables.some((table) => kindOf(table.table.backend) === kindOf(written))) {
    const kind = kindOf(written);
    problems.push(`the last apply here wrote its rules with ${written}, which cannot be read now: ${unusable(kind)}: install the '${kind}' package to read or remove them`);
  }
  if (survey.unmanageable.length > 0) {
    const held = survey.unmanageable.map(({ label, chains }) => `${label} holds ${chains.join(', ')}`).join('; ');
    problems.push(`${held} (Consul's classic rules, or ours), and no installed program can read or remove them: ${PACKAGE_HINT.iptables}`);
  }
  return problems.length === 0 ? undefined : problems.join('; ');
}

export function requireReadableRules(survey: Pick<Survey, 'tables' | 'unmanageable'>, written: BackendName | undefined): void {
  const problem = unreadableRules(survey, written);
  if (problem !== undefined) throw new MissingProgramError(problem);
}

const unusable = (kind: BackendKind) =>
  kind === 'nftables'
    ? `nftables is not usable here: nft is not installed or the kernel has no nf_tables${outsidePath(['nft'])}`
    : `iptables is not usable here: its programs (iptables, -save, -restore) are not installed${outsidePath(['iptables'])}`;

/**
 * The backend to write: a forced one (-backend, or -iptables-mode for iptables' variant), else the one
 * already holding our rules or Consul's (nftables when both do: an interrupted migration wrote it first),
 * else iptables where installed, picking its variant as Istio and Kuma do (the one holding any rules, else
 * the system default), else nftables.
 */
export function chooseBackend(
  surveys: readonly TableSurvey[],
  host: Pick<HostOptions, 'backend' | 'iptablesMode'>,
  systemDefault: BackendName | undefined,
): BackendChoice {
  if (host.backend === 'nftables') return { backend: 'nftables', reason: 'set by -backend' };
  const installed = new Set(surveys.map((s) => s.table.backend));
  const holding = (test: (s: TableSurvey) => boolean, among: readonly BackendName[]) =>
    among.filter((backend) => surveys.some((s) => s.table.backend === backend && test(s)));
  if (host.backend === 'auto' && host.iptablesMode === 'auto' && holding((s) => s.holdsOurs, ['nftables']).length > 0) {
    return { backend: 'nftables', reason: 'it holds the existing redirection table' };
  }
  if (host.iptablesMode !== 'auto') return { backend: `iptables-${host.iptablesMode}`, reason: 'set by -iptables-mode' };
  const variants = BACKENDS_OF.iptables.filter((backend) => installed.has(backend));
  if (variants.length === 0) {
    if (host.backend === 'iptables') return { backend: 'iptables-nft', reason: 'set by -backend' };
    return { backend: 'nftables', reason: 'iptables is not installed, nft is' };
  }
  const preferDefault = (candidates: BackendName[]) =>
    systemDefault !== undefined && candidates.includes(systemDefault) ? systemDefault : (candidates[0] ?? 'iptables-nft');
  const withOurs = holding((s) => s.holdsOurs, variants);
  if (withOurs.length > 0) return { backend: preferDefault(withOurs), reason: 'it holds the existing redirection chains' };
  const withRules = holding((s) => s.holdsRules, variants);
  if (withRules.length > 0) return { backend: preferDefault(withRules), reason: "it holds the host's other rules" };
  return { backend: preferDefault(variants), reason: 'it is the system default, or the only one installed' };
}

/** Host options that make chooseBackend pick `backend` again, whatever the tables then hold. */
export function pinBackend(host: HostOptions, backend: BackendName): HostOptions {
  const kind = kindOf(backend);
  const variant = kind === 'iptables' ? (backend.slice('iptables-'.length) as HostOptions['iptablesMode']) : host.iptablesMode;
  return { ...host, backend: kind, iptablesMode: variant };
}

/** Every table of the chosen backend gets `config`'s state (a family no longer asked for is emptied). */
export function planApply(surveys: readonly TableSurvey[], config: RedirectConfig, choice: BackendChoice): ApplyPlan {
  const chosen = surveys.filter((s) => s.table.backend === choice.backend);
  for (const family of redirectedFamilies(config)) {
    if (!chosen.some((s) => s.table.families.includes(family))) {
      // No nftables survey: nft is missing, or the kernel has no nf_tables (see the nftables provider).
      const missing =
        kindOf(choice.backend) === 'nftables'
          ? unusable('nftables')
          : `the ${familyLabel(family)} programs of ${choice.backend} (iptables, -save, -restore) are not installed${outsidePath(['iptables'])}`;
      throw new MissingProgramError(`${missing}: ${PACKAGE_HINT[kindOf(choice.backend)]}`);
    }
  }
  const sweeps: TableStep[] = surveys
    .filter((s) => s.table.backend !== choice.backend && s.holdsOurs)
    .map((survey) => ({ survey, wanted: survey.table.dialect.wanted(undefined) }));
  const writes: TableStep[] = chosen.map((survey) => ({ survey, wanted: survey.table.dialect.wanted(config) }));
  // nftables is written in one step, which can empty iptables-nft's chains of ours in the same commit.
  const [only] = writes;
  if (only !== undefined && writes.length === 1) {
    for (const sweep of sweeps) {
      const { table, state } = sweep.survey;
      const held = { backend: table.backend, families: table.families, chains: Object.keys(table.dialect.describe(state).chains) };
      const lines = only.survey.table.dialect.disarming?.([held]) ?? '';
      if (lines === '') continue;
      only.disarming = `${only.disarming ?? ''}${lines}`;
      sweep.disarmedBy = only;
    }
  }
  return { choice, writes, sweeps };
}

/**
 * What an apply by `plan` would change, one line per difference, each naming its table: every write that
 * changes something, and every other backend's rules it would sweep. Empty: the rules are in place. A table
 * with nothing of ours is one line ("no rules installed") unless `absentAsOneLine` is false: then it is what
 * the dialect says is missing (a repair's log names the chains or the table).
 */
export function planDifferences(plan: ApplyPlan, options: { absentAsOneLine?: boolean } = {}): string[] {
  const { absentAsOneLine = true } = options;
  const differences: string[] = [];
  for (const { survey, wanted } of plan.writes) {
    const { table } = survey;
    if (absentAsOneLine && table.dialect.isEmpty(survey.state) && !table.dialect.isEmpty(wanted)) differences.push(`${table.label}: no rules installed`);
    else if (!table.dialect.same(survey.state, wanted)) {
      differences.push(...table.dialect.differences(survey.state, wanted).map((line) => `${table.label}: ${line}`));
    }
  }
  for (const { survey } of plan.sweeps) differences.push(`${survey.table.label}: has rules, but ${plan.choice.backend} is the backend in use`);
  return differences;
}

/** Whether carrying out the plan changes anything: a table not as wanted, or another backend to sweep. */
export const planNeedsWrites = (plan: ApplyPlan): boolean =>
  plan.sweeps.length > 0 || plan.writes.some(({ survey, wanted }) => !survey.table.dialect.same(survey.state, wanted));

/** Every table holding our rules, in the backends `host` allows, emptied of them. */
export function planCleanup(surveys: readonly TableSurvey[], host: Pick<HostOptions, 'backend' | 'iptablesMode'>): TableStep[] {
  const allowed = (backend: BackendName) =>
    (host.backend === 'auto' || host.backend === kindOf(backend)) &&
    (host.iptablesMode === 'auto' || kindOf(backend) !== 'iptables' || backend === `iptables-${host.iptablesMode}`);
  return surveys
    .filter((s) => s.holdsOurs && allowed(s.table.backend))
    .map((survey) => ({ survey, wanted: survey.table.dialect.wanted(undefined) }));
}
