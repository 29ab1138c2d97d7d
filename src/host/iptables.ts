import { readFileSync, realpathSync, statSync } from 'node:fs';
import { listsTables } from '../core/procNet.ts';
import { EMPTY_STATE, iptablesDialect, jumpsMatch, listedJumps, renderTransaction, HOOK_CHAINS, type OwnedState } from '../core/natTable.ts';
import { OWNED_CHAINS, redirectedFamilies } from '../core/ruleset.ts';
import { referencesIptablesCannotShow } from '../core/nftables.ts';
import { familyLabel, type Family } from '../core/values.ts';
import { FirewallError, stderrExcerpt, type BackendProvider, type FirewallTable, type TableSurvey } from './backend.ts';
import { nftMonitor } from './monitor.ts';
import type { NamespaceReads } from './namespaceReads.ts';
import { findProgram, type CommandRunner } from './runner.ts';

// The iptables backend, in both its variants: one nat table per family, each written with one
// `iptables-restore --noflush` transaction.

type Variant = 'nft' | 'legacy';
const VARIANTS: readonly Variant[] = ['nft', 'legacy'];
const FAMILIES: readonly Family[] = [4, 6];

/** How long iptables-legacy may wait for the xtables lock held by Docker, kube-proxy or a second run. */
export const XTABLES_LOCK_WAIT_SECONDS = 10;

/** Up to this many rules the whole table is read back to check a write; beyond it, the hook chains only. */
const FULL_CHECK_MAX_RULES = 500;

const toolPrefix = (family: Family) => (family === 4 ? 'iptables' : 'ip6tables');

/** Which variant a multi-call binary is, judged by the file a plain `iptables-save` links to. */
function variantOfProgram(path: string): Variant | undefined {
  let target: string;
  try {
    // The native call: plain realpathSync walks each component in JavaScript (~1 ms more on a cold start).
    target = realpathSync.native(path);
  } catch {
    return undefined;
  }
  if (target.includes('legacy')) return 'legacy';
  if (target.includes('nft')) return 'nft';
  return undefined;
}

function findTool(variant: Variant, family: Family, action: '' | '-save' | '-restore'): string | undefined {
  const suffixed = findProgram(`${toolPrefix(family)}-${variant}${action}`);
  if (suffixed) return suffixed;
  // RHEL 8 ships only unsuffixed binaries; accept them when they are this variant.
  const plain = findProgram(`${toolPrefix(family)}${action}`);
  return plain && variantOfProgram(plain) === variant ? plain : undefined;
}

/** The variant a plain `iptables` command uses on this host: the system default. */
export function systemDefaultVariant(): `iptables-${Variant}` | undefined {
  const plain = findProgram('iptables');
  const variant = plain ? variantOfProgram(plain) : undefined;
  return variant && `iptables-${variant}`;
}

/** An iptables nat table, plus the full save that tells where the host's rules are. */
interface IptablesTable extends FirewallTable<OwnedState> {
  /** `iptables-save` of every table the kernel already has (none is created by asking), through `reads`. */
  saveAll(reads: NamespaceReads): Promise<string>;
}

// Chain counters change with traffic and mean nothing to us: without them, two reads of an unchanged table are equal.
const withoutCounters = (dump: string) => dump.replace(/ \[\d+:\d+\]$/gm, '');

