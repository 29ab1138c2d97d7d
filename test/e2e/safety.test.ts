import { beforeAll, describe, expect, it } from 'vitest';
import {
  applyArgs,
  cli,
  countRule,
  describeE2E,
  expectFailureChangesNothing,
  natRules,
  saveEverything,
  statusArgs,
  testNamespace,
  type RedirectFlags,
} from '../helpers/e2e.ts';
import { createNamespace, type Netns } from '../helpers/netns.ts';

// Refusals: an apply that would cut off the SSH session it runs in (issue 4), and bad input (issue 2).
// Either way nothing in the namespace may change.

const SSH_V4 = { SSH_CONNECTION: '198.18.0.2 50000 198.18.0.1 22' };
const SSH_V6 = { SSH_CONNECTION: '2001:db8::2 50000 2001:db8::1 22' };
const FLAGS: RedirectFlags = { proxyUid: 1234, inboundPort: 20000, excludeUids: [1000] };
const SSH_EXCLUDED = '-A CONSUL_PROXY_INBOUND -p tcp -m tcp --dport 22 -j RETURN';
const USAGE = 64;

/** Runs the CLI expecting a refusal with `code`: one stderr line, and no change in the namespace. */
async function expectRefusal(ns: Netns, args: readonly string[], code: number, env?: Record<string, string>) {
  return (await expectFailureChangesNothing(ns, args, env ? { code, env } : { code })).stderr;
}

describeE2E('refusals change nothing', () => {
  describe('SSH safety', () => {
    it('refuses to capture the SSH port of the session it runs in, naming both ways out', async () => {
      const ns = await testNamespace();
      const stderr = await expectRefusal(ns, applyArgs(ns, FLAGS), 78, SSH_V4);
      expect(stderr).toContain('-exclude-inbound-port');
      expect(stderr).toContain('-allow-ssh-capture');
    });

    it('refuses over an existing ruleset and leaves it as it was', async () => {
      const ns = await testNamespace();
      await cli(applyArgs(ns, { ...FLAGS, excludeInboundPorts: ['22'] }), 0, { env: SSH_V4 });
      await expectRefusal(ns, applyArgs(ns, FLAGS), 78, SSH_V4);
      expect(countRule(await natRules(ns), SSH_EXCLUDED)).toBe(1);
    });

    it('refuses when the session port is another one than 22', async () => {
      const ns = await testNamespace();
      const stderr = await expectRefusal(ns, applyArgs(ns, { ...FLAGS, excludeInboundPorts: ['22'] }), 78, {
        SSH_CONNECTION: '198.18.0.2 50000 198.18.0.1 2222',
      });
      expect(stderr).toContain('2222');
    });

    it.each([
      ['-exclude-inbound-port=22', { ...FLAGS, excludeInboundPorts: ['22'] }, []],
      ['a range covering 22', { ...FLAGS, excludeInboundPorts: ['20:30'] }, []],
      ['-allow-ssh-capture', FLAGS, ['-allow-ssh-capture']],
    ] as const)('applies with %s', async (_name, flags, extra) => {
      const ns = await testNamespace();
      await cli(applyArgs(ns, flags, ...extra), 0, { env: SSH_V4 });
      await cli(statusArgs(ns, flags), 0);
    });

    it('does not refuse an IPv6 session when only IPv4 is redirected, and refuses it with -dual-stack', async () => {
      const ns = await testNamespace();
      await cli(applyArgs(ns, FLAGS), 0, { env: SSH_V6 });
      await expectRefusal(ns, applyArgs(ns, { ...FLAGS, dualStack: true }), 78, SSH_V6);
    });

    it('never refuses --dry-run, which changes nothing', async () => {
      const ns = await testNamespace();
      const before = await saveEverything(ns);
      const result = await cli([...applyArgs(ns, FLAGS), '--dry-run'], 0, { env: SSH_V4 });
      expect(result.stdout).toContain('CONSUL_PROXY_INBOUND');
      expect(await saveEverything(ns)).toEqual(before);
    });

    it('never refuses status', async () => {
      const ns = await testNamespace();
      await cli(statusArgs(ns, FLAGS), 4, { env: SSH_V4 });
      await cli(applyArgs(ns, FLAGS, '-allow-ssh-capture'), 0, { env: SSH_V4 });
      await cli(statusArgs(ns, FLAGS), 0, { env: SSH_V4 });
    });
  });

  describe('bad input', () => {
    // One namespace holding our rules and a foreign one; every bad command must leave it byte for byte.
    let ns: Netns;
    beforeAll(async () => {
      ns = await createNamespace('bad-input');
      await ns.must('iptables', '-t', 'nat', '-A', 'OUTPUT', '-d', '198.18.7.7/32', '-p', 'tcp', '-j', 'RETURN');
      await cli(applyArgs(ns, { ...FLAGS, excludeInboundPorts: ['22'] }));
    });

    const base = ['-proxy-uid=1234', '-proxy-inbound-port=20000'];
    it.each([
      ['a bad CIDR', [...base, '-exclude-outbound-cidr=198.18.0.0/33']],
      ['a host name as CIDR', [...base, '-exclude-outbound-cidr=localhost']],
      ['port 70000', ['-proxy-uid=1234', '-proxy-inbound-port=70000']],
      ['an excluded port 70000', [...base, '-exclude-inbound-port=70000']],
      ['a reversed port range', [...base, '-exclude-outbound-port=30:20']],
      ['an unknown user', ['-proxy-uid=no-such-user-rt-e2e', '-proxy-inbound-port=20000']],
      ['an unknown excluded user', [...base, '-exclude-uid=no-such-user-rt-e2e']],
      ['a newline in a value', [...base, '-exclude-outbound-cidr=198.18.0.0/24\n-A OUTPUT -j ACCEPT']],
      ['a newline in a UID', ['-proxy-uid=1234\n-A OUTPUT -j ACCEPT', '-proxy-inbound-port=20000']],
      ["-exclude-inbound-port='22 -j ACCEPT'", [...base, '-exclude-inbound-port=22 -j ACCEPT']],
      ['an option smuggled into a CIDR', [...base, '-exclude-outbound-cidr=198.18.0.0/24 -j ACCEPT']],
      ['a DNS IP that is a name', [...base, '-consul-dns-ip=localhost']],
      ['a missing -proxy-uid', ['-proxy-inbound-port=20000']],
      ['an unknown flag', [...base, '-no-such-flag=1']],
      ['an unknown flag with a newline', [...base, '-no-such-flag=1\n-A OUTPUT -j ACCEPT']],
      ['a bad -iptables-mode', [...base, '-iptables-mode=both']],
    ])('%s exits 64 with one line on stderr', async (_name, args) => {
      await expectRefusal(ns, ['-netns', ns.path, ...args], USAGE);
    });

    it.each([
      ['cleanup with a missing netns', ['cleanup', '-netns', '/run/netns/rt-e2e-does-not-exist']],
      ['status with a bad port', ['status', '-proxy-uid=1234', '-proxy-inbound-port=0']],
    ])('%s exits 64 with one line on stderr', async (_name, args) => {
      const withNetns = args.includes('-netns') ? args : [...args, '-netns', ns.path];
      await expectRefusal(ns, withNetns, USAGE);
    });
  });
});
