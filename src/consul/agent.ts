import type * as z from 'zod/mini';
import { CliError, UsageError, BadRegistrationError, AgentUnavailableError, PermissionError } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { AgentOptions } from '../options.ts';
import {
  agentChecksSchema,
  agentServiceSchema,
  decodeAgentAnswer,
  deriveProxyPorts,
  exposedChecksService,
  nodeServicesSchema,
  quoteExcerpt,
  requireProxy,
  type ProxyPorts,
} from '../core/registration.ts';
import { createAgentClient, type AgentAnswer, type AgentClient } from './client.ts';
import { retryWhileTransient, TransientAgentError } from './retry.ts';
import { secretHider } from './secrets.ts';

// Resolves -proxy-id as `consul connect redirect-traffic` does (reference section 2.2), with -wait for boot races.

/** Reads the proxy's ports from the agent (or the catalog, with -node-name). Never shows the token. */
export async function fetchProxyPorts(agent: AgentOptions, proxyId: string, log: Logger): Promise<ProxyPorts> {
  return (await readProxyPorts(agent, proxyId, log)).ports;
}

/** The ports, and the version of the registration they come from, for the next blocking query. */
export interface VersionedPorts {
  ports: ProxyPorts;
  /** X-Consul-ContentHash (agent) or X-Consul-Index (catalog); undefined when the agent sent none. */
  version: string | undefined;
}

/** A blocking query (https://developer.hashicorp.com/consul/api-docs/features/blocking). */
export interface BlockingQuery {
  /** The version last seen: the agent holds the request until the registration's differs. */
  since: string;
  /** How long the agent may hold it; it answers with the unchanged registration after that. */
  waitSeconds: number;
}

/**
 * As fetchProxyPorts, plus the registration's version. With `block`, one blocking query, answered when the
 * registration changes or `block.waitSeconds` pass (no -wait retries: the caller decides what to do on failure).
 */
export async function readProxyPorts(agent: AgentOptions, proxyId: string, log: Logger, block?: BlockingQuery): Promise<VersionedPorts> {
  const hider = secretHider(agent);
  const sanitize = (text: string) => hider.message(text).replace(/\s*[\r\n]+\s*/g, ' ');
  try {
    const client = await createAgentClient(agent);
    const debug = (message: string) => log.debug(sanitize(message));
    const lookup: Lookup = { agent, client, proxyId, debug, agentText: hider.agentText, block };
    const { nodeName } = agent;
    const resolve = nodeName === undefined ? () => fromAgent(lookup) : () => fromCatalog(lookup, nodeName);
    return await retryWhileTransient(resolve, block ? 0 : agent.waitMs, (message) => log.info(sanitize(message)));
  } catch (error) {
    // Rebuilt rather than rethrown, so neither the message nor the stack can carry a secret an agent echoed.
    if (error instanceof CliError) throw new CliError(sanitize(error.message), error.kind);
    throw new Error(sanitize(error instanceof Error ? error.message : String(error)));
  }
}

interface Lookup {
  agent: AgentOptions;
  client: AgentClient;
  proxyId: string;
  debug(message: string): void;
  /** What the agent sent, made fit to quote in a message (secrets.ts). */
  agentText(text: string): string;
  block: BlockingQuery | undefined;
}

/** The query and time limit of the first request of a lookup: blocking when asked, on `cursor` (`hash` or `index`). */
function blockingRequest(lookup: Lookup, cursor: 'hash' | 'index'): Pick<AgentRequest, 'blocking' | 'timeoutMs'> {
  const { block, agent } = lookup;
  if (block === undefined) return {};
  // The agent adds up to wait/16 of jitter; -timeout on top covers the answer's own way back.
  const timeoutMs = Math.ceil(block.waitSeconds * 1000 * (1 + 1 / 16)) + agent.timeoutMs;
  return { blocking: new URLSearchParams({ [cursor]: block.since, wait: `${block.waitSeconds}s` }), timeoutMs };
}

async function fromAgent(lookup: Lookup): Promise<VersionedPorts> {
  const { proxyId } = lookup;
  const subject = `service ID ${JSON.stringify(proxyId)}`;
  const { value: service, answer } = await getAnswer(lookup, agentServiceSchema, {
    path: `/v1/agent/service/${pathSegment(proxyId)}`,
    subject,
    notFound: () => notRegistered(lookup, subject),
    ...blockingRequest(lookup, 'hash'),
  });
  const proxy = requireProxy(service, proxyId);
  const checkedService = exposedChecksService(proxy);
  const checks =
    checkedService === undefined
      ? null
      : (
          await getAnswer(lookup, agentChecksSchema, {
            path: '/v1/agent/checks',
            query: new URLSearchParams({ filter: `ServiceName == ${goQuote(checkedService)}` }),
            subject: `the checks of service ${lookup.agentText(JSON.stringify(checkedService))}`,
          })
        ).value;
  return { ports: deriveProxyPorts(proxy, checks), version: answer.contentHash };
}

