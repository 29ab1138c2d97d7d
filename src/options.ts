import { readFileSync, statSync } from 'node:fs';
import { en } from 'zod/locales';
import * as z from 'zod/mini';
import { CliError, ConfigError, invalidValue, UsageError } from './errors.ts';
import { DEFAULT_OUTBOUND_PORT } from './core/ruleset.ts';
import {
  cidrListSchema,
  durationSchema,
  parseBoolean,
  ipAddressSchema,
  portOrRangeSchema,
  portSchema,
  splitList,
  transformed,
  uidSchema,
  type Cidr,
  type IpAddress,
  type PortRange,
  type UidSpec,
} from './core/values.ts';

// zod/mini: the classic API attaches dozens of methods to every schema it builds, a cost paid at each start.
// Its messages come from the English locale. And a one-shot CLI parses each schema once: zod's generated
// fast path (jit) would cost more to build than it saves.
z.config({ ...en(), jitless: true });

// Every flag, environment variable and config-file key is validated here, once, into typed options.
// Raw values are keyed by flag name (`exclude-uid`), the same names the config file uses.

export type CommandName = 'apply' | 'cleanup' | 'status';
export type RawValue = string | number | boolean | readonly (string | number)[];
export type RawOptions = Record<string, RawValue | undefined>;

/** Where a raw value came from, so an error can point at it. */
export type Source = { kind: 'flag' } | { kind: 'file'; path: string } | { kind: 'env'; variable: string };

export type IptablesMode = 'auto' | 'legacy' | 'nft';

export type BackendPreference = 'auto' | 'iptables' | 'nftables';

export interface HostOptions {
  netns: string | undefined;
  backend: BackendPreference;
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
}

export const DEFAULT_HTTP_ADDR = '127.0.0.1:8500';
export const DEFAULT_AGENT_TIMEOUT_MS = 5_000;

/** Flags whose values are secrets: never echoed in an error. */
const SECRET_KEYS = new Set(['token']);

/** Environment variables standing in for flags, as Consul's CLI reads them. */
const ENV_FALLBACKS: Record<string, string> = {
  'http-addr': 'CONSUL_HTTP_ADDR',
  'ca-file': 'CONSUL_CACERT',
  'ca-path': 'CONSUL_CAPATH',
  'client-cert': 'CONSUL_CLIENT_CERT',
  'client-key': 'CONSUL_CLIENT_KEY',
  'tls-server-name': 'CONSUL_TLS_SERVER_NAME',
  namespace: 'CONSUL_NAMESPACE',
  partition: 'CONSUL_PARTITION',
};

/** Keys that shape the ruleset: given to `status`, they ask it to compare. */
const RULE_KEYS = [
  'proxy-uid',
  'proxy-id',
  'proxy-inbound-port',
  'proxy-outbound-port',
  'exclude-inbound-port',
  'exclude-outbound-port',
  'exclude-outbound-cidr',
  'exclude-uid',
  'consul-dns-ip',
  'consul-dns-port',
  'dual-stack',
] as const;

const LIST_KEYS = ['exclude-inbound-port', 'exclude-outbound-port', 'exclude-outbound-cidr', 'exclude-uid'];

// Printable, no whitespace: nothing a value could use to start a new restore line or a new option.
const plainText = z.string().check(z.regex(/^[\x21-\x7e]+$/, { error: 'must be non-empty printable text without spaces' }));
const pathText = z.string().check(z.regex(/^[^\0\n\r]+$/, { error: 'must be a file path' }));
const flag = z.union([z.boolean(), transformed(z.string(), (text, ctx) => {
  try {
    return parseBoolean('', text);
  } catch {
    ctx.issues.push({ code: 'custom', message: 'must be true or false', input: text });
    return z.NEVER;
  }
})]);
const list = <T extends z.ZodMiniType>(item: T) => z.optional(z.array(item));
const notGiven = () => undefined;

const unsetOrPort = z.optional(z.union([transformed(z.literal('0'), notGiven), transformed(z.literal(0), notGiven), portSchema]));

/** Every key a flag or config file may set. Strict: an unknown config key is an error. */
const rawSchema = z.strictObject({
  'proxy-uid': z.optional(uidSchema),
  'proxy-id': z.optional(plainText),
  // Consul's int flags default to 0, and generated command lines pass it: 0 means "not given".
  'proxy-inbound-port': unsetOrPort,
  'proxy-outbound-port': z.optional(portSchema),
  'exclude-inbound-port': list(portOrRangeSchema),
  'exclude-outbound-port': list(portOrRangeSchema),
  'exclude-outbound-cidr': z.optional(cidrListSchema),
  'exclude-uid': list(uidSchema),
  'consul-dns-ip': z.optional(ipAddressSchema),
  'consul-dns-port': unsetOrPort,
  'dual-stack': z.optional(flag),
  netns: z.optional(pathText),
  'iptables-mode': z.optional(z.enum(['auto', 'legacy', 'nft'], { error: 'must be auto, legacy or nft' })),
  backend: z.optional(z.enum(['auto', 'iptables', 'nftables'], { error: 'must be auto, iptables or nftables' })),
  'allow-ssh-capture': z.optional(flag),
  'http-addr': z.optional(plainText),
  token: z.optional(plainText),
  'token-file': z.optional(pathText),
  'ca-file': z.optional(pathText),
  'ca-path': z.optional(pathText),
  'client-cert': z.optional(pathText),
  'client-key': z.optional(pathText),
  'tls-server-name': z.optional(plainText),
  namespace: z.optional(plainText),
  partition: z.optional(plainText),
  'node-name': z.optional(plainText),
  timeout: z.optional(durationSchema.check(z.refine((ms) => ms > 0, { error: 'must be longer than 0' }))),
  wait: z.optional(durationSchema),
  'dry-run': z.optional(flag),
  debug: z.optional(flag),
  json: z.optional(flag),
  config: z.optional(pathText),
});
type Parsed = z.output<typeof rawSchema>;

