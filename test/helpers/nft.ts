import { setTimeout as sleep } from 'node:timers/promises';
import type { RedirectFlags } from './e2e.ts';
import { runCommand, type Netns } from './netns.ts';

// Native nftables state inside the test namespaces: the whole ruleset, our table, and Consul's own
// `inet consul_tproxy` script (reference section 3.7) written by hand.

export const NFT_TABLE = ['inet', 'consul_tproxy'] as const;

/** `nft list ruleset` inside `ns`, as printed: compared byte for byte. */
export const nftRuleset = (ns: Netns) => ns.must('nft', 'list', 'ruleset');

/** `nft list table inet consul_tproxy`, or undefined when the table does not exist. */
export async function nftTable(ns: Netns): Promise<string | undefined> {
  const result = await ns.run('nft', ['list', 'table', ...NFT_TABLE]);
  if (result.exitCode === 0) return result.stdout;
  if (/No such file or directory/.test(result.stderr)) return undefined;
  throw new Error(`[${ns.name}] nft list table failed (${result.exitCode}): ${result.stderr.trim()}`);
}

/** Loads an nft script with `nft -f -` inside `ns`; a failure throws with nft's message. */
export async function nftLoad(ns: Netns, script: string, options: { check?: boolean } = {}): Promise<void> {
  const result = await ns.run('nft', [...(options.check ? ['-c'] : []), '-f', '-'], { input: script });
  if (result.exitCode !== 0) throw new Error(`[${ns.name}] nft ${options.check ? '-c ' : ''}-f failed (${result.exitCode}): ${result.stderr.trim()}\n${script}`);
}

/**
 * Other software's rules, in both worlds: a native `inet filter` table with a base chain, a set and rules,
 * and an iptables-nft rule in `ip nat` (which iptables-nft keeps as an nft table too).
 */
export async function addForeignNftRules(ns: Netns): Promise<void> {
  await nftLoad(
    ns,
    [
      'table inet filter {',
      '\tset blocked {',
      '\t\ttype ipv4_addr',
      '\t\telements = { 198.18.7.7, 198.18.7.9 }',
      '\t}',
      '\tchain input {',
      '\t\ttype filter hook input priority 0; policy accept;',
      '\t\tip saddr @blocked drop',
      '\t\tip6 saddr 2001:db8:7::7 drop',
      '\t}',
      '}',
      '',
    ].join('\n'),
  );
  await ns.must('iptables-nft', '-t', 'nat', '-A', 'OUTPUT', '-d', '198.18.7.7/32', '-p', 'tcp', '-j', 'RETURN');
}

/** The flags Consul's nftables script is written for here: no DNS. */
export type ConsulNftFlags = Omit<RedirectFlags, 'dnsIp' | 'dnsPort'>;

/**
 * The script `consul connect redirect-traffic` pipes to `nft -f -` in its nftables variant (reference
 * section 3.7): add/delete/add the table, the chains, then one rule per exclusion, `insert`ed (so in
 * reverse order at the head of their chain). No DNS here.
 */
export function consulNftScript(flags: ConsulNftFlags): string {
  const t = 'inet consul_tproxy';
  const lines = [`add table ${t}`, `delete table ${t}`, `add table ${t}`];
  for (const chain of ['CONSUL_PROXY_INBOUND', 'CONSUL_PROXY_IN_REDIRECT', 'CONSUL_PROXY_OUTPUT', 'CONSUL_PROXY_REDIRECT', 'CONSUL_DNS_REDIRECT']) {
    lines.push(`add chain ${t} ${chain}`);
  }
  lines.push(
    `add chain ${t} CONSUL_NAT_OUTPUT { type nat hook output priority -100 ; }`,
    `add chain ${t} CONSUL_NAT_PREROUTING { type nat hook prerouting priority -100 ; }`,
  );
  if (!flags.dualStack) {
    lines.push(`add rule ${t} CONSUL_NAT_OUTPUT meta nfproto ipv6 return`, `add rule ${t} CONSUL_NAT_PREROUTING meta nfproto ipv6 return`);
  }
  lines.push(
    `add rule ${t} CONSUL_PROXY_REDIRECT meta l4proto tcp redirect to :${flags.outboundPort ?? 15001}`,
    `add rule ${t} CONSUL_NAT_OUTPUT meta l4proto tcp jump CONSUL_PROXY_OUTPUT`,
    `add rule ${t} CONSUL_PROXY_OUTPUT skuid ${flags.proxyUid} return`,
    `add rule ${t} CONSUL_PROXY_OUTPUT ip daddr 127.0.0.1/32 return`,
    `add rule ${t} CONSUL_PROXY_OUTPUT ip6 daddr ::1/128 return`,
    `add rule ${t} CONSUL_PROXY_OUTPUT jump CONSUL_PROXY_REDIRECT`,
  );
  for (const port of flags.excludeOutboundPorts ?? []) lines.push(`insert rule ${t} CONSUL_PROXY_OUTPUT tcp dport ${port.replace(':', '-')} return`);
  for (const cidr of flags.excludeOutboundCidrs ?? []) {
    lines.push(`insert rule ${t} CONSUL_PROXY_OUTPUT ${cidr.includes(':') ? 'ip6' : 'ip'} daddr ${cidr} return`);
  }
  for (const uid of flags.excludeUids ?? []) lines.push(`insert rule ${t} CONSUL_PROXY_OUTPUT skuid ${uid} return`);
  lines.push(
    `add rule ${t} CONSUL_PROXY_IN_REDIRECT meta l4proto tcp redirect to :${flags.inboundPort}`,
    `add rule ${t} CONSUL_NAT_PREROUTING meta l4proto tcp jump CONSUL_PROXY_INBOUND`,
    `add rule ${t} CONSUL_PROXY_INBOUND meta l4proto tcp jump CONSUL_PROXY_IN_REDIRECT`,
  );
  for (const port of flags.excludeInboundPorts ?? []) lines.push(`insert rule ${t} CONSUL_PROXY_INBOUND tcp dport ${port.replace(':', '-')} return`);
  return `${lines.join('\n')}\n`;
}

/** The pids of processes still running inside `ns` (e.g. an `nft` whose parent was killed). */
async function pidsIn(ns: Netns): Promise<number[]> {
  const result = await runCommand('ip', ['netns', 'pids', ns.name]);
  return result.stdout.split('\n').filter((line) => /^\d+$/.test(line)).map(Number);
}

/** Waits until no process runs inside `ns`: a killed CLI's orphaned child must finish before the table is read. */
export async function waitForNoProcesses(ns: Netns, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while ((await pidsIn(ns)).length > 0) {
    if (Date.now() > deadline) throw new Error(`[${ns.name}] processes still running after ${timeoutMs}ms: ${(await pidsIn(ns)).join(', ')}`);
    await sleep(20);
  }
}