/** Consul's -node-name mode: the catalog, with central config merged in, and no exposed-checks lookup. */
async function fromCatalog(lookup: Lookup, nodeName: string): Promise<VersionedPorts> {
  const { proxyId } = lookup;
  const subject = `service ID ${JSON.stringify(proxyId)} on node ${JSON.stringify(nodeName)}`;
  const { value: nodeServices, answer } = await getAnswer(lookup, nodeServicesSchema, {
    path: `/v1/catalog/node-services/${pathSegment(nodeName)}`,
    query: new URLSearchParams({ filter: `ID == ${goQuote(proxyId)}`, 'merge-central-config': '' }),
    subject,
    notFound: () => notRegistered(lookup, subject),
    ...blockingRequest(lookup, 'index'),
  });
  const [service, ...others] = nodeServices?.Services ?? [];
  if (service === undefined) throw notRegistered(lookup, subject);
  if (others.length > 0) {
    throw new BadRegistrationError(
      `the catalog holds ${others.length + 1} services with ID ${JSON.stringify(proxyId)} ` +
        `on node ${JSON.stringify(nodeName)}, expected one`,
    );
  }
  return { ports: deriveProxyPorts(requireProxy(service, proxyId), null), version: answer.index };
}

interface AgentRequest {
  path: string;
  query?: URLSearchParams;
  /** What is asked for, for messages: `service ID "web-sidecar-proxy"`. */
  subject: string;
  /** The error for a 404, when it means "not registered (yet)" rather than a wrong address. */
  notFound?: () => CliError;
  /** A blocking query's parameters (`hash` or `index`, and `wait`), added to `query`. */
  blocking?: URLSearchParams;
  timeoutMs?: number;
}

/** One GET; anything but 200 with a valid body becomes the error that says what to do about it. */
async function getAnswer<S extends z.ZodMiniType>(
  lookup: Lookup,
  schema: S,
  request: AgentRequest,
): Promise<{ value: z.output<S>; answer: AgentAnswer }> {
  const query = new URLSearchParams([...(request.query ?? []), ...(request.blocking ?? [])]);
  const answer = await lookup.client.get(request.path, query, request.timeoutMs === undefined ? {} : { timeoutMs: request.timeoutMs });
  const { status, body } = answer;
  lookup.debug(`GET ${lookup.client.location}${request.path}${request.blocking ? ` (blocking: ${request.blocking})` : ''}: HTTP ${status}`);
  if (status === 200) return { value: decodeAgentAnswer(body, schema, request.subject, lookup.agentText), answer };
  if (status === 404 && request.notFound) throw request.notFound();
  throw statusFailure(lookup, status, body, request.subject);
}

function statusFailure(lookup: Lookup, status: number, body: string, subject: string): CliError {
  const { agent, client } = lookup;
  const answer = `HTTP ${status}: ${quoteExcerpt(lookup.agentText(body))}`;
  if (status === 403) {
    const advice =
      agent.token === undefined
        ? 'no ACL token was given: set -token-file or CONSUL_HTTP_TOKEN_FILE'
        : `check the ACL token from ${agent.tokenSource ?? 'the options'}`;
    const needs = agent.nodeName === undefined ? 'service:read' : 'service:read and node:read';
    return new PermissionError(
      `the Consul agent at ${client.location} denied access to ${subject} (${answer}): ${advice} (it needs ${needs})`,
    );
  }
  if (status === 401) {
    return new PermissionError(
      `the Consul agent at ${client.location} wants HTTP authentication (${answer}): check CONSUL_HTTP_AUTH`,
    );
  }
  if (status >= 500 || status === 429) {
    return new TransientAgentError(
      `the Consul agent at ${client.location} failed to answer for ${subject} (${answer})`,
      `the Consul agent at ${client.location} to recover (HTTP ${status})`,
    );
  }
  if (status === 400) {
    return new UsageError(
      `the Consul agent at ${client.location} rejected the request for ${subject} (${answer})`,
    );
  }
  return new AgentUnavailableError(
    `unexpected answer from the Consul agent at ${client.location} for ${subject} (${answer})`,
  );
}

function notRegistered(lookup: Lookup, subject: string): TransientAgentError {
  const { agent, client } = lookup;
  const where = agent.nodeName === undefined ? 'with the Consul agent at' : 'in the catalog of';
  const bootHint = agent.waitMs > 0 ? '' : '; at boot, -wait=60s waits for the registration';
  return new TransientAgentError(
    `${subject} is not registered ${where} ${client.location}: ` +
      `check -proxy-id (the sidecar's own service ID), -namespace and -partition${bootHint}`,
    `${subject} to be registered ${where} ${client.location}`,
  );
}

/** An encoded path segment: the value can add neither segments (`/`, `..`) nor a query or fragment. */
function pathSegment(value: string): string {
  const encoded = encodeURIComponent(value);
  return encoded === '.' || encoded === '..' ? encoded.replaceAll('.', '%2E') : encoded;
}

// Consul builds filters with Go's %q. A JSON string literal is a form strconv.Unquote (and so the filter
// parser) reads back to the same value, quotes and backslashes escaped.
const goQuote = (value: string) => JSON.stringify(value);

