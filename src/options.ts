import { statSync } from 'node:fs';
import { en } from 'zod/locales';
import * as z from 'zod/mini';
import { CliError, UsageError, ConfigError, invalidValue } from './errors.ts';
import { DEFAULT_OUTBOUND_PORT } from './core/ruleset.ts';
import { parseBoolean, splitList, type Cidr, type IpAddress, type PortRange, type UidSpec } from './core/values.ts';
import {
  FLAG_NAMES,
  FLAG_SPECS,
  isFlagName,
  type FlagName,
  type FlagSpec,
  type FlagValues,
  type RawOptions,
} from './flags.ts';
import { FILE_LIMITS, openFailureText, readUserFile } from './userFile.ts';
import { networkNamespaceProblem } from './host/system.ts';

export type { CommandName, RawOptions } from './flags.ts';

// zod/mini: the classic API attaches dozens of methods to every schema it builds, a cost paid at each start.
// Its messages come from the English locale. And a one-shot CLI parses each schema once: zod's generated
// fast path (jit) would cost more to build than it saves. A wrong JSON type in a config file is said plainly.
z.config({
  ...en(),
  jitless: true,
  customError: (issue) => (issue.code === 'invalid_type' ? `must be a ${issue.expected}, not a ${typeof issue.input}` : undefined),
});

// Every flag, environment variable and config-file key is validated here, once, into typed options.
// Raw values are keyed by flag name (`exclude-uid`), the same names the config file uses (see flags.ts).

/** Where a raw value came from, so an error can point at it. */
export type Source = { kind: 'flag' } | { kind: 'file'; path: string } | { kind: 'env'; variable: string };

export type IptablesMode = 'auto' | 'legacy' | 'nft';
export type FirewallBackend = 'auto' | 'iptables' | 'nftables';

export interface HostOptions {
  netns: string | undefined;
  backend: FirewallBackend;
  /** Which binaries the iptables backend uses. */
  iptablesMode: IptablesMode;
}

export interface RuleOptions {
  proxyUid: UidSpec;
  proxyId: string | undefined;
  inboundPort: number | undefined;
  outboundPort: number;
  excludeInboundPorts: PortRange[];
  excludeOutboundPorts: PortRange[];
  excludeOutboundCidrs: Cidr[];
  excludeUids: UidSpec[];
  dnsIp: IpAddress | undefined;
  dnsPort: number | undefined;
  dualStack: boolean;
}

export type TlsFile = 'caFile' | 'caPath' | 'clientCert' | 'clientKey';

/** How to reach the Consul agent. The token is only ever read into memory and sent as a header. */
export interface AgentOptions {
  address: string;
  /** For messages: the flag, variable or config key that gave the address. */
  addressSource: string;
  token: string | undefined;
  /** For messages only: which setting supplied the token (never the token itself). */
  tokenSource: string | undefined;
  caFile: string | undefined;
  caPath: string | undefined;
  clientCert: string | undefined;
  clientKey: string | undefined;
  /** The flag, variable or config key that named each TLS file. */
  tlsFileSources: Record<TlsFile, FileSetting>;
  tlsServerName: string | undefined;
  /** CONSUL_HTTP_SSL: use https when the address has no scheme. */
  useTls: boolean;
  /** CONSUL_HTTP_SSL_VERIFY=false turns certificate verification off. */
  verifyTls: boolean;
  basicAuth: { username: string; password: string } | undefined;
  namespace: string | undefined;
  partition: string | undefined;
  nodeName: string | undefined;
  timeoutMs: number;
  waitMs: number;
}

export interface CommonOptions {
  dryRun: boolean;
}

export interface ApplyOptions extends CommonOptions {
  host: HostOptions;
  rules: RuleOptions;
  /** Present only with -proxy-id: without it nothing is asked of the agent (as Consul). */
  agent: AgentOptions | undefined;
  allowSshCapture: boolean;
}

export type CleanupOptions = CommonOptions & { host: HostOptions };

export interface StatusOptions {
  host: HostOptions;
  /** Undefined when no rule flags were given: report what is installed without comparing. */
  rules: RuleOptions | undefined;
  agent: AgentOptions | undefined;
  json: boolean;
  metricsFile: string | undefined;
}

export interface WatchOptions extends Omit<ApplyOptions, 'dryRun'> {
  intervalMs: number;
  metricsFile: string | undefined;
}

export interface VerifyOptions {
  host: HostOptions;
  rules: RuleOptions;
  agent: AgentOptions | undefined;
  json: boolean;
}

