import { describe, expect, it, vi } from 'vitest';
import type { Backends } from '../../src/commands/context.ts';
import { iptablesDialect } from '../../src/core/natTable.ts';
import type { BackendProvider, FirewallTable, TableSurvey } from '../../src/host/backend.ts';
import { ExitCode } from '../../src/errors.ts';
import { captureOutput, fakeRunner, redirectConfig } from '../helpers/fakes.ts';

// -backend=nftables on a host without nft: the error names the package to install. The CLI runs in-process
// with fake backends (only iptables installed, or nothing at all), as root would see them: /proc/self/status is
// replaced by one with CAP_NET_ADMIN, so this runs unprivileged as well.
vi.mock('node:fs', async (importOriginal) => {
  const fs = await importOriginal<typeof import('node:fs')>();
  const readFileSync = ((path: unknown, ...rest: unknown[]) =>
    path === '/proc/self/status' ? 'Name:\tnode\nUid:\t0\t0\t0\t0\nCapEff:\t000001ffffffffff\n' : Reflect.apply(fs.readFileSync, fs, [path, ...rest])) as typeof fs.readFileSync;
  const patched = { ...fs, readFileSync };
  return { ...patched, default: patched };
});

/** An iptables-nft nat table of one family: iptables is installed, and holds nothing (or, `holding`, our rules). */
function iptablesSurvey(family: 4 | 6, holding = false): TableSurvey {
  const table: FirewallTable = {
    backend: 'iptables-nft',
    families: [family],
    label: `iptables-nft IPv${family}`,
    dialect: iptablesDialect(family) as FirewallTable['dialect'],
    read: async () => '',
    write: async () => {
      throw new Error('fake table: nothing may be written in this test');
    },
  };
  const state = holding ? table.dialect.wanted(redirectConfig({ dualStack: true })) : table.dialect.parse('');
  return { table, dump: '', state, holdsOurs: holding, holdsRules: holding };
}

function fakeBackends(surveys: TableSurvey[]): Backends {
  const unused = (): BackendProvider => {
    throw new Error('fake backends: no dry run in this test');
  };
  return {
    survey: async () => ({ tables: surveys, globalIpv6: false, unmanageable: [] }),
    systemDefault: () => 'iptables-nft',
    dryRunProvider: unused,
    dryRunRemovals: () => [],
    listen: async () => undefined,
  };
}

async function runWith(argv: string[], surveys: TableSurvey[]) {
  const captured = captureOutput();
  const runner = fakeRunner();
  const { run } = await import('../../src/main.ts');
  const code = await run(argv, {
    output: captured.output,
    env: {},
    runner: runner.factory,
    backends: fakeBackends(surveys),
    lockNamespace: async () => ({ release: () => undefined }),
    fetchProxyPorts: async () => {
      throw new Error('fake agent: no agent in unit tests');
    },
  });
  return { code, stdout: captured.stdout(), stderrLines: captured.stderrLines(), runner };
}

// -dual-stack: no look for a global IPv6 address (which would start `ip`); the fake runner allows no process.
const FLAGS = ['-proxy-uid=101', '-proxy-inbound-port=20000', '-dual-stack', '-backend=nftables'];

describe('-backend=nftables without nft installed', () => {
  it.each([
    ['apply on a clean host', FLAGS, false],
    ['apply over our iptables rules', FLAGS, true],
    // A table nft cannot read is no absent table, nor one with nothing to clean up.
    ['status on a clean host', ['status', ...FLAGS], false],
    ['status over our iptables rules', ['status', ...FLAGS], true],
    ['cleanup', ['cleanup', '-backend=nftables'], false],
  ])('%s fails in one line naming the nftables package, and writes nothing', async (_name, argv, holding) => {
    const result = await runWith(argv, [iptablesSurvey(4, holding), iptablesSurvey(6, holding)]);
    expect(result.code).toBe(ExitCode.missingProgram);
    expect(result.stdout).toBe('');
    expect(result.stderrLines).toHaveLength(1);
    expect(result.stderrLines[0]).toContain('nft');
    expect(result.stderrLines[0]).toContain("'nftables' package");
    expect(result.runner.calls).toEqual([]);
  });

  it('apply with neither iptables nor nft installed names both packages', async () => {
    const result = await runWith(FLAGS, []);
    expect(result.code).toBe(ExitCode.missingProgram);
    expect(result.stderrLines).toHaveLength(1);
    expect(result.stderrLines[0]).toContain("'nftables' package");
    expect(result.stderrLines[0]).toContain("'iptables' package");
  });
});
