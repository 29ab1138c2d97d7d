import { describe, expect, it } from 'vitest';
import {
  addForeignRules,
  applyArgs,
  cli,
  CLI,
  cliFlags,
  consulCommands,
  countRule,
  describeE2E,
  HOOK_JUMPS,
  holdsOurChains,
  installConsulStyle,
  natRules,
  saveEverything,
  statusArgs,
  testNamespace,
  type Backend,
  type RedirectFlags,
} from '../helpers/e2e.ts';

// Rules installed the way `consul connect redirect-traffic` does it (one iptables process per rule,
// reference §3.2): the CLI must produce the very same table, clean Consul's rules up and apply over them,
// in whichever backend they live.

const BASE: RedirectFlags = { proxyUid: 1234, inboundPort: 20000 };

/** Several of each exclusion kind, so Consul's reversed -I order shows; host bits and ranges included. */
const EVERY_EXCLUSION: RedirectFlags = {
  proxyUid: 1234,
  inboundPort: 20000,
  outboundPort: 15005,
  excludeInboundPorts: ['22', '8500', '9000:9100'],
  excludeOutboundPorts: ['80', '443', '8000:8100'],
  excludeOutboundCidrs: ['198.18.4.0/24', '198.18.5.7', '198.18.6.9/16'],
  excludeUids: [0, 100, 4242],
};

const CASES: [string, RedirectFlags][] = [
  ['the base case', BASE],
  ['every exclusion kind, several each', EVERY_EXCLUSION],
  ['DNS redirection with -consul-dns-ip only', { ...BASE, dnsIp: '198.18.0.53' }],
  ['DNS redirection with -consul-dns-port', { ...BASE, dnsPort: 8600 }],
  ['DNS redirection with -consul-dns-ip and -consul-dns-port', { ...EVERY_EXCLUSION, dnsIp: '198.18.0.53', dnsPort: 8600 }],
  // Consul hands these to iptables verbatim, which takes them all.
  ['ports as iptables takes them: 0, open ranges, service names', { ...BASE, excludeInboundPorts: ['ssh', '0', '1024:'], excludeOutboundPorts: [':1023', 'http:https'] }],
  ['every port (iptables-save then prints no --dport)', { ...BASE, excludeOutboundPorts: ['0:'] }],
];