/** The programs for a variant and family, or undefined when not installed. */
function openTable(runner: CommandRunner, variant: Variant, family: Family, notify: (message: string) => void): IptablesTable | undefined {
  const program = findTool(variant, family, '');
  const saveProgram = findTool(variant, family, '-save');
  const restoreProgram = findTool(variant, family, '-restore');
  if (!program || !saveProgram || !restoreProgram) return undefined;
  const name = `${toolPrefix(family)}-${variant}`;
  // Only the legacy variant takes the xtables lock; nft transactions are atomic in the kernel.
  const wait = variant === 'legacy' ? ['--wait', String(XTABLES_LOCK_WAIT_SECONDS)] : [];
  const lockTimeoutMs = (XTABLES_LOCK_WAIT_SECONDS + 20) * 1000;
  // iptables-legacy waits for the xtables lock in silence: if a call is still running after a second,
  // say who holds the lock (if anyone does), once per call.
  const lockWatched = async <T>(call: () => Promise<T>): Promise<T> => {
    if (variant !== 'legacy') return call();
    const timer = setTimeout(() => {
      const holder = xtablesLockHolder();
      if (holder) notify(`${name} is waiting up to ${XTABLES_LOCK_WAIT_SECONDS}s for the xtables lock (${XTABLES_LOCK}), held by ${holder}`);
    }, LOCK_NOTICE_MS);
    try {
      return await call();
    } finally {
      clearTimeout(timer);
    }
  };
  const save = async (args: string[]) => {
    const result = await runner.run(saveProgram, args);
    if (result.exitCode !== 0) throw tableError(`${name}-save`, result.stderr, result.exitCode);
    return result;
  };
  return {
    backend: `iptables-${variant}`,
    families: [family],
    label: `iptables-${variant} ${familyLabel(family)}`,
    dialect: iptablesDialect(family),
    async read() {
      return withoutCounters((await save(['-t', 'nat'])).stdout);
    },
    async saveAll(reads) {
      const result = await reads.run(saveProgram, []);
      if (result.exitCode !== 0) throw tableError(`${name}-save`, result.stderr, result.exitCode);
      return withoutCounters(result.stdout);
    },
    // The check runs right after the restore, in the same shell (host/runner.ts). Up to FULL_CHECK_MAX_RULES
    // rules, the whole table is read back. Beyond, reading thousands of rules back costs as much as writing
    // them: the transaction declares (so flushes) and refills our chains in one atomic commit, so they always
    // hold one writer's complete rules, and what a race with another writer leaves wrong shows in the hook
    // chains (two writers that both read "no jump" each add one), which are listed instead.
    async write(transaction, wanted) {
      // One time limit for the restore and its check together, as the units' start limit counts on.
      const deadline = Date.now() + lockTimeoutMs;
      const restored = await lockWatched(() => runner.run(restoreProgram, ['--noflush', ...wait], { input: transaction, timeoutMs: lockTimeoutMs }));
      if (restored.exitCode !== 0) {
        const refusal = BUSY.test(restored.stderr) && variant === 'nft' ? await hiddenReferences(runner, family) : undefined;
        throw tableError(`${name}-restore`, restored.stderr, restored.exitCode, refusal);
      }
      const full = wanted.chainRules.length <= FULL_CHECK_MAX_RULES;
      const checks: [string, string[]][] = full
        ? [[saveProgram, ['-t', 'nat']]]
        : HOOK_CHAINS.map((chain) => [program, [...wait, '-t', 'nat', '-S', chain]]);
      const listed = await Promise.all(
        checks.map(([file, args]) =>
          runner
            .run(file, args, { timeoutMs: Math.max(1, deadline - Date.now()) })
            .then((result) => (result.exitCode === 0 ? result.stdout : undefined), () => undefined),
        ),
      );
      const [first, ...rest] = listed;
      // A read that failed after a write that succeeded: reconcile reads the table again.
      if (first === undefined || rest.includes(undefined)) return undefined;
      return full ? { readBack: withoutCounters(first) } : { holds: jumpsMatch(listedJumps([first, ...(rest as string[])]), wanted) };
    },
  };
}

/** The lock iptables-legacy takes; a holder (Docker, kube-proxy, firewalld) can keep it for seconds. */
const XTABLES_LOCK = '/run/xtables.lock';
const LOCK_NOTICE_MS = 1000;

/** Who holds the xtables lock, from the kernel's list of file locks: "pid N (command)", or undefined. */
function xtablesLockHolder(): string | undefined {
  try {
    const { ino } = statSync(XTABLES_LOCK);
    // "1: FLOCK  ADVISORY  WRITE 14840 fe:00:16638007 0 EOF": pid, then device:inode.
    const line = readFileSync('/proc/locks', 'utf8')
      .split('\n')
      .find((entry) => entry.split(/\s+/)[5]?.endsWith(`:${ino}`));
    const pid = line?.split(/\s+/)[4];
    if (pid === undefined) return undefined;
    let command = '';
    try {
      command = ` (${readFileSync(`/proc/${pid}/comm`, 'utf8').trim()})`;
    } catch {
      // gone already, or in another pid namespace
    }
    return `pid ${pid}${command}`;
  } catch {
    return undefined;
  }
}

const BUSY = /Device or resource busy/i;

/**
 * The chains of ours that something iptables cannot show refers to (a jump in a verdict map), as nft sees
 * this family's nat table; undefined where nft cannot tell.
 */
