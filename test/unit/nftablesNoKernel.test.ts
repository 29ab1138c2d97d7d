import { describe, expect, it, vi } from 'vitest';
import { nftablesProvider } from '../../src/host/nftables.ts';
import { fakeRunner } from '../helpers/fakes.ts';

// nft installed, but a kernel without nf_tables: every request fails so. The backend is then as unusable as
// without nft, and must not stop iptables (legacy) from serving. nft is "found" whether or not this host has it.
vi.mock('../../src/host/runner.ts', async (importOriginal) => {
  const runner = await importOriginal<typeof import('../../src/host/runner.ts')>();
  return { ...runner, findProgram: (name: string) => (name === 'nft' ? '/usr/sbin/nft' : undefined) };
});

const answering = (stderr: string) =>
  fakeRunner((program, args) => (program === '/usr/sbin/nft' && args[0] === '-j' ? { exitCode: 1, stdout: '', stderr } : undefined));

const survey = (runner: ReturnType<typeof fakeRunner>) => nftablesProvider.survey({ runner: runner.factory(undefined), inNetns: false, notify: () => undefined });

describe('the nftables survey on a kernel without nf_tables', () => {
  it.each([
    'netlink: Error: cache initialization failed: Protocol not supported\n',
    'Error: Could not process rule: Operation not supported\nlist table inet consul_tproxy\n',
  ])('finds no table, as without nft: %j', async (stderr) => {
    const runner = answering(stderr);
    await expect(survey(runner)).resolves.toEqual([]);
    expect(runner.calls.map((call) => call.args)).toEqual([['-j', 'list', 'table', 'inet', 'consul_tproxy']]);
  });

  it('still fails on any other error', async () => {
    await expect(survey(answering('Error: Could not process rule: Permission denied\n'))).rejects.toThrow(/nft list failed \(exit 1\): .*Permission denied/);
  });
});