/** Keys that take no effect in a config file (they describe the invocation, not the setup). */
const INVOCATION_KEYS = new Set(['config', 'dry-run', 'debug', 'json']);

/** A usage error, or a config error (exit 78) when the key's value came from the config file. */
function errorFor(key: string, sources: Record<string, Source>, message: string): CliError {
  return sources[key]?.kind === 'file' ? new ConfigError(message) : new UsageError(message);
}

function badValue(key: string, sources: Record<string, Source>, value: string, reason: string): CliError {
  return errorFor(key, sources, invalidValue(describeSource(key, sources[key]), value, reason).message);
}

function describeSource(key: string, source: Source | undefined): string {
  if (source?.kind === 'file') return `key "${key}" in ${source.path}`;
  if (source?.kind === 'env') return source.variable;
  return `-${key}`;
}

function rawValueAt(raw: RawOptions, path: readonly PropertyKey[]): string {
  const [key, index] = path;
  const value = raw[String(key)];
  const item = Array.isArray(value) && typeof index === 'number' ? value[index] : value;
  if (item === undefined) return '';
  return typeof item === 'string' ? item : JSON.stringify(item);
}

function validate(raw: RawOptions, sources: Record<string, Source>): Parsed {
  const result = rawSchema.safeParse(raw);
  if (result.success) return result.data;
  const issue = result.error.issues[0];
  if (!issue) throw new UsageError('invalid options');
  if (issue.code === 'unrecognized_keys') {
    const key = issue.keys[0] ?? '';
    const file = Object.values(sources).find((s) => s.kind === 'file');
    const where = file?.kind === 'file' ? file.path : 'the config file';
    throw new ConfigError(`unknown key ${JSON.stringify(key)} in ${where}: keys are flag names without dashes, e.g. "exclude-uid"`);
  }
  const key = String(issue.path[0] ?? '');
  if (SECRET_KEYS.has(key)) {
    throw errorFor(key, sources, `invalid value for ${describeSource(key, sources[key])} (not shown): ${issue.message}`);
  }
  throw badValue(key, sources, rawValueAt(raw, issue.path), issue.message);
}

/** Reads a text file named by the user; `describe` says which one, for the error that names the reason. */
export function readUserFile(path: string, describe: string, kind: typeof UsageError | typeof ConfigError = UsageError): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (error) {
    throw new kind(`cannot read ${describe}: ${(error as NodeJS.ErrnoException).code ?? 'unreadable'}`);
  }
}

/** Reads `-config`: a JSON object whose keys are flag names. */
export function readConfigFile(path: string): RawOptions {
  const text = readUserFile(path, `-config file ${JSON.stringify(path)}`, ConfigError);
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
    if (INVOCATION_KEYS.has(key)) throw new ConfigError(`key "${key}" in ${path} is only accepted on the command line`);
  }
  return data as RawOptions;
}

/** Comma lists become single items; config files may give a list or one comma-separated string. */
function normaliseLists(raw: RawOptions): RawOptions {
  const out: RawOptions = { ...raw };
  for (const key of LIST_KEYS) {
    const value = out[key];
    const items: unknown[] = Array.isArray(value) ? value : [value];
    // Anything but strings and numbers is left for the schema to reject, naming the key.
    if (value === undefined || !items.every((item) => typeof item === 'string' || typeof item === 'number')) continue;
    out[key] = splitList(items.map(String));
  }
  return out;
}

/**
 * Layers the sources (flags over the config file over the environment), validates the result and
 * returns it with where each key came from. The agent's environment variables are only read with
 * -proxy-id: without it nothing is asked of the agent, so they cannot matter (as with Consul).
 */