export const DEFAULT_WATCH_INTERVAL_MS = 5_000;

export const DEFAULT_HTTP_ADDR = '127.0.0.1:8500';
export const DEFAULT_AGENT_TIMEOUT_MS = 5_000;

type Sources = { [K in FlagName]?: Source };
/** Config-file values, keyed by flag name; their shape is not checked yet. */
type ConfigValues = { [K in FlagName]?: unknown };

const flagsWhere = (test: (spec: FlagSpec) => boolean) => FLAG_NAMES.filter((name) => test(FLAG_SPECS[name]));
/** [flag, variable] for the flags Consul also reads from the environment. */
const ENV_FALLBACKS = FLAG_NAMES.flatMap((name) => {
  const variable = FLAG_SPECS[name].env;
  return variable === undefined ? [] : [[name, variable] as const];
});
const RULE_FLAGS = flagsWhere((spec) => spec.rule === true);
const LIST_FLAGS = flagsWhere((spec) => spec.arity === 'list');

/** Every key a flag or config file may set; readConfigFile has already refused any other key. */
const rawSchema = z.object(Object.fromEntries(FLAG_NAMES.map((name) => [name, z.optional(FLAG_SPECS[name].schema)])));

/** A usage error, or a config error (exit 78) when the key's value came from the config file. */
function errorFor(key: FlagName, sources: Sources, message: string): CliError {
  return sources[key]?.kind === 'file' ? new ConfigError(message) : new UsageError(message);
}

/** An invalid value, named with where it came from; shown unless it is a secret or a structure. */
function invalid(key: FlagName, sources: Sources, value: string | undefined, reason: string): CliError {
  const where = describeSource(key, sources[key]);
  if (FLAG_SPECS[key].secret) return errorFor(key, sources, `invalid value for ${where} (not shown): ${reason}`);
  if (value === undefined) return errorFor(key, sources, `invalid value for ${where}: ${reason}`);
  return errorFor(key, sources, invalidValue(where, value, reason).message);
}

function describeSource(key: FlagName, source: Source | undefined): string {
  if (source?.kind === 'file') return `key "${key}" in ${source.path}`;
  if (source?.kind === 'env') return source.variable;
  return `-${key}`;
}

/** A setting naming a file: how messages name it, and what a bad file is (a config error from the config file). */
export interface FileSetting {
  label: string;
  errorKind: typeof UsageError | typeof ConfigError;
}

const fileSetting = (key: FlagName, sources: Sources): FileSetting => ({
  label: describeSource(key, sources[key]),
  errorKind: sources[key]?.kind === 'file' ? ConfigError : UsageError,
});

const isItem = (value: unknown) => typeof value === 'string' || Number.isSafeInteger(value);
const isScalar = (value: unknown) => ['string', 'number', 'boolean'].includes(typeof value);
const jsonKind = (value: unknown) =>
  value === null ? 'null' : Array.isArray(value) ? 'a list' : typeof value === 'object' ? 'an object' : `a ${typeof value}`;

const EXPECTED_SHAPE: Record<FlagSpec['arity'], string> = {
  switch: 'must be true or false',
  single: 'must be a string or a whole number',
  list: 'must be a string, a whole number or a list of them',
};

/**
 * Refuses a value that does not have its flag's JSON shape: one level deep, never recursing into what a config
 * file nests (to any depth), and never printing a structure. The schemas then only ever see scalars and flat lists.
 */
function checkShape(key: FlagName, sources: Sources, value: unknown): void {
  const { arity } = FLAG_SPECS[key];
  if (arity === 'switch' ? typeof value === 'boolean' || typeof value === 'string' : isItem(value)) return;
  if (isScalar(value)) throw invalid(key, sources, String(value), EXPECTED_SHAPE[arity]);
  if (arity === 'list' && Array.isArray(value)) {
    const item = value.find((entry) => !isItem(entry));
    if (item === undefined) return;
    throw invalid(key, sources, undefined, `${EXPECTED_SHAPE[arity]}, not a list holding ${jsonKind(item)}`);
  }
  throw invalid(key, sources, undefined, `${EXPECTED_SHAPE[arity]}, not ${jsonKind(value)}`);
}

/** The item a schema issue points at; after checkShape and normaliseLists, always a scalar. */
function rawValueAt(raw: RawOptions, path: readonly PropertyKey[]): string {
  const [key, index] = path;
  const value = raw[key as FlagName];
  const item = Array.isArray(value) && typeof index === 'number' ? value[index] : value;
  return item === undefined ? '' : String(item);
}

