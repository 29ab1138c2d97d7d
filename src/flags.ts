import * as z from 'zod/mini';
import {
  cidrListSchema,
  durationSchema,
  ipAddressSchema,
  parseBoolean,
  portOrRangeSchema,
  portSchema,
  portText,
  transformed,
  uidSchema,
} from './core/values.ts';
import { tcpServicePort } from './host/services.ts';

// The one description of every flag: commander's options (cli.ts), the config-file keys, the environment
// fallbacks and the validation (options.ts) are all derived from this table. A flag name is also its
// config-file key.

export type CommandName = 'apply' | 'cleanup' | 'status' | 'watch' | 'verify';
export const COMMANDS: readonly CommandName[] = ['apply', 'cleanup', 'status', 'watch', 'verify'];

interface CommonSpec {
  /** Help text; a function where the wording depends on the command. */
  description: string | ((command: CommandName) => string);
  /** The help section it is listed under. */
  group: string;
  commands: readonly CommandName[];
  /** Validates the value from any source; a list flag's value arrives as a list of single items. */
  schema: z.ZodMiniType;
  /** Consul's environment variable for the flag, read only with -proxy-id (as Consul reads them only then). */
  env?: string;
  /** A secret: its value is never shown in an error. */
  secret?: true;
  /** Shapes the ruleset: given to `status`, it asks for a comparison. */
  rule?: true;
  /** Describes the invocation, not the setup: refused in a config file. */
  commandLineOnly?: true;
}

/**
 * `switch`: a boolean (`-dual-stack`, `-dual-stack=false`). `single`: one value; given twice, the last one wins,
 * as with Go's flag package. `list`: repeatable, each value also a comma list.
 */
export type FlagSpec =
  | (CommonSpec & { arity: 'switch'; placeholder?: never })
  | (CommonSpec & { arity: 'single' | 'list'; placeholder: string });

const RULES = 'Redirection:';
const AGENT = 'Consul agent (with -proxy-id):';
const HOST = 'Host:';
const RUN = 'Run:';
/** The commands that take the flags describing the rules (and the agent's, to read them from). */
const WITH_RULES: readonly CommandName[] = ['apply', 'status', 'watch', 'verify'];

// Printable, no whitespace: nothing a value could use to start a new restore line or a new option.
const plainText = z.string().check(z.regex(/^[\x21-\x7e]+$/, { error: 'must be non-empty printable text without spaces' }));
const pathText = z.string().check(z.regex(/^[^\0\n\r]+$/, { error: 'must be a file path' }));

/** A switch: a boolean from the command line or a config file, or Go's boolean words in a config file. */
const switchSchema = transformed(z.union([z.boolean(), z.string()]), (value, ctx) => {
  if (typeof value === 'boolean') return value;
  try {
    return parseBoolean('', value);
  } catch {
    ctx.issues.push({ code: 'custom', message: 'must be true or false', input: value });
    return z.NEVER;
  }
});

/** Consul's int flags default to 0, and generated command lines pass it: 0 means "not given". */
const portOrUnsetSchema = transformed(z.union([z.string(), z.int()]), (value, ctx) => {
  const port = portText(String(value));
  if (port === undefined) {
    ctx.issues.push({ code: 'custom', message: 'must be a port number from 1 to 65535 (0: not given)', input: value });
    return z.NEVER;
  }
  return port === 0 ? undefined : port;
});

const choice = <const T extends readonly [string, ...string[]]>(values: T) =>
  z.enum(values, { error: `must be ${values.slice(0, -1).join(', ')} or ${values.at(-1)}` });