describeE2E(
  'compatibility with rules installed by consul connect redirect-traffic',
  () => {
    describe('the same flags give the same nat table as Consul', () => {
      it.each(CASES)('%s', async (_name, flags) => {
        const consul = await testNamespace('consul');
        const ours = await testNamespace('ours');
        await installConsulStyle(consul, flags);
        await cli(applyArgs(ours, flags));
        expect(await natRules(ours)).toBe(await natRules(consul));
        // And read back as what was wanted: the next apply finds it in place.
        expect((await cli(applyArgs(ours, flags))).stdout).toMatch(/^traffic redirection already in place/);
      });
    });

    describe('over Consul-style rules', () => {
      it('cleanup removes them and nothing else', async () => {
        const ns = await testNamespace();
        await addForeignRules(ns);
        const before = await saveEverything(ns);
        await installConsulStyle(ns, { ...EVERY_EXCLUSION, dnsPort: 8600 });
        await cli(['cleanup', '-netns', ns.path]);
        expect(await saveEverything(ns)).toEqual(before);
      });

      it.each(CASES)('an apply with other flags yields exactly our ruleset (%s)', async (_name, flags) => {
        const ns = await testNamespace('consul');
        const reference = await testNamespace('ours');
        await installConsulStyle(ns, EVERY_EXCLUSION === flags ? BASE : EVERY_EXCLUSION);
        await cli(applyArgs(ns, flags));
        await cli(applyArgs(reference, flags));
        const rules = await natRules(ns);
        expect(rules).toBe(await natRules(reference));
        for (const jump of HOOK_JUMPS) expect(countRule(rules, jump), jump).toBe(1);
        await cli(statusArgs(ns, flags), 0);
      });

      it('an apply and a cleanup also handle a Consul 1.10 install (four chains, no CONSUL_DNS_REDIRECT)', async () => {
        const ns = await testNamespace();
        for (const args of consulCommands(EVERY_EXCLUSION).filter((args) => !args.includes('CONSUL_DNS_REDIRECT'))) {
          await ns.must('iptables', ...args);
        }
        await cli(statusArgs(ns, EVERY_EXCLUSION), 3);
        await cli(applyArgs(ns, EVERY_EXCLUSION));
        await cli(statusArgs(ns, EVERY_EXCLUSION), 0);
        await cli(['cleanup', '-netns', ns.path]);
        expect(holdsOurChains(await natRules(ns))).toBe(false);
      });

      it('an apply with the same flags changes nothing', async () => {
        const ns = await testNamespace();
        await installConsulStyle(ns, EVERY_EXCLUSION);
        const before = await natRules(ns);
        await cli(applyArgs(ns, EVERY_EXCLUSION));
        expect(await natRules(ns)).toBe(before);
      });
    });

    describe('iptables backends', () => {
      it('updates rules pre-installed with iptables-legacy in legacy, putting nothing in nft', async () => {
        const ns = await testNamespace();
        await installConsulStyle(ns, BASE, 'iptables-legacy');
        const result = await cli(applyArgs(ns, EVERY_EXCLUSION, '-iptables-mode=auto'));
        expect(result.stdout).toContain('iptables-legacy');
        const legacy = await natRules(ns, { backend: 'legacy' });
        expect(countRule(legacy, '-A CONSUL_PROXY_OUTPUT -m owner --uid-owner 4242 -j RETURN')).toBe(1);
        for (const jump of HOOK_JUMPS) expect(countRule(legacy, jump), jump).toBe(1);
        expect(holdsOurChains(await ns.must('iptables-nft-save'))).toBe(false);
        expect(holdsOurChains(await ns.must('ip6tables-nft-save'))).toBe(false);
        await cli(statusArgs(ns, EVERY_EXCLUSION), 0);

        // The legacy table equals what Consul itself (through iptables-legacy) would leave for these flags.
        const consul = await testNamespace('consul');
        await installConsulStyle(consul, EVERY_EXCLUSION, 'iptables-legacy');
        expect(legacy).toBe(await natRules(consul, { backend: 'legacy' }));
      });

      // Inside -netns this process cannot see the namespace's /proc/net: iptables-nft-save's warning that
      // legacy tables exist is what sends the survey to iptables-legacy, and IPv6's warning is worded apart.
      it.each([4, 6] as const)('with -netns, status and cleanup find IPv%s rules that only iptables-legacy holds', async (family) => {
        const ns = await testNamespace();
        const legacy = family === 4 ? 'iptables-legacy' : 'ip6tables-legacy';
        await ns.must(legacy, '-t', 'nat', '-N', 'CONSUL_PROXY_INBOUND');
        await ns.must(legacy, '-t', 'nat', '-A', 'PREROUTING', '-p', 'tcp', '-j', 'CONSUL_PROXY_INBOUND');
        const status = await cli(['status', '-netns', ns.path, '-json']);
        expect(status.stdout).toContain('legacy');
        const cleanup = await cli(['cleanup', '-netns', ns.path]);
        expect(cleanup.stdout).toContain(`iptables-legacy, IPv${family}`);
        expect(holdsOurChains(await natRules(ns, { family, backend: 'legacy' }))).toBe(false);
      });

      it.each([
        ['auto', undefined],
        ['legacy', 'legacy'],
        ['nft', 'nft'],
      ] as const)('leaves our chains in exactly one backend when both hold them (-iptables-mode=%s)', async (mode, expected) => {
        const ns = await testNamespace();
        await installConsulStyle(ns, BASE, 'iptables-legacy');
        await installConsulStyle(ns, BASE, 'iptables-nft');
        await cli(applyArgs(ns, EVERY_EXCLUSION, `-iptables-mode=${mode}`));
        const holding: Backend[] = [];
        for (const backend of ['nft', 'legacy'] as const) {
          if (holdsOurChains(await natRules(ns, { backend }))) holding.push(backend);
        }
        expect(holding).toHaveLength(1);
        if (expected) expect(holding).toEqual([expected]);
        const rules = await natRules(ns, { backend: holding[0]! });
        for (const jump of HOOK_JUMPS) expect(countRule(rules, jump), jump).toBe(1);
        await cli(statusArgs(ns, EVERY_EXCLUSION), 0);
      });

      it('status reports rules in both backends as drifted', async () => {
        const ns = await testNamespace();
        await installConsulStyle(ns, BASE, 'iptables-legacy');
        await installConsulStyle(ns, BASE, 'iptables-nft');
        await cli(statusArgs(ns, BASE), 3);
      });

      it('cleanup removes our chains from every backend and family', async () => {
        const ns = await testNamespace();
        await addForeignRules(ns);
        const before = await saveEverything(ns);
        await installConsulStyle(ns, BASE, 'iptables-legacy');
        await cli(applyArgs(ns, { ...BASE, dualStack: true }, '-iptables-mode=nft'));
        // An apply cleans the other backend; put Consul's legacy rules back behind its back.
        await installConsulStyle(ns, BASE, 'iptables-legacy');
        await cli(['cleanup', '-netns', ns.path]);
        const after = await saveEverything(ns);
        for (const [table, dump] of Object.entries(after)) expect(holdsOurChains(dump), table).toBe(false);
        // Legacy's nat table exists now, empty; everything else is as it was.
        const { 'iptables-legacy': _, ...rest } = after;
        const { 'iptables-legacy': _before, ...restBefore } = before;
        expect(rest).toEqual(restBefore);
      });

      it('run inside the namespace (ip netns exec, no -netns), updates legacy rules in legacy', async () => {
        const ns = await testNamespace();
        await installConsulStyle(ns, BASE, 'iptables-legacy');
        const args = cliFlags(EVERY_EXCLUSION);
        const result = await ns.run(process.execPath, [CLI, ...args], { timeoutMs: 45_000 });
        expect(result.exitCode, result.stderr).toBe(0);
        expect(holdsOurChains(await ns.must('iptables-nft-save'))).toBe(false);
        await cli(statusArgs(ns, EVERY_EXCLUSION), 0);
      });
    });
  },
  { requires: ['iptables-legacy', 'iptables-legacy-save', 'iptables-nft', 'iptables-nft-save'] },
);
