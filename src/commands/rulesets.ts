import type { ProxyPorts } from '../core/registration.ts';
import type { RedirectConfig } from '../core/ruleset.ts';
import { resolveUid } from '../host/system.ts';
import type { AgentOptions, RuleOptions } from '../options.ts';
import type { CommandContext } from './context.ts';

/** Turns validated flags (plus the agent's answer, with -proxy-id) into the configuration to install. */
export async function resolveConfig(
  rules: RuleOptions,
  agent: AgentOptions | undefined,
  context: CommandContext,
): Promise<RedirectConfig> {
  const uids = await resolveUids(rules, context);
  const ports =
    rules.proxyId !== undefined && agent !== undefined ? await context.fetchProxyPorts(agent, rules.proxyId, context.log) : flagPorts(rules);
  return configOf(rules, uids, ports);
}

/** The UIDs the rules name, user names resolved once, up front, never at packet time. */
export interface ResolvedUids {
  proxyUid: number;
  excludeUids: number[];
}

export async function resolveUids(rules: RuleOptions, context: CommandContext): Promise<ResolvedUids> {
  const runner = context.runner();
  const proxyUid = await resolveUid(rules.proxyUid, '-proxy-uid', runner);
  const excludeUids = [];
  for (const spec of rules.excludeUids) excludeUids.push(await resolveUid(spec, '-exclude-uid', runner));
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
