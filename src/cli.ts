import { Command, Option } from 'commander';
import { parseBoolean } from './core/values.ts';
import { UsageError } from './errors.ts';
import type { CommandName, RawOptions } from './options.ts';

// Commander wiring only: which flags exist, their help, and how a consul-style `-flag` is accepted.
// Values stay raw strings here; options.ts validates them.

interface FlagSpec {
  name: string;
  /** Placeholder for a flag that takes a value; absent for a boolean switch. */
  value?: string;
  repeatable?: boolean;
  description: string;
  commands: readonly CommandName[];
  group: string;
}

const RULES = 'Redirection:';
const AGENT = 'Consul agent (with -proxy-id):';
const HOST = 'Host:';
const RUN = 'Run:';
const ALL: readonly CommandName[] = ['apply', 'cleanup', 'status'];
const APPLY_STATUS: readonly CommandName[] = ['apply', 'status'];

export const FLAGS: readonly FlagSpec[] = [
  { name: 'proxy-uid', value: '<uid|user>', group: RULES, commands: APPLY_STATUS, description: 'UID or user name the proxy (Envoy) runs as; its own traffic is never redirected (required)' },
  { name: 'proxy-id', value: '<id>', group: RULES, commands: APPLY_STATUS, description: 'service ID of the proxy registration; ports and exclusions are read from the agent' },
  { name: 'proxy-inbound-port', value: '<port>', group: RULES, commands: APPLY_STATUS, description: "proxy's inbound listener port (required without -proxy-id)" },
  { name: 'proxy-outbound-port', value: '<port>', group: RULES, commands: APPLY_STATUS, description: "proxy's outbound listener port (default: 15001)" },
  { name: 'exclude-inbound-port', value: '<port|a:b>', repeatable: true, group: RULES, commands: APPLY_STATUS, description: 'inbound port or range never redirected; repeatable, comma lists allowed' },
  { name: 'exclude-outbound-port', value: '<port|a:b>', repeatable: true, group: RULES, commands: APPLY_STATUS, description: 'outbound port or range never redirected; repeatable, comma lists allowed' },
  { name: 'exclude-outbound-cidr', value: '<cidr>', repeatable: true, group: RULES, commands: APPLY_STATUS, description: 'outbound IPv4/IPv6 address or prefix never redirected; repeatable, comma lists allowed' },
  { name: 'exclude-uid', value: '<uid|user>', repeatable: true, group: RULES, commands: APPLY_STATUS, description: 'UID or user name whose traffic is never redirected (e.g. the consul agent); repeatable' },
  { name: 'consul-dns-ip', value: '<ip>', group: RULES, commands: APPLY_STATUS, description: 'send DNS (port 53) to Consul DNS at this address; alone, all port-53 traffic goes there' },
  { name: 'consul-dns-port', value: '<port>', group: RULES, commands: APPLY_STATUS, description: 'send DNS for the DNS address (default 127.0.0.1) to this port' },
  { name: 'dual-stack', group: RULES, commands: APPLY_STATUS, description: 'also redirect IPv6 with ip6tables' },
  { name: 'http-addr', value: '<address>', group: AGENT, commands: APPLY_STATUS, description: 'agent address: host:port, http(s)://host:port or unix:///path (env CONSUL_HTTP_ADDR; default 127.0.0.1:8500)' },
  { name: 'token', value: '<token>', group: AGENT, commands: APPLY_STATUS, description: 'ACL token; prefer -token-file, a command line is visible to every user (env CONSUL_HTTP_TOKEN)' },
  { name: 'token-file', value: '<path>', group: AGENT, commands: APPLY_STATUS, description: 'file holding the ACL token (env CONSUL_HTTP_TOKEN_FILE)' },
  { name: 'ca-file', value: '<path>', group: AGENT, commands: APPLY_STATUS, description: 'CA bundle to verify the agent (env CONSUL_CACERT)' },
  { name: 'ca-path', value: '<dir>', group: AGENT, commands: APPLY_STATUS, description: 'directory of CA certificates (env CONSUL_CAPATH)' },
  { name: 'client-cert', value: '<path>', group: AGENT, commands: APPLY_STATUS, description: 'client certificate for mutual TLS (env CONSUL_CLIENT_CERT)' },
  { name: 'client-key', value: '<path>', group: AGENT, commands: APPLY_STATUS, description: 'client key for mutual TLS (env CONSUL_CLIENT_KEY)' },
  { name: 'tls-server-name', value: '<name>', group: AGENT, commands: APPLY_STATUS, description: 'server name to verify the agent certificate against (env CONSUL_TLS_SERVER_NAME)' },
  { name: 'namespace', value: '<name>', group: AGENT, commands: APPLY_STATUS, description: 'Consul Enterprise namespace of the proxy (env CONSUL_NAMESPACE)' },
  { name: 'partition', value: '<name>', group: AGENT, commands: APPLY_STATUS, description: 'Consul Enterprise admin partition of the proxy (env CONSUL_PARTITION)' },
  { name: 'node-name', value: '<node>', group: AGENT, commands: APPLY_STATUS, description: 'look the proxy up in the catalog on this node instead of the local agent' },
  { name: 'timeout', value: '<duration>', group: AGENT, commands: APPLY_STATUS, description: 'limit for each request to the agent (default: 5s)' },
  { name: 'wait', value: '<duration>', group: AGENT, commands: APPLY_STATUS, description: 'keep retrying this long while the agent is down or the proxy not yet registered (default: 0, one try)' },
  { name: 'netns', value: '<path>', group: HOST, commands: ALL, description: 'apply inside this network namespace, e.g. /var/run/netns/web' },
  { name: 'backend', value: '<backend>', group: HOST, commands: ALL, description: 'firewall backend: auto (keep whichever holds the rules, else iptables if installed, else nftables), iptables or nftables' },
  { name: 'iptables-mode', value: '<mode>', group: HOST, commands: ALL, description: 'iptables backend: auto, legacy or nft (default: auto)' },
  // Accepted by status too, so it takes an apply's exact flags.
  { name: 'allow-ssh-capture', group: HOST, commands: APPLY_STATUS, description: "apply even though this SSH session's port would be redirected" },
  { name: 'config', value: '<file>', group: RUN, commands: ALL, description: 'JSON file of flag names to values; flags on the command line win over it' },
  { name: 'dry-run', group: RUN, commands: ['apply', 'cleanup'], description: 'print the iptables-restore input instead of applying it; needs no root' },
  { name: 'json', group: RUN, commands: ['status'], description: 'print the status as JSON' },
  { name: 'debug', group: RUN, commands: ALL, description: 'log each step and show stack traces of errors' },
];

