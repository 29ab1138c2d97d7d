import type { ProxyPorts } from '../core/registration.ts';
import type { RedirectConfig } from '../core/ruleset.ts';
import type { PortRange, Uid, UidSpec } from '../core/values.ts';
import { resolveUid } from '../host/system.ts';
import type { RawOptions } from '../flags.ts';
import type { AgentOptions, HostOptions, RuleOptions } from '../options.ts';
import type { CommandContext } from './context.ts';

/**
 * Turns validated flags (plus the agent's answer, with -proxy-id) into the configuration to install. With
 * `preview` (a dry run, perhaps for another host), a user name unknown here is kept as a name, with a warning.
 */
export async function resolveConfig(
  rules: RuleOptions,
  agent: AgentOptions | undefined,
  context: CommandContext,
  preview = false,
): Promise<RedirectConfig> {
  const uids = await resolveUids(rules, context, preview);
  const ports =
    rules.proxyId !== undefined && agent !== undefined ? await context.fetchProxyPorts(agent, rules.proxyId, context.log) : flagPorts(rules);
  return configOf(rules, uids, ports);
}

/** The UIDs the rules name, user names resolved once, up front, never at packet time. */
export interface ResolvedUids {
  proxyUid: Uid;
  excludeUids: Uid[];
}

/** With `preview` (a dry run), a name unknown here stays a name, with a warning. */
export async function resolveUids(rules: RuleOptions, context: CommandContext, preview = false): Promise<ResolvedUids> {
  const runner = context.runner();
  const uid = async (spec: UidSpec, flag: string): Promise<Uid> => {
    const resolved = await resolveUid(spec, flag, runner, preview);
    if (typeof resolved === 'string') {
      context.log.warn(`${flag}: there is no user "${resolved}" on this host; the dry run shows the name, for the target host to resolve`);
    }
    return resolved;
  };
  const proxyUid = await uid(rules.proxyUid, '-proxy-uid');
  const excludeUids: Uid[] = [];
  for (const spec of rules.excludeUids) excludeUids.push(await uid(spec, '-exclude-uid'));
  return { proxyUid, excludeUids };
}

/** The ports given by flags, without -proxy-id. */
export const flagPorts = (rules: RuleOptions): ProxyPorts => ({
  inboundPort: rules.inboundPort ?? 0,
  outboundPort: rules.outboundPort,
  excludeInboundPorts: [],
});

/** The configuration from the flags, their UIDs and the proxy's ports (the registration's, or the flags'). */
export function configOf(rules: RuleOptions, uids: ResolvedUids, ports: ProxyPorts): RedirectConfig {
  return {
    proxyUid: uids.proxyUid,
    inboundPort: ports.inboundPort,
    outboundPort: ports.outboundPort,
    excludeInboundPorts: [...ports.excludeInboundPorts, ...rules.excludeInboundPorts],
    excludeOutboundPorts: rules.excludeOutboundPorts,
    excludeOutboundCidrs: rules.excludeOutboundCidrs,
    excludeUids: uids.excludeUids,
    dns: {
      ...(rules.dnsIp === undefined ? {} : { ip: rules.dnsIp }),
      ...(rules.dnsPort === undefined ? {} : { port: rules.dnsPort }),
    },
    dualStack: rules.dualStack,
  };
}

const rangeText = (range: PortRange) => (range.low === range.high ? String(range.low) : `${range.low}:${range.high}`);

/** The explicit flags that give `config` without asking the agent: what the record of an apply holds. */
export function flagsOf(config: RedirectConfig, host: HostOptions): RawOptions {
  return {
    'proxy-uid': String(config.proxyUid),
    'proxy-inbound-port': String(config.inboundPort),
    'proxy-outbound-port': String(config.outboundPort),
    'exclude-inbound-port': config.excludeInboundPorts.map(rangeText),
    'exclude-outbound-port': config.excludeOutboundPorts.map(rangeText),
    'exclude-outbound-cidr': config.excludeOutboundCidrs.map((cidr) => cidr.cidr),
    'exclude-uid': config.excludeUids.map(String),
    ...(config.dns.ip === undefined ? {} : { 'consul-dns-ip': config.dns.ip.address }),
    ...(config.dns.port === undefined ? {} : { 'consul-dns-port': String(config.dns.port) }),
    'dual-stack': config.dualStack,
    backend: host.backend,
    'iptables-mode': host.iptablesMode,
  };
}
