import { Command, Option } from 'commander';
import { parseBoolean } from './core/values.ts';
import { UsageError } from './errors.ts';
import { COMMANDS, describeFlag, FLAG_NAMES, FLAG_SPECS, isFlagName, type CommandName, type FlagName, type RawOptions } from './flags.ts';

// Commander wiring only: the flags of flags.ts as options, and how a consul-style `-flag` is accepted.
// Values stay raw strings here; options.ts validates them.

/**
 * Rewrites Go-style `-proxy-uid=101` / `-proxy-uid 101` to `--proxy-uid...`, only for known flag names and
 * only where a flag can stand (not as the value of the previous flag). A subcommand given after flags
 * (`--dry-run cleanup`) is moved first, so those flags reach it instead of the default command. No command
 * takes arguments, so any other word (and `--`, which would hide a subcommand) is refused here. `help` and
 * `help <command>` are `--help` and `<command> --help`. The values of a repeated list flag become one
 * comma list where the flag first stands, in their order: options.ts splits every list at commas anyway,
 * and commander's per-option work (~2 µs, an event each) would otherwise cost more than validating them.
 */
export function normaliseArgv(args: readonly string[]): string[] {
  if (args[0] === 'help') return helpArgv(args.slice(1));
  const out: string[] = [];
  const lists = new Map<FlagName, { at: number; values: string[] }>();
  const addToList = (name: FlagName, value: string) => {
    const list = lists.get(name);
    if (list) list.values.push(value);
    else lists.set(name, { at: out.push('') - 1, values: [value] });
  };
  let subcommandAt: number | undefined;
  let expectValue = false;
  let valueOfList: FlagName | undefined;
  for (const arg of args) {
    if (expectValue) {
      if (valueOfList === undefined) out.push(arg);
      else addToList(valueOfList, arg);
      expectValue = false;
      valueOfList = undefined;
      continue;
    }
    // `-name`, `--name`, either with `=value`; plain string work (20,000 flags are handled here one by one).
    const dashes = arg.startsWith('--') ? 2 : arg.startsWith('-') ? 1 : 0;
    const equals = dashes === 0 ? -1 : arg.indexOf('=');
    const name = dashes === 0 ? '' : equals < 0 ? arg.slice(dashes) : arg.slice(dashes, equals);
    if (!isFlagName(name)) {
      if (!arg.startsWith('-') || arg === '--') {
        // The word itself is not shown: it may be a value (a token) whose flag was mistyped.
        if (subcommandAt !== undefined || !COMMANDS.includes(arg as CommandName)) {
          throw new UsageError(`unexpected argument: the commands are ${COMMAND_LIST}; every value follows its flag`);
        }
        subcommandAt = out.length;
      }
      out.push(arg === '-help' ? '--help' : arg === '-version' ? '--version' : arg);
      continue;
    }
    const spec = FLAG_SPECS[name];
    const inline = equals < 0 ? undefined : arg.slice(equals + 1);
    if (spec.arity === 'switch' && inline !== undefined) {
      // Go accepts -dual-stack=true / =false; false must still override a config file's true.
      out.push(parseBoolean(`-${name}`, inline) ? `--${name}` : `--no-${name}`);
      continue;
    }
    if (spec.arity === 'list' && inline !== undefined) addToList(name, inline);
    else if (spec.arity === 'list') {
      expectValue = true;
      valueOfList = name;
    } else {
      out.push(inline === undefined ? `--${name}` : `--${name}=${inline}`);
      expectValue = spec.arity !== 'switch' && inline === undefined;
    }
  }
  for (const [name, { at, values }] of lists) out[at] = `--${name}=${values.join(',')}`;
  // A list flag with no value after it: commander says so.
  if (valueOfList !== undefined) out.push(`--${valueOfList}`);
  if (subcommandAt !== undefined && subcommandAt > 0) out.unshift(...out.splice(subcommandAt, 1));
  return out;
}

const OTHER_COMMANDS = COMMANDS.filter((command) => command !== 'apply');
/** "apply (the default), cleanup, status, watch and verify" */
const COMMAND_LIST = `apply (the default), ${OTHER_COMMANDS.slice(0, -1).join(', ')} and ${OTHER_COMMANDS.at(-1)}`;

