import type { TableSummary } from './dialect.ts';

// Prometheus' text exposition format (version 0.0.4), for node_exporter's textfile collector: what `watch`
// and `status -metrics-file` know about the rules, as a pure function of a snapshot.

/** One table of ours as the last check found it. */
export interface MetricsTable {
  /** `iptables-nft`, `iptables-legacy` or `nftables`. */
  backend: string;
  /** As `status` names it: `IPv4`, `IPv6` or `inet consul_tproxy`. */
  table: string;
  summary: TableSummary;
}

export interface MetricsSnapshot {
  /** Whether the rules are exactly what the flags ask for; undefined when nothing was compared (status without rule flags). */
  inSync: boolean | undefined;
  /** Whether any of our rules are installed, in any backend. */
  installed: boolean;
  /** Repairs since `watch` started; undefined for `status`, which repairs nothing and so reports no counter. */
  repairs: number | undefined;
  /** When the rules were last compared (ms since the epoch). */
  lastCheckMs: number;
  /** When the last repair was made (ms since the epoch); watch only, once it has repaired something. */
  lastRepairMs?: number | undefined;
  /** With -proxy-id under `watch`: whether the last request to the Consul agent was answered. */
  agentUp?: boolean | undefined;
  tables: readonly MetricsTable[];
}

type Labels = Readonly<Record<string, string>>;

interface Family {
  name: string;
  help: string;
  type: 'gauge' | 'counter';
  samples: readonly { labels?: Labels; value: number }[];
}

/** A label value as the format wants it: backslash, double quote and line feed escaped. */
export const escapeLabelValue = (value: string) => value.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');

/** HELP text escapes backslash and line feed only. */
const escapeHelp = (text: string) => text.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');

/** A sample value: integers as such, others without exponent noise; NaN and infinities by the format's names. */
function formatValue(value: number): string {
  if (Number.isNaN(value)) return 'NaN';
  if (!Number.isFinite(value)) return value > 0 ? '+Inf' : '-Inf';
  return Number.isInteger(value) ? String(value) : String(Number(value.toFixed(3)));
}

function formatLabels(labels: Labels | undefined): string {
  const entries = Object.entries(labels ?? {});
  if (entries.length === 0) return '';
  return `{${entries.map(([name, value]) => `${name}="${escapeLabelValue(value)}"`).join(',')}}`;
}

const bool = (value: boolean) => (value ? 1 : 0);

/** The metrics file's text: each family with its # HELP and # TYPE lines, families without samples left out. */
export function renderMetrics(snapshot: MetricsSnapshot): string {
  const tableLabels = (t: MetricsTable) => ({ backend: t.backend, table: t.table });
  const families: Family[] = [
    {
      name: 'redirect_traffic_in_sync',
      help: 'Whether the installed redirection rules are exactly the ones asked for (1) or not (0).',
      type: 'gauge',
      samples: snapshot.inSync === undefined ? [] : [{ value: bool(snapshot.inSync) }],
    },
    {
      name: 'redirect_traffic_installed',
      help: 'Whether any redirection rules of ours (or Consul\'s) are installed.',
      type: 'gauge',
      samples: [{ value: bool(snapshot.installed) }],
    },
    {
      name: 'redirect_traffic_repairs_total',
      help: 'Rule repairs made by redirect-traffic watch since it started.',
      type: 'counter',
      samples: snapshot.repairs === undefined ? [] : [{ value: snapshot.repairs }],
    },
    {
      name: 'redirect_traffic_last_check_timestamp_seconds',
      help: 'When the installed rules were last compared with the wanted ones, in seconds since the epoch.',
      type: 'gauge',
      samples: [{ value: snapshot.lastCheckMs / 1000 }],
    },
    {
      name: 'redirect_traffic_last_repair_timestamp_seconds',
      help: 'When redirect-traffic watch last repaired the rules, in seconds since the epoch.',
      type: 'gauge',
      samples: snapshot.lastRepairMs === undefined ? [] : [{ value: snapshot.lastRepairMs / 1000 }],
    },
    {
      name: 'redirect_traffic_agent_up',
      help: 'Whether the Consul agent answered the last request for the proxy registration (watch with -proxy-id).',
      type: 'gauge',
      samples: snapshot.agentUp === undefined ? [] : [{ value: bool(snapshot.agentUp) }],
    },
    {
      name: 'redirect_traffic_rules',
      help: 'Rules in each of our chains, by backend and table (nftables: the base chains included).',
      type: 'gauge',
      samples: snapshot.tables.flatMap((t) =>
        Object.entries(t.summary.chains).map(([chain, count]) => ({ labels: { ...tableLabels(t), chain }, value: count })),
      ),
    },
    {
      name: 'redirect_traffic_hook_rules',
      help: 'Rules that send packets into our chains (iptables: the jumps in PREROUTING and OUTPUT; nftables: the base chains\' rules).',
      type: 'gauge',
      samples: snapshot.tables.map((t) => ({ labels: tableLabels(t), value: t.summary.hooks.length })),
    },
    {
      name: 'redirect_traffic_set_elements',
      help: 'Elements in each of our named sets (nftables), by backend, table and set.',
      type: 'gauge',
      samples: snapshot.tables.flatMap((t) =>
        Object.entries(t.summary.sets ?? {}).map(([set, count]) => ({ labels: { ...tableLabels(t), set }, value: count })),
      ),
    },
  ];
  const lines: string[] = [];
  for (const family of families) {
    if (family.samples.length === 0) continue;
    lines.push(`# HELP ${family.name} ${escapeHelp(family.help)}`, `# TYPE ${family.name} ${family.type}`);
    for (const sample of family.samples) lines.push(`${family.name}${formatLabels(sample.labels)} ${formatValue(sample.value)}`);
  }
  return `${lines.join('\n')}\n`;
}
