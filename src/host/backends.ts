import type { Backends } from '../commands/context.ts';
import type { BackendProvider } from './backend.ts';
import type { CommandRunner } from './runner.ts';
import { iptablesProvider, systemDefaultVariant } from './iptables.ts';
import { nftablesProvider } from './nftables.ts';

/** Every backend this build knows; adding one is adding it here. */
const PROVIDERS: readonly BackendProvider[] = [iptablesProvider, nftablesProvider];

/** The backends installed here; their programs run through `runner`, and `notify` hears what they wait for. */
export const installedBackends = (runner: (netns?: string) => CommandRunner, notify: (message: string) => void): Backends => ({
  async survey(netns, kinds) {
    const access = { runner: runner(netns), inNetns: netns !== undefined, notify };
    const providers = kinds === undefined ? PROVIDERS : PROVIDERS.filter((provider) => kinds.includes(provider.kind));
    return (await Promise.all(providers.map((provider) => provider.survey(access)))).flat();
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
  async listen(netns, backend, onChange) {
    const access = { runner: runner(netns), inNetns: netns !== undefined, notify };
    for (const provider of PROVIDERS) {
      const feed = await provider.listen(access, backend, onChange);
      if (feed) return feed;
    }
    return undefined;
  },
});