function helpArgv(rest: readonly string[]): string[] {
  const [command, ...extra] = rest;
  if (command === undefined) return ['--help'];
  if (extra.length > 0) throw new UsageError(`help takes one command name at most: ${COMMAND_LIST}`);
  if (!COMMANDS.includes(command as CommandName)) throw new UsageError(`help: no such command; the commands are ${COMMAND_LIST}`);
  return [command, '--help'];
}

const camel = (name: string) => name.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());

/** Appends in place: copying the list for each value made thousands of repeated flags quadratic. */
function collect(value: string, previous: string[] | undefined): string[] {
  if (previous === undefined) return [value];
  previous.push(value);
  return previous;
}

function addFlags(command: Command, name: CommandName): Command {
  for (const flag of FLAG_NAMES) {
    const spec = FLAG_SPECS[flag];
    if (!spec.commands.includes(name)) continue;
    const syntax = spec.arity === 'switch' ? `--${flag}` : `--${flag} ${spec.placeholder}`;
    const option = new Option(syntax, describeFlag(spec, name)).helpGroup(spec.group);
    if (spec.arity === 'list') option.argParser(collect);
    command.addOption(option);
    // The target of Go's `-flag=false`: an explicit false, which a config file's true must not beat.
    if (spec.arity === 'switch') command.addOption(new Option(`--no-${flag}`).hideHelp());
  }
  return command;
}

/** The raw values commander collected, keyed by flag name. */
export function rawFlags(command: Command, name: CommandName): RawOptions {
  const opts = command.opts<Record<string, string | string[] | boolean | undefined>>();
  const raw: RawOptions = {};
  for (const flag of FLAG_NAMES) {
    if (FLAG_SPECS[flag].commands.includes(name)) raw[flag] = opts[camel(flag)];
  }
  return raw;
}

export type CommandHandler = (name: CommandName, flags: RawOptions) => Promise<void>;

const EXAMPLES = `
Every flag also works in Consul's single-dash form (-proxy-uid=101), so an existing
\`consul connect redirect-traffic\` command line works with only the program name changed.
A flag given twice keeps its last value, as in Consul; list flags add up.
\`redirect-traffic help <command>\` (or \`<command> --help\`) lists a command's flags.

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
  const invoked = COMMANDS.find((name) => name === args[0]);
  const withFlags = (command: Command, name: CommandName) => (invoked === name ? addFlags(command, name) : command);
  const program = new Command('redirect-traffic')
    .description(
      "Redirect this host's TCP traffic through its Consul service-mesh sidecar (Envoy). " +
        'Installs the same NAT rules as `consul connect redirect-traffic`, as one atomic, idempotent ' +
        'transaction: iptables-restore per table, or one nft -f for both families (-backend=nftables).',
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
    "remove the redirection rules (ours or Consul's) and nothing else, from every family and every backend that -backend and -iptables-mode allow",
  );
  cleanup.action(async () => handle('cleanup', rawFlags(cleanup, 'cleanup')));

  const status = withFlags(new Command('status'), 'status').description(
    'show what is installed; with apply flags, whether it matches (exit 0 in sync, 3 drifted, 4 absent)',
  );
  status.action(async () => handle('status', rawFlags(status, 'status')));

  const watch = withFlags(new Command('watch'), 'watch').description(
    'apply, then keep the rules in place until stopped: repair them when something removes or changes them, and follow the registration with -proxy-id',
  );
  watch.action(async () => handle('watch', rawFlags(watch, 'watch')));

  const verify = withFlags(new Command('verify'), 'verify').description(
    'prove the redirection works with a real connection from an ordinary user (exit 0 works, 5 does not), as root. ' +
      'It connects to 192.0.2.1 (TEST-NET-1) and checks that the connection arrives on the outbound port (and DNS on ' +
      'Consul DNS); nothing leaves the machine when redirection works, but when it does not, one SYN (and with ' +
      '-consul-dns-ip one DNS datagram) goes out to 192.0.2.1 and is never answered',
  ).summary('prove the redirection works with a real connection from an ordinary user (exit 0 works, 5 does not)');
  verify.action(async () => handle('verify', rawFlags(verify, 'verify')));

  for (const sub of [apply, cleanup, status, watch, verify]) program.addCommand(sub.exitOverride());
  return program;
}
