import { describe, expect, it } from 'vitest';
import { chooseBackend, planApply, planCleanup, requireReadableRules, requireSomeBackend } from '../../src/commands/plan.ts';
import type { Dialect } from '../../src/core/dialect.ts';
import { iptablesDialect } from '../../src/core/natTable.ts';
import { nftablesDialect } from '../../src/core/nftables.ts';
import type { Family } from '../../src/core/values.ts';
import { CliError, ExitCode } from '../../src/errors.ts';
import type { BackendName, TableSurvey } from '../../src/host/backend.ts';
import type { FirewallBackend, IptablesMode } from '../../src/options.ts';
import { redirectConfig } from '../helpers/fakes.ts';

// Choosing a backend and planning writes are pure: surveys in, a plan out. No process, no root.

/** The exit code of the error `attempt` throws; fails the test when it throws none. */
function exitCodeOf(attempt: () => unknown): number {
  try {
    attempt();
  } catch (error) {
    return (error as CliError).exitCode;
  }
  return expect.unreachable('it threw nothing');
}

const CONFIG = redirectConfig();
const DUAL = redirectConfig({ dualStack: true });

/** A table as a survey finds it; `holdsOurs` puts CONFIG's rules in it. Reads and writes are refused. */
function survey(backend: BackendName, family: Family | 'inet', has: { ours?: boolean; rules?: boolean } = {}): TableSurvey {
  const families: Family[] = family === 'inet' ? [4, 6] : [family];
  const dialect = (backend === 'nftables' ? nftablesDialect : iptablesDialect(family as Family)) as Dialect<unknown>;
  const state = dialect.wanted(has.ours ? { ...CONFIG, dualStack: family !== 4 } : undefined);
  return {
    table: {
      backend,
      families,
      label: backend === 'nftables' ? 'nftables inet consul_tproxy' : `${backend} IPv${family}`,
      dialect,
      read: () => Promise.reject(new Error('no reads in a plan')),
      write: () => Promise.reject(new Error('no writes in a plan')),
    },
    dump: '',
    state,
    holdsOurs: has.ours === true,
    holdsRules: has.rules === true || has.ours === true,
  };
}

/** Every backend installed, both families each. */
function all(holding: Partial<Record<BackendName, { ours?: boolean; rules?: boolean }>> = {}): TableSurvey[] {
  return [
    survey('iptables-nft', 4, holding['iptables-nft']),
    survey('iptables-nft', 6),
    survey('iptables-legacy', 4, holding['iptables-legacy']),
    survey('iptables-legacy', 6),
    survey('nftables', 'inet', holding['nftables']),
  ];
}

const host = (backend: FirewallBackend = 'auto', iptablesMode: IptablesMode = 'auto') => ({ backend, iptablesMode });

describe('chooseBackend', () => {
  it('auto keeps the iptables variant holding our rules, whatever the system default', () => {
    expect(chooseBackend(all({ 'iptables-legacy': { ours: true } }), host(), 'iptables-nft')).toEqual({
      backend: 'iptables-legacy',
      reason: 'it holds the existing redirection chains',
    });
    expect(chooseBackend(all({ 'iptables-nft': { ours: true } }), host(), 'iptables-legacy').backend).toBe('iptables-nft');
  });

  it('auto keeps nftables when it holds our table', () => {
    expect(chooseBackend(all({ nftables: { ours: true } }), host(), 'iptables-nft')).toEqual({
      backend: 'nftables',
      reason: 'it holds the existing redirection table',
    });
  });

  it('nftables when both nftables and iptables hold our rules (an interrupted migration wrote nftables first)', () => {
    const surveys = all({ nftables: { ours: true }, 'iptables-nft': { ours: true } });
    expect(chooseBackend(surveys, host(), 'iptables-nft').backend).toBe('nftables');
  });

  it('-iptables-mode forces that iptables variant, even over nftables holding our table', () => {
    const surveys = all({ nftables: { ours: true }, 'iptables-nft': { ours: true } });
    expect(chooseBackend(surveys, host('auto', 'legacy'), 'iptables-nft')).toEqual({ backend: 'iptables-legacy', reason: 'set by -iptables-mode' });
    expect(chooseBackend(surveys, host('iptables', 'nft'), 'iptables-legacy').backend).toBe('iptables-nft');
  });

  it('-backend=nftables forces nftables, even over iptables holding our rules', () => {
    expect(chooseBackend(all({ 'iptables-legacy': { ours: true } }), host('nftables'), 'iptables-legacy')).toEqual({
      backend: 'nftables',
      reason: 'set by -backend',
    });
  });

  it('-backend=iptables ignores our nftables table and keeps the variant holding our chains', () => {
    const surveys = all({ nftables: { ours: true }, 'iptables-legacy': { ours: true } });
    expect(chooseBackend(surveys, host('iptables'), 'iptables-nft').backend).toBe('iptables-legacy');
  });

  it("without our rules anywhere: the variant holding the host's other rules, else the system default", () => {
    expect(chooseBackend(all({ 'iptables-legacy': { rules: true } }), host(), 'iptables-nft')).toEqual({
      backend: 'iptables-legacy',
      reason: "it holds the host's other rules",
    });
    expect(chooseBackend(all(), host(), 'iptables-legacy').backend).toBe('iptables-legacy');
    expect(chooseBackend(all(), host(), 'iptables-nft').backend).toBe('iptables-nft');
    expect(chooseBackend(all(), host(), undefined).backend).toBe('iptables-nft');
  });

  it('nftables when iptables is not installed; -backend=iptables then still names iptables-nft', () => {
    const nftOnly = [survey('nftables', 'inet')];
    expect(chooseBackend(nftOnly, host(), undefined)).toEqual({ backend: 'nftables', reason: 'iptables is not installed, nft is' });
    expect(chooseBackend(nftOnly, host('iptables'), undefined).backend).toBe('iptables-nft');
  });
});

