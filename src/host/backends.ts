import type { Backends } from '../commands/context.ts';
import type { BackendProvider } from './backend.ts';
import { iptablesProvider, systemDefaultVariant } from './iptables.ts';
import { nftablesProvider } from './nftables.ts';

/** Every backend this build knows; adding one is adding it here. */
const PROVIDERS: readonly BackendProvider[] = [iptablesProvider, nftablesProvider];

export const installedBackends: Backends = {
  async survey(runner, inNetns) {
    return (await Promise.all(PROVIDERS.map((provider) => provider.survey(runner, inNetns)))).flat();
  },
  systemDefault: systemDefaultVariant,
  dryRunProvider(host) {
    const installed = PROVIDERS.filter((provider) => provider.installed());
    const wanted = host.backend === 'auto' ? (installed[0] ?? PROVIDERS[0]) : PROVIDERS.find((p) => p.kind === host.backend);
    return wanted ?? (PROVIDERS[0] as BackendProvider);
  },
  dryRunRemovals(host) {
    return PROVIDERS.filter((provider) => host.backend === 'auto' || provider.kind === host.backend);
  },
};
