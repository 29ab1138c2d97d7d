import { describe, expect, it, vi } from 'vitest';
import { takeInventory } from '../../src/host/inventory.ts';
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

const survey = (fake: ReturnType<typeof fakeRunner>) => {
  const runner = fake.factory(undefined);
  return nftablesProvider.survey({ runner, inNetns: false, notify: () => undefined, inventory: () => takeInventory(runner, false) });
};

describe('the nftables survey on a kernel without nf_tables', () => {
  it.each([
    'netlink: Error: cache initialization failed: Protocol not supported\n',
    'Error: Could not process rule: Operation not supported\nlist table inet consul_tproxy\n',
  ])('finds no table, as without nft: %j', async (stderr) => {
    const runner = answering(stderr);
    await expect(survey(runner)).resolves.toEqual([]);
    // The inventory's one listing of the ruleset says so: no second request.
    expect(runner.calls.map((call) => call.args)).toEqual([['-j', 'list', 'ruleset']]);
  });

  it('still fails on any other error', async () => {
    await expect(survey(answering('Error: Could not process rule: Permission denied\n'))).rejects.toThrow(/nft list failed \(exit 1\): .*Permission denied/);
  });
});
