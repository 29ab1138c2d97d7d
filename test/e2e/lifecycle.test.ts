import { describe, expect, it } from 'vitest';
import {
  addForeignRules,
  applyArgs,
  cli,
  countRule,
  describeE2E,
  HOOK_JUMPS,
  natRules,
  save,
  saveEverything,
  statusArgs,
  testNamespace,
  type RedirectFlags,
} from '../helpers/e2e.ts';

// Apply, re-apply, change, clean up and ask for status, each in a namespace of its own.

const FLAGS: RedirectFlags = {
  proxyUid: 1234,
  inboundPort: 20000,
  excludeInboundPorts: ['22'],
  excludeOutboundPorts: ['9090'],
  excludeOutboundCidrs: ['198.18.1.0/24'],
  excludeUids: [1000],
};

describeE2E('apply, re-apply, cleanup and status', () => {
  describe('idempotency', () => {
    it('applying twice leaves identical rules and says nothing changed', async () => {
      const ns = await testNamespace();
      const first = await cli(applyArgs(ns, FLAGS));
      expect(first.stdout).not.toMatch(/nothing changed/);
      const afterFirst = await save(ns, { table: 'nat' });
      const second = await cli(applyArgs(ns, FLAGS));
      expect(second.stdout).toMatch(/nothing changed/);
      expect(await save(ns, { table: 'nat' })).toBe(afterFirst);
    });

    it('changing a flag removes the old rule, adds the new one and keeps one copy of each jump', async () => {
      const ns = await testNamespace();
      await cli(applyArgs(ns, FLAGS));
      const changed: RedirectFlags = { ...FLAGS, excludeOutboundPorts: [], excludeUids: [1001], outboundPort: 15002 };
      await cli(applyArgs(ns, changed));
      const rules = await natRules(ns);
      expect(rules).not.toContain('--dport 9090');
      expect(rules).not.toContain('--uid-owner 1000 ');
      expect(countRule(rules, '-A CONSUL_PROXY_OUTPUT -m owner --uid-owner 1001 -j RETURN')).toBe(1);
      expect(countRule(rules, '-A CONSUL_PROXY_REDIRECT -p tcp -j REDIRECT --to-ports 15002')).toBe(1);
      expect(rules).not.toContain('--to-ports 15001');
      for (const jump of HOOK_JUMPS) expect(countRule(rules, jump), jump).toBe(1);
      await cli(statusArgs(ns, changed), 0);
    });

    it('removes every jump into our chains from PREROUTING/OUTPUT, whatever its match, and keeps one of each', async () => {
      const ns = await testNamespace();
      await cli(applyArgs(ns, FLAGS));
      await ns.must('iptables', '-t', 'nat', '-I', 'OUTPUT', '1', '-p', 'udp', '-j', 'CONSUL_PROXY_OUTPUT');
      await ns.must('iptables', '-t', 'nat', '-I', 'PREROUTING', '1', '-i', 'lo', '-j', 'CONSUL_PROXY_INBOUND');
      await ns.must('iptables', '-t', 'nat', '-A', 'OUTPUT', '-p', 'tcp', '-j', 'CONSUL_PROXY_OUTPUT');
      await cli(statusArgs(ns, FLAGS), 3);
      await cli(applyArgs(ns, FLAGS));
      const rules = (await natRules(ns)).split('\n').filter((line) => /^-A (OUTPUT|PREROUTING) /.test(line));
      expect(rules).toEqual(['-A PREROUTING -p tcp -j CONSUL_PROXY_INBOUND', '-A OUTPUT -p tcp -j CONSUL_PROXY_OUTPUT']);
      await cli(statusArgs(ns, FLAGS), 0);
    });
  });

  describe('cleanup', () => {
    it('restores the exact earlier iptables-save of every table, foreign rules included', async () => {
      const ns = await testNamespace();
      await addForeignRules(ns);
      const before = await saveEverything(ns);
      await cli(applyArgs(ns, { ...FLAGS, dualStack: true, dnsPort: 8600 }));
      const applied = await natRules(ns);
      expect(applied).toContain('-A OUTPUT -j FOREIGN_NAT');
      expect(applied).toContain('-A OUTPUT -p tcp -j CONSUL_PROXY_OUTPUT');
      await cli(['cleanup', '-netns', ns.path]);
      expect(await saveEverything(ns)).toEqual(before);
    });

    it('removes the rules of an apply made on a clean namespace, leaving no chain of ours', async () => {
      const ns = await testNamespace();
      await cli(applyArgs(ns, FLAGS));
      await cli(['cleanup', '-netns', ns.path]);
      expect(await natRules(ns)).not.toContain('CONSUL_');
    });

    it('succeeds on a clean namespace and changes nothing', async () => {
      const ns = await testNamespace();
      const before = await saveEverything(ns);
      const result = await cli(['cleanup', '-netns', ns.path]);
      expect(result.stderr).toBe('');
      expect(await saveEverything(ns)).toEqual(before);
    });

    it('--dry-run shows the removal and changes nothing', async () => {
      const ns = await testNamespace();
      await cli(applyArgs(ns, FLAGS));
      const before = await saveEverything(ns);
      const result = await cli(['cleanup', '--dry-run', '-netns', ns.path]);
      expect(result.stdout).toContain('-X CONSUL_PROXY_OUTPUT');
      expect(result.stdout).toContain('-D OUTPUT -p tcp -j CONSUL_PROXY_OUTPUT');
      expect(await saveEverything(ns)).toEqual(before);
    });

    it('flags given before the subcommand still reach it: `--dry-run -netns X cleanup` changes nothing', async () => {
      const ns = await testNamespace();
      await cli(applyArgs(ns, FLAGS));
      const before = await saveEverything(ns);
      const result = await cli(['--dry-run', '-netns', ns.path, 'cleanup']);
      expect(result.stdout).toContain('-X CONSUL_PROXY_OUTPUT');
      expect(await saveEverything(ns)).toEqual(before);
    });

    it('can run twice', async () => {
      const ns = await testNamespace();
      await addForeignRules(ns);
      const before = await saveEverything(ns);
      await cli(applyArgs(ns, FLAGS));
      await cli(['cleanup', '-netns', ns.path]);
      await cli(['cleanup', '-netns', ns.path]);
      expect(await saveEverything(ns)).toEqual(before);
    });
  });

  describe('status', () => {
    it('is in sync after an apply (exit 0)', async () => {
      const ns = await testNamespace();
      await cli(applyArgs(ns, FLAGS));
      const result = await cli(statusArgs(ns, FLAGS, '--json'), 0);
      expect(JSON.parse(result.stdout)).toMatchObject({ status: 'in-sync' });
    });

    it('is in sync after an apply that excludes everything (/0), which iptables-save prints without -d', async () => {
      const ns = await testNamespace();
      const everything: RedirectFlags = { ...FLAGS, excludeOutboundCidrs: ['0.0.0.0/0', '::/0', '::/96'], dualStack: true };
      await cli(applyArgs(ns, everything));
      await cli(statusArgs(ns, everything), 0);
    });

    it('is drifted after a rule is deleted by hand (exit 3), also in --json', async () => {
      const ns = await testNamespace();
      await cli(applyArgs(ns, FLAGS));
      await ns.must('iptables', '-t', 'nat', '-D', 'CONSUL_PROXY_OUTPUT', '-d', '127.0.0.1/32', '-j', 'RETURN');
      await cli(statusArgs(ns, FLAGS), 3);
      const result = await cli(statusArgs(ns, FLAGS, '--json'), 3);
      const report = JSON.parse(result.stdout) as { status: string; differences: string[] };
      expect(report.status).toBe('drifted');
      expect(report.differences.join('\n')).toContain('127.0.0.1/32');
    });

    it('is drifted when a hook jump is duplicated by hand (exit 3)', async () => {
      const ns = await testNamespace();
      await cli(applyArgs(ns, FLAGS));
      await ns.must('iptables', '-t', 'nat', '-A', 'OUTPUT', '-p', 'tcp', '-j', 'CONSUL_PROXY_OUTPUT');
      await cli(statusArgs(ns, FLAGS), 3);
    });

    it('is drifted when the flags differ from what is installed (exit 3)', async () => {
      const ns = await testNamespace();
      await cli(applyArgs(ns, FLAGS));
      await cli(statusArgs(ns, { ...FLAGS, excludeUids: [1000, 1001] }), 3);
    });

    it('is absent on a clean namespace (exit 4), also in --json', async () => {
      const ns = await testNamespace();
      await cli(statusArgs(ns, FLAGS), 4);
      const result = await cli(statusArgs(ns, FLAGS, '--json'), 4);
      expect(JSON.parse(result.stdout)).toMatchObject({ status: 'absent' });
    });

    it('without rule flags, reports what is installed (exit 0) or absent (exit 4)', async () => {
      const ns = await testNamespace();
      await cli(['status', '-netns', ns.path], 4);
      await cli(applyArgs(ns, FLAGS));
      const result = await cli(['status', '-netns', ns.path, '--json'], 0);
      const report = JSON.parse(result.stdout) as { installed: { backend: string; family: string }[] };
      expect(report.installed).toEqual([expect.objectContaining({ backend: 'iptables-nft', family: 'IPv4' })]);
    });

    it('is absent again after cleanup (exit 4)', async () => {
      const ns = await testNamespace();
      await cli(applyArgs(ns, FLAGS));
      await cli(['cleanup', '-netns', ns.path]);
      await cli(statusArgs(ns, FLAGS), 4);
    });
  });
});
