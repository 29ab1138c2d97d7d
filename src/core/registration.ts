import * as z from 'zod/mini';
import { BadRegistrationError } from '../errors.ts';
import { DEFAULT_OUTBOUND_PORT } from './ruleset.ts';
import { portText, singlePort, transformed, type PortRange } from './values.ts';

// The agent's JSON, validated, and what Consul derives from a proxy registration (reference section 2.2).
// Pure: the HTTP side lives in src/consul. Plain z.object everywhere, so fields a newer agent adds are ignored.

/** What a proxy registration contributes to the ruleset (reference section 2.2). */
export interface ProxyPorts {
  inboundPort: number;
  outboundPort: number;
  /** Prometheus, stats, expose paths and exposed checks, in Consul's order. */
  excludeInboundPorts: PortRange[];
}

const PORT_OR_ZERO = 'must be a port number from 0 to 65535';
const port = z.int({ error: PORT_OR_ZERO }).check(z.minimum(0, { error: PORT_OR_ZERO }), z.maximum(65535, { error: PORT_OR_ZERO }));
const object = <T extends z.core.$ZodLooseShape>(shape: T) => z.object(shape, { error: 'must be an object' });

/** Consul decodes Proxy.Config weakly (mapstructure.WeakDecode): a number, a numeric string, or "" for 0. */
const bindPort = z.optional(
  transformed(z.unknown(), (value, ctx) => {
    if (value === undefined || value === null || value === '') return 0;
    // Leading zeros are refused rather than guessed at: Go's ParseInt(s, 0) would read "010" as octal 8.
    const number = typeof value === 'string' ? (portText(value) ?? value) : value;
    if (typeof number === 'number' && Number.isInteger(number) && number >= 0 && number <= 65535) return number;
    ctx.issues.push({ code: 'custom', message: `${PORT_OR_ZERO}, as a number or a numeric string`, input: value });
    return z.NEVER;
  }),
);

/** The port of an Envoy bind address (`host:port`, `[v6]:port`, `:port`, as Go's net.SplitHostPort splits them). */
const bindAddressPort = transformed(z.nullish(z.string({ error: 'must be a host:port string' })), (text, ctx) => {
  if (!text) return undefined;
  const portPart = /^(?:\[[^[\]]*\]|[^:[\]]*):([^:[\]]*)$/.exec(text)?.[1];
  if (portPart === undefined) {
    ctx.issues.push({ code: 'custom', message: 'must be host:port, [ipv6]:port or :port', input: text });
    return z.NEVER;
  }
  const number = portText(portPart) ?? 0;
  if (number < 1 || number > 65535) {
    ctx.issues.push({ code: 'custom', message: 'must end in a port number from 1 to 65535', input: text });
    return z.NEVER;
  }
  return singlePort(number);
});

const proxySchema = object({
  DestinationServiceName: z.nullish(z.string({ error: 'must be a string' })),
  TransparentProxy: z.nullish(object({ OutboundListenerPort: z.nullish(port) })),
  Config: z.nullish(
    object({
      bind_port: bindPort,
      envoy_prometheus_bind_addr: bindAddressPort,
      envoy_stats_bind_addr: bindAddressPort,
    }),
  ),
  Expose: z.nullish(
    object({
      Checks: z.nullish(z.boolean({ error: 'must be true or false' })),
      Paths: z.nullish(z.array(object({ ListenerPort: z.nullish(port) }), { error: 'must be an array' })),
    }),
  ),
});

/** `GET /v1/agent/service/<id>`: an `api.AgentService`, reduced to the fields Consul's command reads. */
export const agentServiceSchema = object({ Port: port, Proxy: z.nullish(proxySchema) });
export type AgentService = z.output<typeof agentServiceSchema>;

/** `GET /v1/catalog/node-services/<node>`; an unknown node may come back as null. */
export const nodeServicesSchema = z.nullable(
  object({ Services: z.nullish(z.array(agentServiceSchema, { error: 'must be an array' })) }),
);

/** `GET /v1/agent/checks`: checks keyed by check ID. */
export const agentChecksSchema = z.nullable(z.record(z.string(), object({ ExposedPort: z.nullish(port) })));
export type AgentChecks = z.output<typeof agentChecksSchema>;

const truncate = (text: string, max: number) => (text.length > max ? `${text.slice(0, max)}...` : text);

/** Agent-supplied text as one quoted, bounded line: safe to put in a message. */
export function quoteExcerpt(text: string, max = 200): string {
  return JSON.stringify(truncate(text, max));
}

function fieldPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const key of path) {
    if (typeof key === 'number') out += `[${key}]`;
    else if (typeof key === 'string' && /^[A-Za-z_][\w-]*$/.test(key)) out += out === '' ? key : `.${key}`;
    else out += `[${JSON.stringify(String(key))}]`;
  }
  return out || 'the answer';
}

function valueAt(data: unknown, path: readonly PropertyKey[]): unknown {
  let value = data;
  for (const key of path) {
    if (typeof value !== 'object' || value === null) return undefined;
    value = (value as Record<PropertyKey, unknown>)[key];
  }
  return value;
}

/** A value the agent sent, as JSON, or its kind where it nests too deep to write out. */
function valueText(value: unknown): string {
  try {
    return JSON.stringify(value);
  } catch {
    return Array.isArray(value) ? 'a list nested too deep to show' : 'an object nested too deep to show';
  }
}

/**
 * Parses and validates one answer of the agent. Anything unexpected is one line naming the field, what
 * is wrong and the value found, never a partial result. `agentText` makes what the agent sent fit to quote
 * (it hides the secrets an agent may echo), applied before anything is cut short.
 */
export function decodeAgentAnswer<S extends z.ZodMiniType>(
  body: string,
  schema: S,
  subject: string,
  agentText: (text: string) => string = (text) => text,
): z.output<S> {
  const invalid = (detail: string) =>
    new BadRegistrationError(`invalid answer from the Consul agent for ${subject}: ${detail}`);
  let data: unknown;
  try {
    data = JSON.parse(body);
  } catch {
    throw invalid(`not JSON (got ${quoteExcerpt(agentText(body), 80)})`);
  }
  const result = schema.safeParse(data);
  if (result.success) return result.data;
  const issue = result.error.issues[0];
  const path = issue?.path ?? [];
  const value = valueAt(data, path);
  const found = value === undefined ? 'it is missing' : `got ${truncate(agentText(valueText(value)), 80)}`;
  throw invalid(`${fieldPath(path)} ${issue?.message ?? 'is invalid'} (${found})`);
}

/** A registration with a Proxy block: Consul's only test that the ID names a proxy (gateways pass too). */
export type ProxyRegistration = AgentService & { Proxy: NonNullable<AgentService['Proxy']> };

export function requireProxy(service: AgentService, proxyId: string): ProxyRegistration {
  if (service.Proxy == null) {
    throw new BadRegistrationError(
      `service ${JSON.stringify(proxyId)} is not a proxy (its registration has no Proxy block): ` +
        `-proxy-id takes the proxy's own service ID, such as "web-sidecar-proxy"`,
    );
  }
  return { ...service, Proxy: service.Proxy };
}

/**
 * The service whose checks' exposed ports are excluded, when Expose.Checks is on. Consul filters on
 * DestinationServiceName even when it is empty (which matches no check), and so does this.
 */
export function exposedChecksService(proxy: ProxyRegistration): string | undefined {
  return proxy.Proxy.Expose?.Checks === true ? (proxy.Proxy.DestinationServiceName ?? '') : undefined;
}

/** Consul's derivation of the ports (reference section 2.2 steps 5 to 7); checks in check-ID order for determinism. */
export function deriveProxyPorts(proxy: ProxyRegistration, checks: AgentChecks): ProxyPorts {
  const { Config: config, TransparentProxy: transparentProxy, Expose: expose } = proxy.Proxy;
  const bindPort = config?.bind_port ?? 0;
  const inboundPort = bindPort === 0 ? proxy.Port : bindPort;
  if (inboundPort === 0) {
    throw new BadRegistrationError(
      'invalid proxy registration: Port is 0 and Proxy.Config.bind_port is not set, so it names no inbound port',
    );
  }
  const checkPorts = Object.entries(checks ?? {})
    .sort(([a], [b]) => (a < b ? -1 : 1))
    .map(([, check]) => check.ExposedPort ?? 0);
  const exposedPorts = [...(expose?.Paths ?? []).map((path) => path.ListenerPort ?? 0), ...checkPorts];
  return {
    inboundPort,
    outboundPort: transparentProxy?.OutboundListenerPort || DEFAULT_OUTBOUND_PORT,
    excludeInboundPorts: [
      config?.envoy_prometheus_bind_addr,
      config?.envoy_stats_bind_addr,
      ...exposedPorts.filter((port) => port !== 0).map(singlePort),
    ].filter((port) => port !== undefined),
  };
}