async function hiddenReferences(runner: CommandRunner, family: Family): Promise<string[] | undefined> {
  const nft = findProgram('nft');
  if (nft === undefined) return undefined;
  const listed = await runner.run(nft, ['-j', 'list', 'table', family === 4 ? 'ip' : 'ip6', 'nat']).catch(() => undefined);
  return listed?.exitCode === 0 ? referencesIptablesCannotShow(listed.stdout) : undefined;
}

/**
 * A failed save or restore. The xtables lock is a reason to try again; exit status 4 alone is not
 * (iptables-nft-restore also exits 4 when the kernel refuses a change). A chain the kernel would not delete
 * (busy) is still referenced: by something iptables cannot show (a verdict map: a refusal, `hiddenReferences`
 * names it), or, where nft sees no such thing, by a rule another writer added since our read (try again).
 */
function tableError(program: string, stderr: string, exitCode: number, hiddenReferences?: string[]): FirewallError {
  const detail = stderrExcerpt(stderr);
  const lock = /xtables lock|Resource temporarily unavailable/i.test(stderr);
  const module = /Table does not exist|can't initialize|do you need to insmod|Protocol not supported/i.test(stderr);
  const busy = BUSY.test(stderr);
  const raced = busy && hiddenReferences !== undefined && hiddenReferences.length === 0;
  const hint = module
    ? " (the kernel lacks this table's module: is 'iptable_nat'/'nf_tables' available?)"
    : raced
      ? ' (a rule jumping into one of our chains appeared since it was read: another writer at work)'
      : busy
        ? ` (the kernel refused: something iptables cannot show, such as a native nftables rule or verdict map, still refers to ${hiddenReferences?.length ? hiddenReferences.join(', ') : 'one of our chains'})`
        : '';
  return new FirewallError(`${program} failed (exit ${exitCode}): ${detail || 'no output'}${hint}`, lock ? 'lock' : raced ? 'busy' : 'hard');
}

function surveyOf(table: IptablesTable, dump: string): TableSurvey<OwnedState> {
  const state = table.dialect.parse(dump);
  return { table, dump, state, holdsOurs: !table.dialect.isEmpty(state), holdsRules: /^-A /m.test(dump) };
}

export const iptablesProvider: BackendProvider = {
  kind: 'iptables',
  installed: () => VARIANTS.some((variant) => FAMILIES.some((family) => findTool(variant, family, '-restore') !== undefined)),
  /**
   * Reads every installed variant and family. A plain save (no `-t`) dumps only tables that already exist, so
   * surveying never instantiates one. iptables-legacy is read only when the kernel lists legacy tables of that
   * family (/proc/net inside the namespace).
   */
  async survey({ runner, notify, reads }) {
    const open = (variant: Variant) => FAMILIES.flatMap((family) => openTable(runner, variant, family, notify) ?? []);
    const legacy = open('legacy');
    // Asked for only where a legacy table could be read, and always awaited (a failed read must not go unobserved).
    const legacyListed = legacy.map((table) => reads.file(table.families[0] === 6 ? '/proc/net/ip6_tables_names' : '/proc/net/ip_tables_names'));
    return Promise.all([
      ...open('nft').map(async (table) => surveyOf(table, await table.saveAll(reads))),
      ...legacy.map(async (table, index) => surveyOf(table, listsTables(await legacyListed[index]!) ? await table.saveAll(reads) : '')),
    ]);
  },
  dryRun(config, version) {
    return redirectedFamilies(config)
      .map((family) => {
        const tool = family === 4 ? 'iptables-restore' : 'ip6tables-restore';
        return (
          `# redirect-traffic ${version} --dry-run: ${tool} --noflush input (${familyLabel(family)}).\n` +
          '# On a host that already has these chains, the jumps found in PREROUTING/OUTPUT are also deleted (-D).\n' +
          renderTransaction(EMPTY_STATE, iptablesDialect(family).wanted(config))
        );
      })
      .join('\n');
  },
  dryRunRemoval: () =>
    `# iptables-restore --noflush input, for each backend and family holding the chains\n${renderTransaction({ ...EMPTY_STATE, chains: OWNED_CHAINS }, EMPTY_STATE)}`,
  /**
   * iptables-nft's nat tables are nf_tables tables (`ip nat`, `ip6 nat`): `nft monitor` reports their
   * changes, when nft is installed. iptables-legacy's changes are reported nowhere: polled only.
   */
  async listen({ runner }, backend, onChange) {
    const nft = findProgram('nft');
    if (backend !== 'iptables-nft' || nft === undefined) return undefined;
    return nftMonitor(runner, nft, ['ip nat', 'ip6 nat'], onChange);
  },
};
