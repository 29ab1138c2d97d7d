import type { AgentOptions } from '../options.ts';

/**
 * Hides the ACL token and the basic-auth password in `text`. Applied to every answer as it arrives (so a
 * truncated excerpt can never hold part of one) and again to every message and log line.
 */
export function secretHider(agent: AgentOptions): (text: string) => string {
  const secrets = [agent.token, agent.basicAuth?.password].filter((secret): secret is string => !!secret);
  return (text) => secrets.reduce((out, secret) => out.replaceAll(secret, '[hidden]'), text);
}
