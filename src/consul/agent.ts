import { CliError, ExitCode } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { AgentOptions } from '../options.ts';
import type { ProxyPorts } from '../core/registration.ts';

export async function fetchProxyPorts(_agent: AgentOptions, _proxyId: string, _log: Logger): Promise<ProxyPorts> {
  throw new CliError('-proxy-id is not implemented yet', ExitCode.internal);
}
