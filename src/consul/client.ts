import type { IncomingMessage, RequestOptions } from 'node:http';
import * as z from 'zod/mini';
import { CliError, BadRegistrationError, AgentUnavailableError, PermissionError } from '../errors.ts';
import type { AgentOptions } from '../options.ts';
import { parseAgentAddress } from './address.ts';
import { formatDuration, TransientAgentError } from './retry.ts';
import { describeTlsFailure, tlsSettings } from './tls.ts';

export interface AgentAnswer {
  status: number;
  body: string;
  /**
   * Where a blocking query on this answer starts from: the agent's X-Consul-ContentHash (agent endpoints)
   * or X-Consul-Index (catalog endpoints), when it sent one.
   */
  contentHash?: string;
  index?: string;
}

export interface GetOptions {
  /** Overrides -timeout for this request: a blocking query is held by the agent for up to its `wait`. */
  timeoutMs?: number;
}

/**
 * GET requests to the agent, carrying what Consul's API client adds to each (token, namespace, partition).
 * Answers come back with the token and password hidden, should the agent echo them.
 */
export interface AgentClient {
  /** The agent's address as messages show it. */
  location: string;
  get(path: string, query?: URLSearchParams, options?: GetOptions): Promise<AgentAnswer>;
}

// Registrations are a few kilobytes; a runaway answer must not exhaust memory.
const MAX_ANSWER_BYTES = 4 * 1024 * 1024;
/** Of a failure's answer, more than any message quotes. */
const MAX_FAILURE_BYTES = 64 * 1024;

/** Errors that say the agent is not there (yet): refused, no socket file, reset, unroutable, no DNS answer. */
const UNREACHABLE: Record<string, string> = {
  ECONNREFUSED: 'connection refused',
  ENOENT: 'no such socket file',
  ECONNRESET: 'connection reset',
  EPIPE: 'connection closed',
  ETIMEDOUT: 'connection timed out',
  EHOSTUNREACH: 'host unreachable',
  ENETUNREACH: 'network unreachable',
  ENOTFOUND: 'host name not found',
  EAI_AGAIN: 'host name lookup failed',
};

export async function createAgentClient(agent: AgentOptions): Promise<AgentClient> {
  const endpoint = parseAgentAddress(agent.address, agent.useTls, agent.addressSource);
  const { location } = endpoint;
  // Loaded only here: the HTTP and TLS stacks cost start-up time that runs without -proxy-id never need.
  const { request } = endpoint.tls ? await import('node:https') : await import('node:http');
  const base: RequestOptions = {
    ...(endpoint.socketPath === undefined
      ? { host: endpoint.host, port: endpoint.port }
      : { socketPath: endpoint.socketPath }),
    ...(endpoint.tls ? await tlsSettings(agent) : {}),
    ...(agent.basicAuth === undefined ? {} : { auth: `${agent.basicAuth.username}:${agent.basicAuth.password}` }),
    method: 'GET',
    // One connection per request: nothing lingers to keep the process alive afterwards.
    agent: false,
    headers: { Accept: 'application/json', ...(agent.token === undefined ? {} : { 'X-Consul-Token': agent.token }) },
  };

  return {
    location,
    async get(path, query, options = {}) {
      const params = new URLSearchParams(query);
      if (agent.namespace !== undefined) params.set('ns', agent.namespace);
      if (agent.partition !== undefined) params.set('partition', agent.partition);
      const search = params.toString();
      const timeoutMs = options.timeoutMs ?? agent.timeoutMs;
      const signal = AbortSignal.timeout(timeoutMs);
      try {
        const response = await new Promise<IncomingMessage>((resolve, reject) => {
          const options = { ...base, path: `${endpoint.pathPrefix}${path}${search ? `?${search}` : ''}`, signal };
          request(options, resolve).on('error', reject).end();
        });
        const body = await readAnswer(response, location);
        return {
          status: response.statusCode ?? 0,
          body,
          ...cursorHeader('contentHash', response.headers['x-consul-contenthash']),
          ...cursorHeader('index', response.headers['x-consul-index']),
        };
      } catch (error) {
        throw requestFailure(error, location, signal.aborted ? timeoutMs : undefined);
      }
    },
  };
}

/** A blocking-query header goes back into a query string: only a plain token is kept (Consul's are hex or decimal). */
const cursorSchema = z.string().check(z.regex(/^[0-9A-Za-z_-]{1,128}$/));

function cursorHeader<K extends 'contentHash' | 'index'>(key: K, value: string | string[] | undefined): Partial<Record<K, string>> {
  const parsed = cursorSchema.safeParse(Array.isArray(value) ? value[0] : value);
  // Without a usable header the next query simply does not block: a poll at the watch's pace, never a wrong answer.
  return parsed.success ? ({ [key]: parsed.data } as Partial<Record<K, string>>) : {};
}

/** Turns what node:http threw into the error that says what happened and what to do. */
function requestFailure(error: unknown, location: string, timedOutAfterMs: number | undefined): CliError {
  if (error instanceof CliError) return error;
  if (timedOutAfterMs !== undefined) {
    const limit = formatDuration(timedOutAfterMs);
    return new TransientAgentError(
      `the Consul agent at ${location} did not answer within ${limit}: ` +
        'is it overloaded or stuck? -timeout sets the limit',
      `the Consul agent at ${location} (no answer within ${limit})`,
    );
  }
  const tlsFailure = describeTlsFailure(error);
  if (tlsFailure !== undefined) {
    const message = `TLS handshake with the Consul agent at ${location} failed: ${tlsFailure}`;
    return new AgentUnavailableError(message);
  }
  const { code = '', message } = error as NodeJS.ErrnoException;
  const unreachable = UNREACHABLE[code];
  if (unreachable !== undefined) {
    return new TransientAgentError(
      `cannot reach the Consul agent at ${location} (${unreachable}): ` +
        'is the agent running? set -http-addr or CONSUL_HTTP_ADDR',
      `the Consul agent at ${location} (${unreachable})`,
    );
  }
  if (code === 'EACCES') {
    return new PermissionError(
      `permission denied on the Consul agent socket ${location}: run as a user allowed to use it`,
    );
  }
  if (code.startsWith('HPE_')) {
    return new AgentUnavailableError(
      `the Consul agent at ${location} did not answer in HTTP (${code}): if it serves HTTPS, use an https:// address`,
    );
  }
  return new AgentUnavailableError(`request to the Consul agent at ${location} failed: ${message}`);
}

/**
 * The answer's body, at most 4 MiB. A failure status is read only as far as a message quotes it: its status
 * says what happened (a 403 stays a refusal however much an agent or a proxy in front of it sends).
 */
async function readAnswer(response: IncomingMessage, location: string): Promise<string> {
  const failed = response.statusCode !== 200;
  const limit = failed ? MAX_FAILURE_BYTES : MAX_ANSWER_BYTES;
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of response as AsyncIterable<Buffer>) {
    size += chunk.length;
    chunks.push(chunk);
    if (size > limit) {
      response.destroy();
      if (failed) break;
      throw new BadRegistrationError(`the Consul agent at ${location} sent an answer larger than 4 MiB`);
    }
  }
  return Buffer.concat(chunks).subarray(0, limit).toString('utf8');
}