const byName = new Map(FLAGS.map((spec) => [spec.name, spec]));

/**
 * Rewrites Go-style `-proxy-uid=101` / `-proxy-uid 101` to `--proxy-uid...`, only for known flag names and
 * only where a flag can stand (not as the value of the previous flag). A subcommand given after flags
 * (`--dry-run cleanup`) is moved first, so those flags reach it instead of the default command. No command
 * takes arguments, so any other word (and `--`, which would hide a subcommand) is refused here.
 */
export function normaliseArgv(args: readonly string[]): string[] {
  const out: string[] = [];
  let subcommandAt: number | undefined;
  let expectValue = false;
  for (const arg of args) {
    if (expectValue) {
      out.push(arg);
      expectValue = false;
      continue;
    }
    const match = /^--?([a-z][a-z0-9-]*)(=[\s\S]*)?$/.exec(arg);
    const name = match?.[1];
    const spec = name === undefined ? undefined : byName.get(name);
    if (!match || !spec) {
      if (!arg.startsWith('-') || arg === '--') {
        // The word itself is not shown: it may be a value (a token) whose flag was mistyped.
        if (subcommandAt !== undefined || !ALL.includes(arg as CommandName)) {
          throw new UsageError('unexpected argument: the commands are apply (the default), cleanup and status, and every value follows its flag');
        }
        subcommandAt = out.length;
      }
      out.push(arg === '-help' ? '--help' : arg === '-version' ? '--version' : arg);
      continue;
    }
    const inline = match[2];
    if (spec.value === undefined && inline !== undefined) {
      // Go accepts -dual-stack=true / =false; false must still override a config file's true.
      out.push(parseBoolean(`-${name}`, inline.slice(1)) ? `--${name}` : `--no-${name}`);
      continue;
    }
    out.push(`--${name}${inline ?? ''}`);
    expectValue = spec.value !== undefined && inline === undefined;
  }
  if (subcommandAt !== undefined && subcommandAt > 0) out.unshift(...out.splice(subcommandAt, 1));
  return out;
}