export const FLAGS = {
  'proxy-uid': {
    arity: 'single', placeholder: '<uid|user>', group: RULES, commands: WITH_RULES, rule: true, schema: uidSchema,
    description: 'UID or user name the proxy (Envoy) runs as; its own traffic is never redirected (required)',
  },
  'proxy-id': {
    arity: 'single', placeholder: '<id>', group: RULES, commands: WITH_RULES, rule: true, schema: plainText,
    description: 'service ID of the proxy registration; ports and exclusions are read from the agent',
  },
  'proxy-inbound-port': {
    arity: 'single', placeholder: '<port>', group: RULES, commands: WITH_RULES, rule: true, schema: portOrUnsetSchema,
    description: "proxy's inbound listener port (required without -proxy-id)",
  },
  'proxy-outbound-port': {
    arity: 'single', placeholder: '<port>', group: RULES, commands: WITH_RULES, rule: true, schema: portSchema,
    description: "proxy's outbound listener port (default: 15001)",
  },
  'exclude-inbound-port': {
    arity: 'list', placeholder: '<port|a:b>', group: RULES, commands: WITH_RULES, rule: true, schema: z.array(portOrRangeSchema(tcpServicePort)),
    description: 'inbound port, service name or range never redirected; repeatable, comma lists allowed',
  },
  'exclude-outbound-port': {
    arity: 'list', placeholder: '<port|a:b>', group: RULES, commands: WITH_RULES, rule: true, schema: z.array(portOrRangeSchema(tcpServicePort)),
    description: 'outbound port, service name or range never redirected; repeatable, comma lists allowed',
  },
  'exclude-outbound-cidr': {
    arity: 'list', placeholder: '<cidr>', group: RULES, commands: WITH_RULES, rule: true, schema: cidrListSchema,
    description: 'outbound IPv4/IPv6 address or prefix never redirected; repeatable, comma lists allowed',
  },
  'exclude-uid': {
    arity: 'list', placeholder: '<uid|user>', group: RULES, commands: WITH_RULES, rule: true, schema: z.array(uidSchema),
    description: 'UID or user name whose traffic is never redirected (e.g. the consul agent); repeatable',
  },
  'consul-dns-ip': {
    arity: 'single', placeholder: '<ip>', group: RULES, commands: WITH_RULES, rule: true, schema: ipAddressSchema,
    description: 'send DNS (port 53) to Consul DNS at this address; alone, all port-53 traffic goes there',
  },
  'consul-dns-port': {
    arity: 'single', placeholder: '<port>', group: RULES, commands: WITH_RULES, rule: true, schema: portOrUnsetSchema,
    description: 'send DNS for the DNS address (default 127.0.0.1) to this port',
  },
  'dual-stack': {
    arity: 'switch', group: RULES, commands: WITH_RULES, rule: true, schema: switchSchema,
    description: 'also redirect IPv6 (ip6tables, or the same nftables table)',
  },
  'http-addr': {
    arity: 'single', placeholder: '<address>', group: AGENT, commands: WITH_RULES, env: 'CONSUL_HTTP_ADDR', schema: plainText,
    description: 'agent address: host:port, http(s)://host:port or unix:///path (env CONSUL_HTTP_ADDR; default 127.0.0.1:8500)',
  },
  token: {
    arity: 'single', placeholder: '<token>', group: AGENT, commands: WITH_RULES, secret: true, schema: plainText,
    description: 'ACL token; prefer -token-file, a command line is visible to every user (env CONSUL_HTTP_TOKEN)',
  },
  'token-file': {
    arity: 'single', placeholder: '<path>', group: AGENT, commands: WITH_RULES, schema: pathText,
    description: 'file holding the ACL token (env CONSUL_HTTP_TOKEN_FILE)',
  },
  'ca-file': {
    arity: 'single', placeholder: '<path>', group: AGENT, commands: WITH_RULES, env: 'CONSUL_CACERT', schema: pathText,
    description: 'CA bundle to verify the agent (env CONSUL_CACERT)',
  },
  'ca-path': {
    arity: 'single', placeholder: '<dir>', group: AGENT, commands: WITH_RULES, env: 'CONSUL_CAPATH', schema: pathText,
    description: 'directory of CA certificates (env CONSUL_CAPATH)',
  },
  'client-cert': {
    arity: 'single', placeholder: '<path>', group: AGENT, commands: WITH_RULES, env: 'CONSUL_CLIENT_CERT', schema: pathText,
    description: 'client certificate for mutual TLS (env CONSUL_CLIENT_CERT)',
  },
  'client-key': {
    arity: 'single', placeholder: '<path>', group: AGENT, commands: WITH_RULES, env: 'CONSUL_CLIENT_KEY', schema: pathText,
    description: 'client key for mutual TLS (env CONSUL_CLIENT_KEY)',
  },
  'tls-server-name': {
    arity: 'single', placeholder: '<name>', group: AGENT, commands: WITH_RULES, env: 'CONSUL_TLS_SERVER_NAME', schema: plainText,
    description: 'server name to verify the agent certificate against (env CONSUL_TLS_SERVER_NAME)',
  },
  namespace: {
    arity: 'single', placeholder: '<name>', group: AGENT, commands: WITH_RULES, env: 'CONSUL_NAMESPACE', schema: plainText,
    description: 'Consul Enterprise namespace of the proxy (env CONSUL_NAMESPACE)',
  },
  partition: {
    arity: 'single', placeholder: '<name>', group: AGENT, commands: WITH_RULES, env: 'CONSUL_PARTITION', schema: plainText,
    description: 'Consul Enterprise admin partition of the proxy (env CONSUL_PARTITION)',
  },
  'node-name': {
    arity: 'single', placeholder: '<node>', group: AGENT, commands: WITH_RULES, schema: plainText,
    description: 'look the proxy up in the catalog on this node instead of the local agent',
  },
  timeout: {
    arity: 'single', placeholder: '<duration>', group: AGENT, commands: WITH_RULES,
    schema: durationSchema.check(z.refine((ms) => ms > 0, { error: 'must be longer than 0' })),
    description: 'limit for each request to the agent (default: 5s)',
  },
  wait: {
    arity: 'single', placeholder: '<duration>', group: AGENT, commands: WITH_RULES, schema: durationSchema,
    description: 'keep retrying this long while the agent is down or the proxy not yet registered (default: 0, one try)',
  },
  netns: {
    arity: 'single', placeholder: '<path>', group: HOST, commands: COMMANDS, schema: pathText,
    description: (command) => {
      const verb = {
        apply: 'apply',
        cleanup: 'remove the rules',
        status: 'read the rules',
        watch: 'apply and keep the rules',
        verify: 'test the redirection',
      }[command];
      return `${verb} inside this network namespace, e.g. /var/run/netns/web`;
    },
  },
  backend: {
    arity: 'single', placeholder: '<backend>', group: HOST, commands: COMMANDS, schema: choice(['auto', 'iptables', 'nftables']),
    description:
      'firewall backend: auto (keep whichever holds the rules, else iptables if installed, else nftables), iptables or nftables',
  },
  'iptables-mode': {
    arity: 'single', placeholder: '<mode>', group: HOST, commands: COMMANDS, schema: choice(['auto', 'legacy', 'nft']),
    description: 'binaries of the iptables backend: auto, legacy or nft (default: auto)',
  },
  // Accepted by status too, so it takes an apply's exact flags.
  'allow-ssh-capture': {
    arity: 'switch', group: HOST, commands: WITH_RULES, schema: switchSchema,
    description: "apply even though this SSH session's port would be redirected",
  },
  config: {
    arity: 'single', placeholder: '<file>', group: RUN, commands: COMMANDS, commandLineOnly: true, schema: pathText,
    description: 'JSON file of flag names to values; flags on the command line win over it',
  },
  'dry-run': {
    arity: 'switch', group: RUN, commands: ['apply', 'cleanup'], commandLineOnly: true, schema: switchSchema,
    description: 'print the transaction (iptables-restore or nft input) instead of applying it; needs no root',
  },
  json: {
    arity: 'switch', group: RUN, commands: ['status', 'verify'], commandLineOnly: true, schema: switchSchema,
    description: (command) => `print the ${command === 'verify' ? 'result' : 'status'} as JSON`,
  },
  interval: {
    arity: 'single', placeholder: '<duration>', group: RUN, commands: ['watch'],
    schema: durationSchema.check(z.refine((ms) => ms >= 100, { error: 'must be at least 100ms' })),
    description:
      'how often to compare the rules where the kernel does not report changes (iptables-legacy); where it does, a safety-net check runs every 60s, or this if longer (default: 5s)',
  },
  'metrics-file': {
    arity: 'single', placeholder: '<path>', group: RUN, commands: ['watch', 'status'], schema: pathText,
    description: "write Prometheus metrics to this file (node_exporter's textfile collector), replaced atomically",
  },
  debug: {
    arity: 'switch', group: RUN, commands: COMMANDS, commandLineOnly: true, schema: switchSchema,
    description: 'log each step and show stack traces of errors',
  },
} as const satisfies Record<string, FlagSpec>;

export type FlagName = keyof typeof FLAGS;

/** The table seen through the common spec type, for code that walks every flag. */
export const FLAG_SPECS: Readonly<Record<FlagName, FlagSpec>> = FLAGS;
export const FLAG_NAMES = Object.keys(FLAGS) as FlagName[];

export function isFlagName(name: string): name is FlagName {
  return Object.hasOwn(FLAGS, name);
}

export function describeFlag(spec: FlagSpec, command: CommandName): string {
  return typeof spec.description === 'string' ? spec.description : spec.description(command);
}

/** A value as it arrives: a string from the command line or environment, anything JSON from a config file. */
export type RawValue = string | number | boolean | readonly (string | number)[];
export type RawOptions = { [K in FlagName]?: RawValue | undefined };

/** Validated values, typed by each flag's schema. */
export type FlagValues = { [K in FlagName]?: z.output<(typeof FLAGS)[K]['schema']> };