function validate(raw: RawOptions, sources: Sources): FlagValues {
  const result = rawSchema.safeParse(raw);
  if (result.success) return result.data as FlagValues;
  const issue = result.error.issues[0];
  const key = String(issue?.path[0]);
  if (!issue || !isFlagName(key)) throw new UsageError('invalid options');
  throw invalid(key, sources, rawValueAt(raw, issue.path), issue.message);
}

/** Reads `-config`: a JSON object whose keys are flag names. */
export function readConfigFile(path: string): ConfigValues {
  const text = readUserFile(path, '-config', FILE_LIMITS.config, ConfigError);
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (error) {
    throw new ConfigError(`config file ${path} is not valid JSON: ${(error as Error).message}`);
  }
  if (typeof data !== 'object' || data === null || Array.isArray(data)) {
    throw new ConfigError(`config file ${path} must hold a JSON object of flag names to values`);
  }
  for (const key of Object.keys(data)) {
    if (!isFlagName(key)) {
      throw new ConfigError(`unknown key ${JSON.stringify(key)} in ${path}: keys are flag names without dashes, e.g. "exclude-uid"`);
    }
    if (FLAG_SPECS[key].commandLineOnly) throw new ConfigError(`key "${key}" in ${path} is only accepted on the command line`);
  }
  return data;
}

/**
 * Layers the sources (flags over the config file over the environment), validates the result and
 * returns it with where each key came from. The agent's environment variables are only read with
 * -proxy-id: without it nothing is asked of the agent, so they cannot matter (as with Consul).
 */
export function mergeSources(flags: RawOptions, env: NodeJS.ProcessEnv): { parsed: FlagValues; sources: Sources } {
  // No prototype: no key can reach Object.prototype, whatever a config file holds.
  const sources: Sources = Object.create(null);
  const merged: ConfigValues = Object.create(null);
  const configPath = typeof flags.config === 'string' ? flags.config : undefined;
  const config = configPath === undefined ? undefined : readConfigFile(configPath);
  const layers: [ConfigValues, Source][] = [
    ...(config === undefined ? [] : [[config, { kind: 'file', path: configPath }] as [ConfigValues, Source]]),
    [flags, { kind: 'flag' }],
  ];
  for (const [values, source] of layers) {
    for (const key of Object.keys(values) as FlagName[]) {
      if (values[key] === undefined) continue;
      merged[key] = values[key];
      sources[key] = source;
    }
  }
  // A file value a flag overrides is checked all the same: the file is shared, and the next run may lack the flag.
  if (config !== undefined && configPath !== undefined) checkOverridden(config, configPath, sources);
  if (merged['proxy-id'] !== undefined) {
    for (const [key, variable] of ENV_FALLBACKS) {
      const value = env[variable];
      if (merged[key] === undefined && value !== undefined && value !== '') {
        merged[key] = value;
        sources[key] = { kind: 'env', variable };
      }
    }
  }
  return { parsed: checked(merged, sources), sources };
}

function checkOverridden(config: ConfigValues, path: string, sources: Sources): void {
  const overridden: ConfigValues = Object.create(null);
  const fileSources: Sources = Object.create(null);
  for (const key of Object.keys(config) as FlagName[]) {
    if (sources[key]?.kind === 'file') continue;
    overridden[key] = config[key];
    fileSources[key] = { kind: 'file', path };
  }
  checked(overridden, fileSources);
}

/** Shape-checks, splits the lists of and validates layered values. */
function checked(values: ConfigValues, sources: Sources): FlagValues {
  for (const key of FLAG_NAMES) {
    if (values[key] !== undefined) checkShape(key, sources, values[key]);
  }
  const raw = values as RawOptions;
  // Comma lists become single items; config files may give a list or one comma-separated string.
  for (const key of LIST_FLAGS) {
    const value = raw[key];
    if (value !== undefined) raw[key] = splitList((Array.isArray(value) ? value : [value]).map(String));
  }
  return validate(raw, sources);
}

/** Checks that a path option names something that exists, and is a file, directory or namespace file when it must be. */
function existingPath(key: FlagName, sources: Sources, path: string, kind: 'file' | 'directory' | 'namespace'): string {
  const problem = (() => {
    try {
      const stats = statSync(path);
      if (kind === 'file' && stats.isDirectory()) return 'is a directory, not a file';
      if (kind === 'directory' && !stats.isDirectory()) return 'is not a directory';
      return kind === 'namespace' ? networkNamespaceProblem(path) : undefined;
    } catch (error) {
      return openFailureText(error);
    }
  })();
  if (problem === undefined) return path;
  throw invalid(key, sources, path, problem);
}

