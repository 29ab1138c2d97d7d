import { realpathSync } from 'node:fs';
import { CliError, ExitCode } from '../errors.ts';
import type { Family } from '../core/values.ts';
import { findProgram, MissingProgramError, type CommandRunner } from './runner.ts';

export type BackendName = 'legacy' | 'nft';
export const BACKENDS: readonly BackendName[] = ['nft', 'legacy'];

/** How long iptables-legacy may wait for the xtables lock held by Docker, kube-proxy or a second run. */
export const XTABLES_LOCK_WAIT_SECONDS = 10;

/** One backend's nat table for one address family. */
export interface IptablesTable {
  backend: BackendName;
  family: Family;
  /** `iptables-save` of the nat table. */
  saveNat(): Promise<string>;
  /**
   * `iptables-save` of every table the kernel already has (none is created by asking). For the nft backend,
   * also whether it warned that iptables-legacy holds tables of this family: iptables-nft-save looks in
   * /proc/net inside the namespace, which this process cannot.
   */
  saveAll(): Promise<{ dump: string; legacyTablesPresent: boolean }>;
  restore(input: string): Promise<void>;
  /** One nat chain's rules as `iptables -S` prints them: in iptables-save's spelling, without the rest of the table. */
  listRules(chain: string): Promise<string>;
}

export const familyLabel = (family: Family) => (family === 4 ? 'IPv4' : 'IPv6');
const toolPrefix = (family: Family) => (family === 4 ? 'iptables' : 'ip6tables');

/** Which backend a multi-call binary is, judged by the file a plain `iptables-save` links to. */
function backendOfProgram(path: string): BackendName | undefined {
  let target: string;
  try {
    target = realpathSync(path);
  } catch {
    return undefined;
  }
  if (target.includes('legacy')) return 'legacy';
  if (target.includes('nft')) return 'nft';
  return undefined;
}

function findTool(backend: BackendName, family: Family, action: '' | '-save' | '-restore'): string | undefined {
  const suffixed = findProgram(`${toolPrefix(family)}-${backend}${action}`);
  if (suffixed) return suffixed;
  // RHEL 8 ships only unsuffixed binaries; accept them when they are this backend.
  const plain = findProgram(`${toolPrefix(family)}${action}`);
  return plain && backendOfProgram(plain) === backend ? plain : undefined;
}

/** The programs for a backend and family, or undefined when not installed. */
export function openTable(runner: CommandRunner, backend: BackendName, family: Family): IptablesTable | undefined {
  const program = findTool(backend, family, '');
  const saveProgram = findTool(backend, family, '-save');
  const restoreProgram = findTool(backend, family, '-restore');
  if (!program || !saveProgram || !restoreProgram) return undefined;
  const name = `${toolPrefix(family)}-${backend}`;
  // Only the legacy backend takes the xtables lock; nft transactions are atomic in the kernel.
  const wait = backend === 'legacy' ? ['--wait', String(XTABLES_LOCK_WAIT_SECONDS)] : [];
  const lockTimeoutMs = (XTABLES_LOCK_WAIT_SECONDS + 20) * 1000;
  const save = async (args: string[]) => {
    const result = await runner.run(saveProgram, args);
    if (result.exitCode !== 0) throw tableError(`${name}-save`, result.stderr, result.exitCode);
    return result;
  };
  return {
    backend,
    family,
    async saveNat() {
      return (await save(['-t', 'nat'])).stdout;
    },
    async saveAll() {
      const { stdout, stderr } = await save([]);
      // "# Warning: iptables-legacy tables present, ..." (ip6tables-legacy for IPv6)
      return { dump: stdout, legacyTablesPresent: /ip6?tables-legacy tables present/.test(stderr) };
    },
    async restore(input) {
      const result = await runner.run(restoreProgram, ['--noflush', ...wait], { input, timeoutMs: lockTimeoutMs });
      if (result.exitCode !== 0) throw tableError(`${name}-restore`, result.stderr, result.exitCode);
    },
    async listRules(chain) {
      const result = await runner.run(program, [...wait, '-t', 'nat', '-S', chain], { timeoutMs: lockTimeoutMs });
      if (result.exitCode !== 0) throw tableError(name, result.stderr, result.exitCode);
      return result.stdout;
    },
  };
}

/** A failed save or restore; `retryable` when another writer or the lock is the likely cause. */
export class IptablesError extends CliError {
  readonly retryable: boolean;
  constructor(message: string, retryable: boolean) {
    super(message, retryable ? ExitCode.tempFail : ExitCode.systemCommand);
    this.retryable = retryable;
  }
}

function tableError(program: string, stderr: string, exitCode: number): IptablesError {
  const detail = stderr
    .split('\n')
    .map((line) => line.trim())
    .filter(Boolean)
    .slice(0, 3)
    .join(' | ');
  const lock = /xtables lock|Resource temporarily unavailable/i.test(stderr) || exitCode === 4;
  const module = /Table does not exist|can't initialize|do you need to insmod|Protocol not supported/i.test(stderr);
  const hint = module ? " (the kernel lacks this table's module: is 'iptable_nat'/'nf_tables' available?)" : '';
  return new IptablesError(`${program} failed (exit ${exitCode}): ${detail || 'no output'}${hint}`, lock);
}

/** The backend a plain `iptables` command uses on this host: the system default. */
export function systemDefaultBackend(): BackendName | undefined {
  const plain = findProgram('iptables');
  return plain ? backendOfProgram(plain) : undefined;
}

export function requireSomeBackend(tables: readonly (IptablesTable | undefined)[]): void {
  if (tables.every((table) => table === undefined)) {
    throw new MissingProgramError(
      'iptables (with iptables-save and iptables-restore)',
      "install the 'iptables' package (Debian/Ubuntu: apt-get install iptables; RHEL/Fedora: dnf install iptables-nft)",
    );
  }
}
