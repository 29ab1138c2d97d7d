import { buildRuleset, type RedirectConfig, type Ruleset } from '../core/ruleset.ts';
import type { Family } from '../core/values.ts';
import { resolveUid } from '../host/system.ts';
import type { AgentOptions, RuleOptions } from '../options.ts';
import type { CommandContext } from './context.ts';

/** Turns validated flags (plus the agent's answer, with -proxy-id) into the rulesets to install. */
export async function resolveRulesets(
  rules: RuleOptions,
  agent: AgentOptions | undefined,
  context: CommandContext,
): Promise<{ config: RedirectConfig; rulesets: Ruleset[] }> {
  const runner = context.runner();
  const proxyUid = await resolveUid(rules.proxyUid, '-proxy-uid', runner);
  const excludeUids = [];
  for (const spec of rules.excludeUids) excludeUids.push(await resolveUid(spec, '-exclude-uid', runner));

  const fromAgent =
    rules.proxyId !== undefined && agent !== undefined
      ? await context.fetchProxyPorts(agent, rules.proxyId, context.log)
      : undefined;
  const config: RedirectConfig = {
    proxyUid,
    inboundPort: fromAgent?.inboundPort ?? rules.inboundPort ?? 0,
    outboundPort: fromAgent?.outboundPort ?? rules.outboundPort,
    excludeInboundPorts: [...(fromAgent?.excludeInboundPorts ?? []), ...rules.excludeInboundPorts],
    excludeOutboundPorts: rules.excludeOutboundPorts,
    excludeOutboundCidrs: rules.excludeOutboundCidrs,
    excludeUids,
    dns: {
      ...(rules.dnsIp === undefined ? {} : { ip: rules.dnsIp }),
      ...(rules.dnsPort === undefined ? {} : { port: rules.dnsPort }),
    },
  };
  const families: Family[] = rules.dualStack ? [4, 6] : [4];
  return { config, rulesets: families.map((family) => buildRuleset(config, family)) };
}
