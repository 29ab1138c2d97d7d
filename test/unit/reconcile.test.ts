import { describe, expect, it, vi } from 'vitest';
import type { Dialect } from '../../src/core/dialect.ts';
import { CliError, ExitCode } from '../../src/errors.ts';
import { FirewallError, type FirewallTable } from '../../src/host/backend.ts';
import { iptablesProvider } from '../../src/host/iptables.ts';
import { reconcile } from '../../src/host/reconcile.ts';
import { fakeRunner } from '../helpers/fakes.ts';

// reconcile() against a fake table, and the iptables backend's reading of a failed restore through a fake
// runner: no process, no root.

// Every program "is installed" (for the iptables provider); nothing is ever run but through the fake runner.
vi.mock('../../src/host/runner.ts', async (importOriginal) => ({
  ...(await importOriginal<typeof import('../../src/host/runner.ts')>()),
  findProgram: (name: string) => `/usr/sbin/${name}`,
}));

/** A toy table state: each chain's rules, and the hooks jumping into them. */
interface State {
  chains: Record<string, string[]>;
  hooks: string[];
}
const EMPTY: State = { chains: {}, hooks: [] };
const WANTED: State = {
  chains: { CONSUL_PROXY_OUTPUT: ['-m owner --uid-owner 901 -j RETURN', '-d 127.0.0.1/32 -j RETURN'] },
  hooks: ['-A OUTPUT -p tcp -j CONSUL_PROXY_OUTPUT'],
};

const dialect: Dialect<State> = {
  wanted: () => WANTED,
  parse: (dump) => (dump === '' ? EMPTY : (JSON.parse(dump) as State)),
  isEmpty: (state) => Object.keys(state.chains).length === 0 && state.hooks.length === 0,
  same: (a, b) => JSON.stringify(a) === JSON.stringify(b),
  differences: () => [],
  transaction: (_installed, wanted) => JSON.stringify(wanted),
  foreignRulesRemoved: () => [],
  describe: (state) => ({
    chains: Object.fromEntries(Object.entries(state.chains).map(([chain, rules]) => [chain, rules.length])),
    hooks: state.hooks,
    rules: Object.values(state.chains).reduce((sum, rules) => sum + rules.length, 0) + state.hooks.length,
  }),
};

/** The backend stores a rule in its own spelling: the same chains and counts, other text. */
const respell = (state: State): State => ({
  chains: Object.fromEntries(Object.entries(state.chains).map(([chain, rules]) => [chain, rules.map((rule) => rule.replace('127.0.0.1/32', '127.0.0.1'))])),
  hooks: state.hooks,
});

/** A table held in memory; `onWrite` decides what a write leaves (or throws), `onRead` may change it first. */
function fakeTable(options: { onWrite?: (transaction: string, writes: number) => string; onRead?: (stored: string, reads: number) => string } = {}) {
  let stored = '';
  let reads = 0;
  let writes = 0;
  const table: FirewallTable<State> = {
    backend: 'iptables-nft',
    families: [4],
    label: 'iptables-nft IPv4',
    dialect,
    async read() {
      reads += 1;
      stored = options.onRead ? options.onRead(stored, reads) : stored;
      return stored;
    },
    async write(transaction) {
      writes += 1;
      stored = options.onWrite ? options.onWrite(transaction, writes) : transaction;
    },
  };
  return { table, counts: () => ({ reads, writes }) };
}

async function failure(promise: Promise<unknown>): Promise<CliError> {
  const error = await promise.then(
    () => undefined,
    (caught: unknown) => caught,
  );
  expect(error).toBeInstanceOf(CliError);
  return error as CliError;
}