describe('requireReadableRules', () => {
  it('the backend the last apply wrote must still be readable, whichever variant; no record, no demand', () => {
    const iptablesOnly = { tables: [survey('iptables-nft', 4), survey('iptables-nft', 6)], unmanageable: [] };
    expect(exitCodeOf(() => requireReadableRules(iptablesOnly, 'nftables'))).toBe(ExitCode.missingProgram);
    expect(() => requireReadableRules(iptablesOnly, 'nftables')).toThrow(
      /^the last apply here wrote its rules with nftables, which cannot be read now: nftables is not usable here: .*install the 'nftables' package to read or remove them$/,
    );
    expect(() => requireReadableRules(iptablesOnly, 'iptables-legacy')).not.toThrow();
    expect(() => requireReadableRules(iptablesOnly, undefined)).not.toThrow();
    expect(exitCodeOf(() => requireReadableRules({ tables: [survey('nftables', 'inet')], unmanageable: [] }, 'iptables-nft'))).toBe(ExitCode.missingProgram);
    // Chains only nft sees in iptables-nft's tables: named, with the package.
    expect(() => requireReadableRules({ ...iptablesOnly, unmanageable: [{ label: 'iptables-nft IPv4', chains: ['CONSUL_PROXY_OUTPUT'] }] }, undefined)).toThrow(
      "iptables-nft IPv4 holds CONSUL_PROXY_OUTPUT (Consul's classic rules, or ours), and no installed program can read or remove them: install the 'iptables' package",
    );
  });
});

