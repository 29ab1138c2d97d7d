import type { Logger, Output } from '../log.ts';
import type { AgentOptions } from '../options.ts';
import type { ProxyPorts } from '../core/registration.ts';
import type { CommandRunner } from '../host/runner.ts';

/** Everything a command needs from the outside world; tests pass their own. */
export interface CommandContext {
  output: Output;
  log: Logger;
  env: NodeJS.ProcessEnv;
  version: string;
  /** Runs programs; with a netns path, inside that network namespace. */
  runner(netns?: string): CommandRunner;
  /** Reads the proxy's ports from the Consul agent. */
  fetchProxyPorts(agent: AgentOptions, proxyId: string, log: Logger): Promise<ProxyPorts>;
}