export function mergeSources(flags: RawOptions, env: NodeJS.ProcessEnv): { parsed: Parsed; sources: Record<string, Source> } {
  // No prototype: a "__proto__" key in a config file must be an ordinary unknown key, not a prototype.
  const sources: Record<string, Source> = Object.create(null);
  const merged: RawOptions = Object.create(null);
  const configPath = typeof flags['config'] === 'string' ? flags['config'] : undefined;
  const layers: [RawOptions, Source][] = [
    ...(configPath === undefined ? [] : [[readConfigFile(configPath), { kind: 'file', path: configPath }] as [RawOptions, Source]]),
    [flags, { kind: 'flag' }],
  ];
  for (const [values, source] of layers) {
    for (const [key, value] of Object.entries(values)) {
      if (value === undefined) continue;
      merged[key] = value;
      sources[key] = source;
    }
  }
  if (merged['proxy-id'] !== undefined) {
    for (const [key, variable] of Object.entries(ENV_FALLBACKS)) {
      const value = env[variable];
      if (merged[key] === undefined && value !== undefined && value !== '') {
        merged[key] = value;
        sources[key] = { kind: 'env', variable };
      }
    }
  }
  return { parsed: validate(normaliseLists(merged), sources), sources };
}

/** Checks that a path option names something that exists, and is a file or directory when it must be. */
function existingPath(key: string, sources: Record<string, Source>, path: string, kind: 'file' | 'directory' | 'any'): string {
  const problem = (() => {
    try {
      const stats = statSync(path);
      if (kind === 'file' && stats.isDirectory()) return 'is a directory, not a file';
      if (kind === 'directory' && !stats.isDirectory()) return 'is not a directory';
      return undefined;
    } catch {
      return 'no such file or directory';
    }
  })();
  if (problem === undefined) return path;
  throw badValue(key, sources, path, problem);
}

function hostOptions(parsed: Parsed, sources: Record<string, Source>): HostOptions {
  return {
    netns: parsed.netns === undefined ? undefined : existingPath('netns', sources, parsed.netns, 'any'),
    backend: parsed.backend ?? 'auto',
    iptablesMode: parsed['iptables-mode'] ?? 'auto',
  };
}

/** Consul's checks, in Consul's order (reference section 2.1). */
function ruleOptions(parsed: Parsed): RuleOptions {
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
function resolveToken(parsed: Parsed, sources: Record<string, Source>, env: NodeJS.ProcessEnv) {
  const candidates: { file?: string; token?: string; label: string }[] = [];
  if (parsed['token-file'] !== undefined) {
    candidates.push({ file: parsed['token-file'], label: describeSource('token-file', sources['token-file']) });
  }
  if (parsed.token !== undefined) candidates.push({ token: parsed.token, label: describeSource('token', sources['token']) });
  if (env['CONSUL_HTTP_TOKEN_FILE']) candidates.push({ file: env['CONSUL_HTTP_TOKEN_FILE'], label: 'CONSUL_HTTP_TOKEN_FILE' });
  if (env['CONSUL_HTTP_TOKEN']) candidates.push({ token: env['CONSUL_HTTP_TOKEN'], label: 'CONSUL_HTTP_TOKEN' });
  // The command line beats the config file, which beats the environment; within one, the file beats the token.
  const rank = (label: string) => (label.startsWith('-') ? 0 : label.startsWith('key ') ? 1 : 2);
  const chosen = candidates.sort((a, b) => rank(a.label) - rank(b.label))[0];
  if (!chosen) return { token: undefined, tokenSource: undefined };
  let token = chosen.token;
  if (chosen.file !== undefined) {
    token = readUserFile(chosen.file, `the ACL token file ${chosen.file} (${chosen.label})`).trim();
  }
  if (token === undefined || !/^[\x21-\x7e]*$/.test(token)) {
    throw new UsageError(`the ACL token from ${chosen.label} contains characters an HTTP header cannot carry (not shown)`);
  }
  return { token: token === '' ? undefined : token, tokenSource: chosen.label };
}

function agentOptions(parsed: Parsed, sources: Record<string, Source>, env: NodeJS.ProcessEnv): AgentOptions {
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

function common(parsed: Parsed): CommonOptions {
  return { dryRun: parsed['dry-run'] ?? false };
}

export function applyOptions(flags: RawOptions, env: NodeJS.ProcessEnv): ApplyOptions {
  const { parsed, sources } = mergeSources(flags, env);
  const rules = ruleOptions(parsed);
  return {
    ...common(parsed),
    host: hostOptions(parsed, sources),
    rules,
    agent: rules.proxyId === undefined ? undefined : agentOptions(parsed, sources, env),
    allowSshCapture: parsed['allow-ssh-capture'] ?? false,
  };
}

export function cleanupOptions(flags: RawOptions, env: NodeJS.ProcessEnv): CleanupOptions {
  const { parsed, sources } = mergeSources(flags, env);
  return { ...common(parsed), host: hostOptions(parsed, sources) };
}

export function statusOptions(flags: RawOptions, env: NodeJS.ProcessEnv): StatusOptions {
  const { parsed, sources } = mergeSources(flags, env);
  // Any flag about the rules asks for a comparison (and then -proxy-uid is required, as for an apply).
  const wantsComparison = RULE_KEYS.some((key) => parsed[key] !== undefined);
  const rules = wantsComparison ? ruleOptions(parsed) : undefined;
  return {
    host: hostOptions(parsed, sources),
    rules,
    agent: rules?.proxyId === undefined ? undefined : agentOptions(parsed, sources, env),
    json: parsed.json ?? false,
  };
}