describe('reconcile', () => {
  it('writes once and checks by reading back', async () => {
    const { table, counts } = fakeTable();
    await expect(reconcile(table, WANTED)).resolves.toEqual({ changed: true });
    expect(counts()).toEqual({ reads: 2, writes: 1 });
    await expect(reconcile(table, WANTED)).resolves.toEqual({ changed: false });
  });

  it('a read-back with the right shape but other spelling, twice alike: exit 70 "spelled differently", not retried on', async () => {
    const { table, counts } = fakeTable({ onWrite: (transaction) => JSON.stringify(respell(JSON.parse(transaction) as State)) });
    const error = await failure(reconcile(table, WANTED));
    expect(error.exitCode).toBe(ExitCode.internal);
    expect(error.message).toContain('a rule spelled differently by the backend');
    expect(error.message).toContain('iptables-nft IPv4');
    expect(counts().writes).toBe(2);
  });

  it('a read-back a concurrent flush emptied is retried, and ends in success once the flushing stops', async () => {
    // A flush lands between each of the first three writes and its read-back.
    const { table, counts } = fakeTable({ onRead: (stored, reads) => (reads >= 2 && reads <= 4 ? '' : stored) });
    const retries: string[] = [];
    await expect(reconcile(table, WANTED, { onRetry: (reason) => retries.push(reason) })).resolves.toEqual({ changed: true });
    expect(counts().writes).toBe(4);
  });

  it('a flush after every write ends in a temporary failure (75), never a hard one', async () => {
    const { table, counts } = fakeTable({ onRead: () => '' });
    const error = await failure(reconcile(table, WANTED));
    expect(error.exitCode).toBe(ExitCode.tempFail);
    expect(error.message).toMatch(/gave up on iptables-nft IPv4: it kept changing under us .*; try again later/);
    expect(counts().writes).toBe(8);
  });

  it('retryable write failures (busy) are retried, and end in 75 naming the last error', async () => {
    const { table, counts } = fakeTable({
      onWrite: () => {
        throw new FirewallError('iptables-nft-restore failed (exit 4): busy', 'busy');
      },
    });
    const error = await failure(reconcile(table, WANTED));
    expect(error.exitCode).toBe(ExitCode.tempFail);
    expect(error.message).toContain('(last error: iptables-nft-restore failed (exit 4): busy)');
    expect(counts().writes).toBe(8);
  }, 10_000);

  it('a lock held throughout ends in 75 saying so', async () => {
    const { table } = fakeTable({
      onWrite: () => {
        throw new FirewallError('iptables-legacy-restore failed (exit 4): Another app is currently holding the xtables lock', 'lock');
      },
    });
    const error = await failure(reconcile(table, WANTED));
    expect(error.exitCode).toBe(ExitCode.tempFail);
    expect(error.message).toContain('the lock it needs stayed held by another program');
  }, 10_000);

  it('the same hard failure twice from the same table is thrown as it is (71), after one retry from a fresh read', async () => {
    const hard = new FirewallError('iptables-nft-restore failed (exit 4): CHAIN_DEL failed (Device or resource busy)', 'hard');
    const { table, counts } = fakeTable({
      onWrite: () => {
        throw hard;
      },
    });
    await expect(reconcile(table, WANTED)).rejects.toBe(hard);
    expect(hard.exitCode).toBe(ExitCode.systemCommand);
    expect(counts().writes).toBe(2);
  });

  it('the deadline stops the retries: none starts after it, though the first attempt always does', async () => {
    const busy = () => {
      throw new FirewallError('busy', 'busy');
    };
    // A sweep or cleanup that starts late (the writes before it took their time) still tries once.
    const past = fakeTable({ onWrite: busy });
    const error = await failure(reconcile(past.table, WANTED, { deadline: Date.now() - 1 }));
    expect(error.exitCode).toBe(ExitCode.tempFail);
    expect(past.counts().writes).toBe(1);

    // A failed write sleeps at least 10 ms before its retry: past a 5 ms deadline by then.
    const soon = fakeTable({ onWrite: busy });
    await failure(reconcile(soon.table, WANTED, { deadline: Date.now() + 5 }));
    expect(soon.counts().writes).toBe(1);
  });
});

