import { chmodSync, readFileSync } from 'node:fs';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { batchedReads } from '../../src/host/namespaceReads.ts';
import { nftablesProvider } from '../../src/host/nftables.ts';
import { createRunner } from '../../src/host/runner.ts';
import { scratchDir } from '../helpers/fakes.ts';

// nft installed, but a kernel without nf_tables: every request fails so. The backend is then as unusable as
// without nft, and must not stop iptables (legacy) from serving. A stand-in nft (a shell script that logs its
// arguments and fails as told) runs through the real batched reads; no root is needed.
const scratch = scratchDir('redirect-traffic-nokernel-');
afterAll(() => scratch.remove());
let fakeNft = '';
vi.mock('../../src/host/runner.ts', async (importOriginal) => {
  const runner = await importOriginal<typeof import('../../src/host/runner.ts')>();
  return { ...runner, findProgram: (name: string) => (name === 'nft' ? fakeNft : undefined) };
});

/** An nft that answers every request with `stderr` and exit 1, logging its arguments to `log`. */
function failingNft(stderr: string) {
  const log = scratch.write(`log-${Math.random()}`, '');
  fakeNft = scratch.write(`nft-${Math.random()}`, `#!/bin/sh\necho "$*" >> '${log}'\nprintf '%s' '${stderr}' >&2\nexit 1\n`);
  chmodSync(fakeNft, 0o755);
  return { calls: () => readFileSync(log, 'utf8').trim().split('\n') };
}

const survey = () => {
  const runner = createRunner();
  return nftablesProvider.survey({ runner, notify: () => undefined, reads: batchedReads(runner) });
};

describe('the nftables survey on a kernel without nf_tables', () => {
  it.each([
    'netlink: Error: cache initialization failed: Protocol not supported\n',
    'Error: Could not process rule: Operation not supported\nlist table inet consul_tproxy\n',
  ])('finds no table, as without nft: %j', async (stderr) => {
    const nft = failingNft(stderr);
    await expect(survey()).resolves.toEqual([]);
    // One listing says so: no second request.
    expect(nft.calls()).toEqual(['-j list table inet consul_tproxy']);
  });

  it('still fails on any other error', async () => {
    const nft = failingNft('Error: Could not process rule: Permission denied\n');
    await expect(survey()).rejects.toThrow(/nft list failed \(exit 1\): .*Permission denied/);
    expect(nft.calls()).toEqual(['-j list table inet consul_tproxy']);
  });
});
