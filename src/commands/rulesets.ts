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
  const runner = context.runner();
  const proxyUid = await resolveUid(rules.proxyUid, '-proxy-uid', runner);
  const excludeUids = [];
  for (const spec of rules.excludeUids) excludeUids.push(await resolveUid(spec, '-exclude-uid', runner));
  const ports =
    rules.proxyId !== undefined && agent !== undefined
      ? await context.fetchProxyPorts(agent, rules.proxyId, context.log)
      : { inboundPort: rules.inboundPort ?? 0, outboundPort: rules.outboundPort, excludeInboundPorts: [] };
  return {
    proxyUid,
    inboundPort: ports.inboundPort,
    outboundPort: ports.outboundPort,
    excludeInboundPorts: [...ports.excludeInboundPorts, ...rules.excludeInboundPorts],
    excludeOutboundPorts: rules.excludeOutboundPorts,
    excludeOutboundCidrs: rules.excludeOutboundCidrs,
    excludeUids,
    dns: {
      ...(rules.dnsIp === undefined ? {} : { ip: rules.dnsIp }),
      ...(rules.dnsPort === undefined ? {} : { port: rules.dnsPort }),
    },
    dualStack: rules.dualStack,
  };
}