const camel = (name: string) => name.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
const collect = (value: string, previous: string[] | undefined) => [...(previous ?? []), value];

function addFlags(command: Command, name: CommandName): Command {
  for (const spec of FLAGS) {
    if (!spec.commands.includes(name)) continue;
    const option = new Option(`--${spec.name}${spec.value ? ` ${spec.value}` : ''}`, spec.description).helpGroup(spec.group);
    if (spec.repeatable) option.argParser(collect);
    command.addOption(option);
    // The target of Go's `-flag=false`: an explicit false, which a config file's true must not beat.
    if (spec.value === undefined) command.addOption(new Option(`--no-${spec.name}`).hideHelp());
  }
  return command;
}

/** The raw values commander collected, keyed by flag name. */
export function rawFlags(command: Command, name: CommandName): RawOptions {
  const opts = command.opts<Record<string, string | string[] | boolean | undefined>>();
  const raw: RawOptions = {};
  for (const spec of FLAGS) {
    if (spec.commands.includes(name)) raw[spec.name] = opts[camel(spec.name)];
  }
  return raw;
}

export type CommandHandler = (name: CommandName, flags: RawOptions) => Promise<void>;

const EXAMPLES = `
Every flag also works in Consul's single-dash form (-proxy-uid=101), so an existing
\`consul connect redirect-traffic\` command line works with only the program name changed.

Examples:
  # See the rules for a sidecar on a VM, without root and without touching the host
  $ redirect-traffic --dry-run -proxy-uid=envoy -proxy-inbound-port=20000 \\
      -exclude-uid=consul -exclude-inbound-port=22

  # Read the ports from the local agent, waiting up to 60s for it at boot
  $ redirect-traffic -proxy-id=web-sidecar-proxy -proxy-uid=envoy -exclude-uid=consul \\
      -exclude-inbound-port=22 -wait=60s

  # Is what is installed what these flags ask for? (exit 0 in sync, 3 drifted, 4 absent)
  $ redirect-traffic status -proxy-id=web-sidecar-proxy -proxy-uid=envoy -exclude-inbound-port=22

  # Remove the rules (ours or Consul's) and nothing else
  $ redirect-traffic cleanup
`;

/**
 * Builds a fresh program for `args` (as normaliseArgv leaves them, a subcommand first); `handle` receives
 * the command name and its raw flags. Only the command `args` invoke gets its flags: building every
 * command's options costs more than a whole dry run's parsing.
 */
export function createProgram(version: string, handle: CommandHandler, args: readonly string[]): Command {
  const invoked = ALL.find((name) => name === args[0]);
  const withFlags = (command: Command, name: CommandName) => (invoked === name ? addFlags(command, name) : command);
  const program = new Command('redirect-traffic')
    .description(
      "Redirect this host's TCP traffic through its Consul service-mesh sidecar (Envoy). " +
        'Installs the same iptables NAT rules as `consul connect redirect-traffic`, as one atomic, ' +
        'idempotent iptables-restore transaction.',
    )
    .version(version, '-v, --version', 'print the version')
    .helpOption('-h, --help', 'show help')
    .showSuggestionAfterError()
    // Flags after a subcommand belong to it, not to the default (apply) command.
    .enablePositionalOptions()
    .addHelpText('after', EXAMPLES)
    // Commander adds "[options]" only for subcommands built with their flags, which here is none of them.
    .configureHelp({ subcommandTerm: (command) => `${command.name()} [options]` })
    .exitOverride();

  (invoked === undefined ? addFlags(program, 'apply') : program).action(async () => handle('apply', rawFlags(program, 'apply')));

  const apply = withFlags(new Command('apply'), 'apply').description('install the redirection (the default command)');
  apply.action(async () => handle('apply', rawFlags(apply, 'apply')));

  const cleanup = withFlags(new Command('cleanup'), 'cleanup').description(
    'remove the redirection rules (ours or Consul\'s) from every iptables backend and family, and nothing else',
  );
  cleanup.action(async () => handle('cleanup', rawFlags(cleanup, 'cleanup')));

  const status = withFlags(new Command('status'), 'status').description(
    'show what is installed; with apply flags, whether it matches (exit 0 in sync, 3 drifted, 4 absent)',
  );
  status.action(async () => handle('status', rawFlags(status, 'status')));

  for (const sub of [apply, cleanup, status]) program.addCommand(sub.exitOverride());
  return program;
}
