import type { Backends } from '../commands/context.ts';
import type { Inventory } from '../core/inventory.ts';
import type { BackendProvider, TableAccess } from './backend.ts';
import { takeInventory } from './inventory.ts';
import type { CommandRunner } from './runner.ts';
import { iptablesProvider, systemDefaultVariant } from './iptables.ts';
import { nftablesProvider } from './nftables.ts';

/** Every backend this build knows; adding one is adding it here. */
const PROVIDERS: readonly BackendProvider[] = [iptablesProvider, nftablesProvider];

/** The backends installed here; their programs run through `runner`, and `notify` hears what they wait for. */
export function installedBackends(runner: (netns?: string) => CommandRunner, notify: (message: string) => void): Backends {
  /** How the providers reach a namespace; its inventory is taken on first use, once. */
  const accessTo = (netns: string | undefined): TableAccess => {
    const namespaceRunner = runner(netns);
    const inNetns = netns !== undefined;
    let taken: Promise<Inventory> | undefined;
    return { runner: namespaceRunner, inNetns, notify, inventory: () => (taken ??= takeInventory(namespaceRunner)) };
  };
  return {
    async survey(netns, kinds) {
      const access = accessTo(netns);
      const providers = kinds === undefined ? PROVIDERS : PROVIDERS.filter((provider) => kinds.includes(provider.kind));
      const tables = (await Promise.all(providers.map((provider) => provider.survey(access)))).flat();
      return { tables, globalIpv6: (await access.inventory()).globalIpv6 };
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
      const access = accessTo(netns);
      for (const provider of PROVIDERS) {
        const feed = await provider.listen(access, backend, onChange);
        if (feed) return feed;
      }
      return undefined;
    },
  };
}