function hostOptions(parsed: FlagValues, sources: Sources): HostOptions {
  return {
    netns: parsed.netns === undefined ? undefined : existingPath('netns', sources, parsed.netns, 'namespace'),
    backend: parsed.backend ?? 'auto',
    iptablesMode: parsed['iptables-mode'] ?? 'auto',
  };
}

/** Consul's checks, in Consul's order (reference section 2.1). */
function ruleOptions(parsed: FlagValues): RuleOptions {
  const proxyUid = parsed['proxy-uid'];
  if (proxyUid === undefined) throw new UsageError('-proxy-uid is required');
  const proxyId = parsed['proxy-id'];
  const inboundPort = parsed['proxy-inbound-port'];
  const outboundPort = parsed['proxy-outbound-port'] ?? DEFAULT_OUTBOUND_PORT;
  if (proxyId === undefined && inboundPort === undefined) {
    throw new UsageError('either -proxy-id or -proxy-inbound-port is required');
  }
  if (proxyId !== undefined && (inboundPort !== undefined || outboundPort !== DEFAULT_OUTBOUND_PORT)) {
    throw new UsageError(
      '-proxy-inbound-port and -proxy-outbound-port cannot be combined with -proxy-id: the ports are read from the proxy registration',
    );
  }
  const dualStack = parsed['dual-stack'] ?? false;
  const dnsIp = parsed['consul-dns-ip'];
  if (dnsIp?.family === 6 && !dualStack) {
    throw new UsageError(`-consul-dns-ip ${dnsIp.address} is an IPv6 address: add -dual-stack to redirect IPv6 DNS`);
  }
  return {
    proxyUid,
    proxyId,
    inboundPort,
    outboundPort,
    excludeInboundPorts: parsed['exclude-inbound-port'] ?? [],
    excludeOutboundPorts: parsed['exclude-outbound-port'] ?? [],
    excludeOutboundCidrs: parsed['exclude-outbound-cidr'] ?? [],
    excludeUids: parsed['exclude-uid'] ?? [],
    dnsIp,
    dnsPort: parsed['consul-dns-port'],
    dualStack,
  };
}

const envBoolean = (env: NodeJS.ProcessEnv, variable: string, fallback: boolean) => {
  const value = env[variable];
  return value === undefined || value === '' ? fallback : parseBoolean(variable, value);
};

/**
 * Reads the token with Consul's precedence (-token-file, -token, CONSUL_HTTP_TOKEN_FILE, CONSUL_HTTP_TOKEN),
 * the config file's keys ranking between the command line and the environment.
 */
function resolveToken(parsed: FlagValues, sources: Sources, env: NodeJS.ProcessEnv) {
  const candidates: { file?: string; token?: string; from: Source['kind']; label: string }[] = [];
  const setting = (key: 'token-file' | 'token') => ({ from: sources[key]?.kind ?? 'flag', label: describeSource(key, sources[key]) });
  if (parsed['token-file'] !== undefined) candidates.push({ file: parsed['token-file'], ...setting('token-file') });
  if (parsed.token !== undefined) candidates.push({ token: parsed.token, ...setting('token') });
  const envFile = env['CONSUL_HTTP_TOKEN_FILE'];
  if (envFile) candidates.push({ file: envFile, from: 'env', label: 'CONSUL_HTTP_TOKEN_FILE' });
  const envToken = env['CONSUL_HTTP_TOKEN'];
  if (envToken) candidates.push({ token: envToken, from: 'env', label: 'CONSUL_HTTP_TOKEN' });
  // The command line beats the config file, which beats the environment; within one, the file beats the token
  // (the sort is stable, and files were added first).
  const rank = { flag: 0, file: 1, env: 2 };
  const chosen = candidates.sort((a, b) => rank[a.from] - rank[b.from])[0];
  if (!chosen) return { token: undefined, tokenSource: undefined };
  let token = chosen.token;
  const errorKind = chosen.from === 'file' ? ConfigError : UsageError;
  if (chosen.file !== undefined) token = readUserFile(chosen.file, chosen.label, FILE_LIMITS.token, errorKind).trim();
  if (token === undefined || !/^[\x21-\x7e]*$/.test(token)) {
    throw new errorKind(`the ACL token from ${chosen.label} contains characters an HTTP header cannot carry (not shown)`);
  }
  return { token: token === '' ? undefined : token, tokenSource: chosen.label };
}

