import type { Backends } from '../commands/context.ts';
import { listsGlobalIpv6 } from '../core/procNet.ts';
import type { BackendProvider, TableAccess } from './backend.ts';
import { batchedReads } from './namespaceReads.ts';
import type { CommandRunner } from './runner.ts';
import { iptablesProvider, systemDefaultVariant } from './iptables.ts';
import { iptablesNftChainsSeen, nftablesProvider } from './nftables.ts';
import { FAMILIES, familyLabel } from '../core/values.ts';

/** Every backend this build knows; adding one is adding it here. */
const PROVIDERS: readonly BackendProvider[] = [iptablesProvider, nftablesProvider];

/** The backends installed here; their programs run through `runner`, and `notify` hears what they wait for. */
export function installedBackends(runner: (netns?: string) => CommandRunner, notify: (message: string) => void): Backends {
  /** How the providers reach a namespace, for one survey. */
  const accessTo = (netns: string | undefined): TableAccess => {
    const namespaceRunner = runner(netns);
    return { runner: namespaceRunner, notify, reads: batchedReads(namespaceRunner) };
  };
  return {
    async survey(netns, kinds) {
      const access = accessTo(netns);
      const providers = kinds === undefined ? PROVIDERS : PROVIDERS.filter((provider) => kinds.includes(provider.kind));
      // Asked for with the providers' first reads, so it comes in the same process; awaited with them, so
      // that a failed read is never left unobserved.
      const [ifInet6, surveys] = await Promise.all([
        access.reads.file('/proc/net/if_inet6'),
        Promise.all(providers.map((provider) => provider.survey(access))),
      ]);
      const tables = surveys.flat();
      // Where no iptables-nft program can read a family's table, nft still sees its chains.
      const unread = kinds === undefined ? FAMILIES.filter((family) => !tables.some((s) => s.table.backend === 'iptables-nft' && s.table.families.includes(family))) : [];
      const seen = await iptablesNftChainsSeen(access.reads, unread);
      return {
        tables,
        globalIpv6: listsGlobalIpv6(ifInet6),
        unmanageable: seen.map(({ family, chains }) => ({ label: `iptables-nft ${familyLabel(family)}`, chains })),
      };
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