describe('iptables backend: what a failed iptables-nft-restore means', () => {
  const SAVE = '*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n';

  async function ipv4Table(restore: { exitCode: number; stderr: string }) {
    const runner = fakeRunner((program, args) => {
      if (program.endsWith('-save')) return { exitCode: 0, stdout: SAVE, stderr: '' };
      if (program.endsWith('-restore') && args[0] === '--noflush') return { exitCode: restore.exitCode, stdout: '', stderr: restore.stderr };
      return undefined;
    });
    // The survey's reads, answered as the runner would: saves show an empty nat table, no legacy tables.
    const reads = {
      run: async (program: string) => ({ exitCode: program.endsWith('-save') ? 0 : 127, stdout: program.endsWith('-save') ? SAVE : '', stderr: '' }),
      file: async () => '',
    };
    const surveys = await iptablesProvider.survey({ runner: runner.factory('/run/netns/x'), notify: () => undefined, reads });
    const survey = surveys.find((s) => s.table.label === 'iptables-nft IPv4');
    expect(survey).toBeDefined();
    return { table: survey!.table, runner };
  }

  it("exit 4 with 'CHAIN_DEL failed (Device or resource busy)' and nft not to be asked is a kernel refusal: hard (71), with a hint, not a lock", async () => {
    const stderr = 'iptables-nft-restore v1.8.9 (nf_tables): \nline 11: CHAIN_DEL failed (Device or resource busy): chain CONSUL_PROXY_OUTPUT\n';
    const { table } = await ipv4Table({ exitCode: 4, stderr });
    const error = (await table.write('*nat\nCOMMIT\n', table.dialect.wanted(undefined)).catch((caught: unknown) => caught)) as FirewallError;
    expect(error).toBeInstanceOf(FirewallError);
    expect(error.reason).toBe('hard');
    expect(error.retryable).toBe(false);
    expect(error.exitCode).toBe(ExitCode.systemCommand);
    expect(error.message).toBe(
      'iptables-nft-restore failed (exit 4): iptables-nft-restore v1.8.9 (nf_tables): | line 11: CHAIN_DEL failed (Device or resource busy): chain CONSUL_PROXY_OUTPUT' +
        ' (the kernel refused: something still refers to one of our chains, perhaps a native nftables rule or verdict map iptables' +
        ' cannot show; nft could not be asked to tell that from another writer)',
    );
  });

  it('through reconcile, that refusal ends in 71 after one retry from a fresh read, never 75', async () => {
    const { table, runner } = await ipv4Table({ exitCode: 4, stderr: 'line 11: CHAIN_DEL failed (Device or resource busy): chain CONSUL_PROXY_OUTPUT\n' });
    const wanted = table.dialect.wanted(undefined);
    const installed = table.dialect.parse(
      SAVE.replace('COMMIT', ':CONSUL_PROXY_OUTPUT - [0:0]\n-A OUTPUT -p tcp -j CONSUL_PROXY_OUTPUT\n-A CONSUL_PROXY_OUTPUT -d 127.0.0.1/32 -j RETURN\nCOMMIT'),
    );
    expect(table.dialect.isEmpty(installed)).toBe(false);
    const dump = SAVE.replace('COMMIT', ':CONSUL_PROXY_OUTPUT - [0:0]\n-A OUTPUT -p tcp -j CONSUL_PROXY_OUTPUT\nCOMMIT');
    // Reads keep showing our chain (the refused transaction changed nothing).
    const reading = { ...table, read: async () => dump };
    const error = (await reconcile(reading, wanted, { firstDump: dump }).catch((caught: unknown) => caught)) as CliError;
    expect(error.exitCode).toBe(ExitCode.systemCommand);
    expect(runner.calls.filter((call) => call.program.endsWith('-restore'))).toHaveLength(2);
  });

  it('exit 4 for the xtables lock is a lock: temporary (75)', async () => {
    const { table } = await ipv4Table({ exitCode: 4, stderr: 'Another app is currently holding the xtables lock. Perhaps you want to use the -w option?\n' });
    const error = (await table.write('*nat\nCOMMIT\n', table.dialect.wanted(undefined)).catch((caught: unknown) => caught)) as FirewallError;
    expect(error.reason).toBe('lock');
    expect(error.exitCode).toBe(ExitCode.tempFail);
  });

  it('exit 4 alone, without a lock message, is no lock', async () => {
    const { table } = await ipv4Table({ exitCode: 4, stderr: 'iptables-nft-restore: line 3 failed\n' });
    const error = (await table.write('*nat\nCOMMIT\n', table.dialect.wanted(undefined)).catch((caught: unknown) => caught)) as FirewallError;
    expect(error.reason).toBe('hard');
    expect(error.exitCode).toBe(ExitCode.systemCommand);
  });
});