function agentOptions(parsed: FlagValues, sources: Sources, env: NodeJS.ProcessEnv): AgentOptions {
  const auth = env['CONSUL_HTTP_AUTH'];
  const [username = '', ...password] = auth ? auth.split(':') : [];
  const file = (key: 'ca-file' | 'client-cert' | 'client-key') =>
    parsed[key] === undefined ? undefined : existingPath(key, sources, parsed[key], 'file');
  const clientCert = file('client-cert');
  const clientKey = file('client-key');
  if ((clientCert === undefined) !== (clientKey === undefined)) {
    throw new UsageError('-client-cert and -client-key must be given together');
  }
  return {
    address: parsed['http-addr'] ?? DEFAULT_HTTP_ADDR,
    addressSource: describeSource('http-addr', sources['http-addr']),
    ...resolveToken(parsed, sources, env),
    caFile: file('ca-file'),
    caPath: parsed['ca-path'] === undefined ? undefined : existingPath('ca-path', sources, parsed['ca-path'], 'directory'),
    clientCert,
    clientKey,
    tlsFileSources: {
      caFile: fileSetting('ca-file', sources),
      caPath: fileSetting('ca-path', sources),
      clientCert: fileSetting('client-cert', sources),
      clientKey: fileSetting('client-key', sources),
    },
    tlsServerName: parsed['tls-server-name'],
    useTls: envBoolean(env, 'CONSUL_HTTP_SSL', false),
    verifyTls: envBoolean(env, 'CONSUL_HTTP_SSL_VERIFY', true),
    basicAuth: auth ? { username, password: password.join(':') } : undefined,
    namespace: parsed.namespace,
    partition: parsed.partition,
    nodeName: parsed['node-name'],
    timeoutMs: parsed.timeout ?? DEFAULT_AGENT_TIMEOUT_MS,
    waitMs: parsed.wait ?? 0,
  };
}

function common(parsed: FlagValues): CommonOptions {
  return { dryRun: parsed['dry-run'] ?? false };
}

/** What an apply needs: the rules, where to apply them, and the agent to read them from with -proxy-id. */
function applySettings(parsed: FlagValues, sources: Sources, env: NodeJS.ProcessEnv): Omit<ApplyOptions, 'dryRun'> {
  const rules = ruleOptions(parsed);
  return {
    host: hostOptions(parsed, sources),
    rules,
    agent: rules.proxyId === undefined ? undefined : agentOptions(parsed, sources, env),
    allowSshCapture: parsed['allow-ssh-capture'] ?? false,
  };
}

export function applyOptions(flags: RawOptions, env: NodeJS.ProcessEnv): ApplyOptions {
  const { parsed, sources } = mergeSources(flags, env);
  return { ...common(parsed), ...applySettings(parsed, sources, env) };
}

export function watchOptions(flags: RawOptions, env: NodeJS.ProcessEnv): WatchOptions {
  const { parsed, sources } = mergeSources(flags, env);
  return {
    ...applySettings(parsed, sources, env),
    intervalMs: parsed.interval ?? DEFAULT_WATCH_INTERVAL_MS,
    metricsFile: parsed['metrics-file'],
  };
}

export function verifyOptions(flags: RawOptions, env: NodeJS.ProcessEnv): VerifyOptions {
  const { parsed, sources } = mergeSources(flags, env);
  const { host, rules, agent } = applySettings(parsed, sources, env);
  return { host, rules, agent, json: parsed.json ?? false };
}

export function cleanupOptions(flags: RawOptions, env: NodeJS.ProcessEnv): CleanupOptions {
  const { parsed, sources } = mergeSources(flags, env);
  return { ...common(parsed), host: hostOptions(parsed, sources) };
}

export function statusOptions(flags: RawOptions, env: NodeJS.ProcessEnv): StatusOptions {
  const { parsed, sources } = mergeSources(flags, env);
  // Any flag about the rules asks for a comparison (and then -proxy-uid is required, as for an apply).
  const wantsComparison = RULE_FLAGS.some((key) => parsed[key] !== undefined);
  const rules = wantsComparison ? ruleOptions(parsed) : undefined;
  return {
    host: hostOptions(parsed, sources),
    rules,
    agent: rules?.proxyId === undefined ? undefined : agentOptions(parsed, sources, env),
    json: parsed.json ?? false,
    metricsFile: parsed['metrics-file'],
  };
}
