import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect, it, onTestFinished } from 'vitest';
import {
  applyArgs,
  cli,
  describeE2E,
  expectFailureChangesNothing,
  natRules,
  runCli,
  statusArgs,
  testNamespace,
  type RedirectFlags,
} from '../helpers/e2e.ts';

// A failing iptables-restore (issue 4): the CLI resolves iptables-nft-restore through PATH first, so a
// directory of shims put in front of PATH makes it fail, or die, mid-apply.

const BEFORE: RedirectFlags = { proxyUid: 1234, inboundPort: 20000, excludeInboundPorts: ['22'], excludeUids: [1000] };
const AFTER: RedirectFlags = { proxyUid: 1234, inboundPort: 20001, excludeOutboundPorts: ['9090'], excludeUids: [1001] };

const SHIMS = {
  /** Fails the way a missing kernel module does. */
  'fails (exit 1)': '#!/bin/sh\necho "iptables-restore v1.8.9 (nf_tables): line 2 failed: No such file or directory" >&2\nexit 1\n',
  /** Killed mid-run. */
  'is killed (SIGKILL)': '#!/bin/sh\nkill -KILL $$\n',
} as const;
/** Never returns: the CLI's own time limit must end it. */
const HANGS = '#!/bin/sh\nexec sleep 600\n';

/** A PATH whose first directory holds `programs`, each running `script`; removed when the test ends. */
function shimPath(programs: readonly string[], script: string): Record<string, string> {
  const dir = mkdtempSync(join(tmpdir(), 'rt-e2e-shims-'));
  onTestFinished(() => rmSync(dir, { recursive: true, force: true }));
  for (const program of programs) {
    writeFileSync(join(dir, program), script);
    chmodSync(join(dir, program), 0o755);
  }
  return { PATH: `${dir}:${process.env['PATH'] ?? '/usr/sbin:/usr/bin:/sbin:/bin'}` };
}

const RESTORES = ['iptables-nft-restore', 'ip6tables-nft-restore'];
const SHIM_NAMES = Object.keys(SHIMS) as (keyof typeof SHIMS)[];

describeE2E('a failing iptables-restore', () => {
  it.each(SHIM_NAMES)('leaves the previous ruleset fully in place when the restore %s', async (shim) => {
    const ns = await testNamespace();
    await cli(applyArgs(ns, BEFORE));
    const result = await expectFailureChangesNothing(ns, applyArgs(ns, AFTER), { env: shimPath(RESTORES, SHIMS[shim]) });
    expect(result.stderr).toContain('iptables-nft-restore');
    await cli(statusArgs(ns, BEFORE), 0);
  });

  it('gives up on a restore that hangs within its time limit, changing nothing', async () => {
    const ns = await testNamespace();
    await cli(applyArgs(ns, BEFORE));
    const started = Date.now();
    await expectFailureChangesNothing(ns, applyArgs(ns, AFTER), { env: shimPath(RESTORES, HANGS) });
    expect(Date.now() - started).toBeLessThan(45_000);
  });

  it('installs nothing on a clean namespace when the restore fails', async () => {
    const ns = await testNamespace();
    await expectFailureChangesNothing(ns, applyArgs(ns, AFTER), { env: shimPath(RESTORES, SHIMS['fails (exit 1)']) });
  });

  it('cleanup with a failing restore leaves the rules in place and says so', async () => {
    const ns = await testNamespace();
    await cli(applyArgs(ns, BEFORE));
    await expectFailureChangesNothing(ns, ['cleanup', '-netns', ns.path], { env: shimPath(RESTORES, SHIMS['fails (exit 1)']) });
  });

  it('cleanup still removes the IPv4 rules when only the IPv6 restore fails, and says what is left', async () => {
    const ns = await testNamespace();
    await cli(applyArgs(ns, { ...BEFORE, dualStack: true }));
    const result = await runCli(['cleanup', '-netns', ns.path], { env: shimPath(['ip6tables-nft-restore'], SHIMS['fails (exit 1)']) });
    expect(result.exitCode).not.toBe(0);
    expect(result.stderrLines).toHaveLength(1);
    expect(result.stderr).toContain('IPv6');
    expect(await natRules(ns, { family: 4 })).not.toContain('CONSUL_');
    expect(await natRules(ns, { family: 6 })).toContain('CONSUL_');
  });

  it.each(SHIM_NAMES)('with -dual-stack, rolls IPv4 back when only the IPv6 restore %s', async (shim) => {
    const ns = await testNamespace();
    await cli(applyArgs(ns, { ...BEFORE, dualStack: true }));
    // One error line; a warning that IPv4 was rolled back may come with it.
    await expectFailureChangesNothing(ns, applyArgs(ns, { ...AFTER, dualStack: true }), {
      env: shimPath(['ip6tables-nft-restore'], SHIMS[shim]),
      allowWarnings: true,
    });
    await cli(statusArgs(ns, { ...BEFORE, dualStack: true }), 0);
  });
});