describe('planApply', () => {
  it("writes every table of the chosen backend (a family not asked for is emptied) and sweeps our rules from the others", () => {
    const surveys = all({ 'iptables-legacy': { ours: true }, nftables: { ours: true } });
    const plan = planApply(surveys, CONFIG, { backend: 'iptables-nft', reason: 'test' });
    expect(plan.writes.map((step) => step.survey.table.label)).toEqual(['iptables-nft IPv4', 'iptables-nft IPv6']);
    const [ipv4, ipv6] = plan.writes;
    expect(ipv4!.survey.table.dialect.isEmpty(ipv4!.wanted)).toBe(false);
    expect(ipv6!.survey.table.dialect.isEmpty(ipv6!.wanted)).toBe(true);
    expect(plan.sweeps.map((step) => step.survey.table.label)).toEqual(['iptables-legacy IPv4', 'nftables inet consul_tproxy']);
    for (const sweep of plan.sweeps) expect(sweep.survey.table.dialect.isEmpty(sweep.wanted)).toBe(true);
  });

  it("to nftables: the one transaction also empties iptables-nft's chains of ours (nf_tables chains), not iptables-legacy's", () => {
    const surveys = all({ 'iptables-nft': { ours: true }, 'iptables-legacy': { ours: true } });
    const plan = planApply(surveys, CONFIG, { backend: 'nftables', reason: 'test' });
    const [write] = plan.writes;
    expect(plan.writes).toHaveLength(1);
    const chains = ['CONSUL_PROXY_INBOUND', 'CONSUL_PROXY_IN_REDIRECT', 'CONSUL_PROXY_OUTPUT', 'CONSUL_PROXY_REDIRECT', 'CONSUL_DNS_REDIRECT'];
    expect(write!.disarming).toBe(
      `${['add table ip nat', ...chains.flatMap((chain) => [`add chain ip nat ${chain}`, `flush chain ip nat ${chain}`])].join('\n')}\n`,
    );
    const [nftSweep, legacySweep] = plan.sweeps;
    expect(nftSweep!.survey.table.label).toBe('iptables-nft IPv4');
    expect(nftSweep!.disarmedBy).toBe(write);
    expect(legacySweep!.survey.table.label).toBe('iptables-legacy IPv4');
    expect(legacySweep!.disarmedBy).toBeUndefined();
    // Back to iptables: no backend shares the iptables transaction's tables.
    const back = planApply(all({ nftables: { ours: true } }), CONFIG, { backend: 'iptables-nft', reason: 'test' });
    expect(back.writes.map((step) => step.disarming)).toEqual([undefined, undefined]);
  });

  it('with -dual-stack, both families of the chosen backend get rules', () => {
    const plan = planApply(all(), DUAL, { backend: 'iptables-legacy', reason: 'test' });
    expect(plan.writes.map((step) => step.survey.table.dialect.isEmpty(step.wanted))).toEqual([false, false]);
    expect(plan.sweeps).toEqual([]);
  });

  it("missing IPv6 programs of the chosen variant: exit 72, naming the programs and the 'iptables' package", () => {
    const ipv4Only = [survey('iptables-nft', 4), survey('nftables', 'inet')];
    expect(planApply(ipv4Only, CONFIG, { backend: 'iptables-nft', reason: 'test' }).writes).toHaveLength(1);
    const attempt = () => planApply(ipv4Only, DUAL, { backend: 'iptables-nft', reason: 'test' });
    expect(attempt).toThrow(CliError);
    expect(attempt).toThrow(
      "the IPv6 programs of iptables-nft (iptables, -save, -restore) are not installed: install the 'iptables' package (on RHEL, 'iptables-legacy' for the legacy variant)",
    );
    expect(exitCodeOf(attempt)).toBe(ExitCode.missingProgram);
  });

  it("nftables chosen but nft missing: exit 72, naming the 'nftables' package", () => {
    const attempt = () => planApply([survey('iptables-nft', 4)], CONFIG, { backend: 'nftables', reason: 'set by -backend' });
    expect(attempt).toThrow(
      "nftables is not usable here: nft is not installed or the kernel has no nf_tables: install the 'nftables' package, or use -backend=iptables (-iptables-mode=legacy on a kernel without nf_tables)",
    );
    expect(exitCodeOf(attempt)).toBe(ExitCode.missingProgram);
  });

  it('neither backend installed: exit 72, naming both packages', () => {
    const auto = { backend: 'auto' } as const;
    expect(() => requireSomeBackend([], auto)).toThrow(/install the 'iptables' package .* or the 'nftables' package/);
    expect(exitCodeOf(() => requireSomeBackend([], auto))).toBe(ExitCode.missingProgram);
    expect(() => requireSomeBackend([survey('nftables', 'inet')], auto)).not.toThrow();
  });

  // Else status said "absent" and cleanup "nothing to clean up" of a table they could not read.
  it('the backend -backend names not usable: exit 72, naming its package', () => {
    const ipv4 = [survey('iptables-nft', 4)];
    expect(() => requireSomeBackend(ipv4, { backend: 'nftables' })).toThrow(/^nftables is not usable here: .*install the 'nftables' package/);
    expect(exitCodeOf(() => requireSomeBackend(ipv4, { backend: 'nftables' }))).toBe(ExitCode.missingProgram);
    expect(() => requireSomeBackend([survey('nftables', 'inet')], { backend: 'iptables' })).toThrow(/install the 'iptables' package/);
    expect(() => requireSomeBackend(ipv4, { backend: 'iptables' })).not.toThrow();
  });
});

describe('planCleanup', () => {
  const holding = () => all({ 'iptables-nft': { ours: true }, 'iptables-legacy': { ours: true }, nftables: { ours: true } });
  const labels = (steps: ReturnType<typeof planCleanup>) => steps.map((step) => step.survey.table.label);

  it('empties every table holding our rules, and only those', () => {
    expect(labels(planCleanup(holding(), host()))).toEqual(['iptables-nft IPv4', 'iptables-legacy IPv4', 'nftables inet consul_tproxy']);
    expect(labels(planCleanup(all({ 'iptables-legacy': { rules: true } }), host()))).toEqual([]);
    for (const step of planCleanup(holding(), host())) expect(step.survey.table.dialect.isEmpty(step.wanted)).toBe(true);
  });

  it('-backend and -iptables-mode limit it to those backends', () => {
    expect(labels(planCleanup(holding(), host('nftables')))).toEqual(['nftables inet consul_tproxy']);
    expect(labels(planCleanup(holding(), host('iptables')))).toEqual(['iptables-nft IPv4', 'iptables-legacy IPv4']);
    expect(labels(planCleanup(holding(), host('auto', 'legacy')))).toEqual(['iptables-legacy IPv4', 'nftables inet consul_tproxy']);
    expect(labels(planCleanup(holding(), host('iptables', 'nft')))).toEqual(['iptables-nft IPv4']);
  });
});
