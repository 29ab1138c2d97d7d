import { createHash } from 'node:crypto';
import { execa } from 'execa';
import { portRanges } from './fakes.ts';
import { afterEach } from 'vitest';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ProxyPorts } from '../../src/core/registration.ts';
import { UsageError } from '../../src/errors.ts';
import type { AgentOptions } from '../../src/options.ts';

// A real HTTP server standing in for the Consul agent: TCP, a unix socket, or HTTPS with certificates
// made at test time by `openssl`. Routes are canned answers; every request is recorded.

export interface FakeRoute {
  /** Default 200. */
  status?: number;
  /** Sent as JSON. */
  body?: unknown;
  /** Sent verbatim instead of `body` (malformed JSON, HTML, …). */
  rawBody?: string;
  /** Answer after this long. */
  delayMs?: number;
  /** Accept the request and never answer. */
  hang?: boolean;
}

export interface FakeRequest {
  method: string;
  /** The path as sent, still percent-encoded, without the query. */
  path: string;
  query: URLSearchParams;
  headers: Record<string, string | string[] | undefined>;
}

export interface FakeTls {
  caFile: string;
  clientCertFile: string;
  clientKeyFile: string;
  /** A name in the server certificate (it also holds IP 127.0.0.1). */
  serverName: string;
}

export interface FakeAgent {
  /** The value for -http-addr: `127.0.0.1:PORT`, `unix:///tmp/…/agent.sock` or `https://127.0.0.1:PORT`. */
  address: string;
  requests: FakeRequest[];
  tls?: FakeTls;
  /**
   * Replaces a path's answer, as a registration change would, and answers the blocking queries held on it.
   * Blocking queries: a request with `hash=<X-Consul-ContentHash>` (or `index=<X-Consul-Index>`) and
   * `wait=<N>s` that matches the current answer is held until `set` changes it or the wait passes.
   */
  set(path: string, route: FakeRoute | FakeRoute[]): void;
  /** How many requests are being held right now. */
  held(): number;
  close(): Promise<void>;
}

export interface FakeAgentOptions {
  transport?: 'tcp' | 'unix' | 'tls';
  /** With `tls`: refuse clients without a certificate signed by the fake CA. */
  requireClientCert?: boolean;
  /**
   * Keyed by decoded pathname (`/v1/agent/service/web-sidecar-proxy`); the query is not matched. A list
   * answers in turn and then repeats its last entry. Unknown paths get a 404.
   */
  routes: Record<string, FakeRoute | FakeRoute[]>;
}

const SERVER_NAME = 'localhost';

/** A parsed file of test/fixtures/consul: registrations and other answers the fake agent serves. */
export function consulFixture(name: string): unknown {
  return JSON.parse(readFileSync(new URL(`../fixtures/consul/${name}`, import.meta.url), 'utf8'));
}

/** One entry of registration-cases.json: what the agent answers, and the ports or the error it must give. */
export interface RegistrationCase {
  name: string;
  /** The body of GET /v1/agent/service/<id>. */
  registration: unknown;
  /** The body of GET /v1/agent/checks, when Expose.Checks asks for it (default {}). */
  checks?: unknown;
  expected?: ProxyPorts;
  /** A part of the one-line error. */
  error?: string;
}

/** A transparent-proxy sidecar's registration, as `GET /v1/agent/service/<id>` answers it, with this inbound port. */
export const sidecarRegistration = (proxyId: string, port: number) => ({
  Kind: 'connect-proxy',
  ID: proxyId,
  Service: proxyId,
  Port: port,
  Proxy: { DestinationServiceName: 'web', Mode: 'transparent' },
});

export function registrationCases(): RegistrationCase[] {
  // The fixture writes excluded ports as the flags do ("9102"); the registration gives them typed.
  const cases = consulFixture('registration-cases.json') as (Omit<RegistrationCase, 'expected'> & {
    expected?: Omit<ProxyPorts, 'excludeInboundPorts'> & { excludeInboundPorts: string[] };
  })[];
  return cases.map(({ expected, ...rest }) =>
    expected === undefined ? rest : { ...rest, expected: { ...expected, excludeInboundPorts: portRanges(...expected.excludeInboundPorts) } },
  );
}

function decodedPath(rawPath: string): string {
  try {
    return decodeURIComponent(rawPath);
  } catch {
    return rawPath;
  }
}

/** Agent options as src/options.ts would produce them for -http-addr alone (short timeout, no wait), plus `overrides`. */
export function agentOptions(overrides: Partial<AgentOptions> = {}): AgentOptions {
  return {
    address: '127.0.0.1:8500',
    addressSource: '-http-addr',
    token: undefined,
    tokenSource: undefined,
    caFile: undefined,
    caPath: undefined,
    clientCert: undefined,
    clientKey: undefined,
    tlsFileSources: {
      caFile: { label: '-ca-file', errorKind: UsageError },
      caPath: { label: '-ca-path', errorKind: UsageError },
      clientCert: { label: '-client-cert', errorKind: UsageError },
      clientKey: { label: '-client-key', errorKind: UsageError },
    },
    tlsServerName: undefined,
    useTls: false,
    verifyTls: true,
    basicAuth: undefined,
    namespace: undefined,
    partition: undefined,
    nodeName: undefined,
    timeoutMs: 2_000,
    waitMs: 0,
    ...overrides,
  };
}

/** Makes a CA, a server certificate (localhost, 127.0.0.1) and a client certificate in `dir`. */
async function makeCertificates(dir: string): Promise<{ tls: FakeTls; serverKey: string; serverCert: string }> {
  const file = (name: string) => join(dir, name);
  const openssl = (args: string[]) => execa('openssl', args, { cwd: dir });
  const newKey = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  const subject = (name: string) => ['-subj', `/CN=${name}`];
  await openssl(['req', '-x509', ...newKey, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', ...subject('Fake Consul CA')]);
  const issue = async (name: string, commonName: string, extensions: string) => {
    writeFileSync(file(`${name}.ext`), extensions);
    await openssl(['req', ...newKey, '-keyout', `${name}.key`, '-out', `${name}.csr`, ...subject(commonName)]);
    await openssl(['x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial',
      '-out', `${name}.pem`, '-days', '2', '-extfile', `${name}.ext`]);
  };
  await issue('server', 'server.dc1.consul', `subjectAltName=DNS:${SERVER_NAME},IP:127.0.0.1\nextendedKeyUsage=serverAuth\n`);
  await issue('client', 'client.dc1.consul', 'extendedKeyUsage=clientAuth\n');
  return {
    tls: {
      caFile: file('ca.pem'),
      clientCertFile: file('client.pem'),
      clientKeyFile: file('client.key'),
      serverName: SERVER_NAME,
    },
    serverKey: readFileSync(file('server.key'), 'utf8'),
    serverCert: readFileSync(file('server.pem'), 'utf8'),
  };
}

export async function startFakeAgent(options: FakeAgentOptions): Promise<FakeAgent> {
  const transport = options.transport ?? 'tcp';
  const dir = mkdtempSync(join(tmpdir(), 'fake-consul-'));
  const requests: FakeRequest[] = [];
  const served = new Map<string, number>();
  const timers = new Set<NodeJS.Timeout>();

  const routes: Record<string, FakeRoute | FakeRoute[]> = { ...options.routes };
  /** Per path: how many times it was changed by `set` (its X-Consul-Index), and the requests held on it. */
  const versions = new Map<string, number>();
  const waiting = new Map<string, Set<() => void>>();
  const bodyOf = (route: FakeRoute) => route.rawBody ?? (route.body === undefined ? '' : JSON.stringify(route.body));
  const hashOf = (body: string) => createHash('sha256').update(body).digest('hex').slice(0, 16);

  const handle = (request: http.IncomingMessage, response: http.ServerResponse) => {
    const rawUrl = request.url ?? '/';
    const queryStart = rawUrl.indexOf('?');
    const path = queryStart < 0 ? rawUrl : rawUrl.slice(0, queryStart);
    const query = new URLSearchParams(queryStart < 0 ? '' : rawUrl.slice(queryStart + 1));
    requests.push({ method: request.method ?? '', path, query, headers: { ...request.headers } });

    const key = decodedPath(path);
    const configured = routes[key];
    const answers = configured === undefined ? [] : Array.isArray(configured) ? configured : [configured];
    const count = served.get(key) ?? 0;
    served.set(key, count + 1);
    const route = answers[Math.min(count, answers.length - 1)] ?? { status: 404, rawBody: `no route for ${key}` };
    if (route.hang) return;
    const index = String((versions.get(key) ?? 0) + 1);
    const hash = hashOf(bodyOf(route));
    const wait = /^(\d+)s$/.exec(query.get('wait') ?? '')?.[1];
    if (wait !== undefined && (query.get('hash') === hash || query.get('index') === index)) {
      // A blocking query on the current answer: held until the path changes or the wait passes.
      const held = waiting.get(key) ?? new Set<() => void>();
      waiting.set(key, held);
      const release = () => {
        clearTimeout(timer);
        timers.delete(timer);
        held.delete(release);
        const now = routes[key];
        const current = (Array.isArray(now) ? now.at(-1) : now) ?? { status: 404, rawBody: `no route for ${key}` };
        const currentIndex = String((versions.get(key) ?? 0) + 1);
        response
          .writeHead(current.status ?? 200, {
            'Content-Type': 'application/json',
            'X-Consul-ContentHash': hashOf(bodyOf(current)),
            'X-Consul-Index': currentIndex,
          })
          .end(bodyOf(current));
      };
      const timer = setTimeout(release, Number(wait) * 1000);
      timers.add(timer);
      held.add(release);
      response.on('close', () => {
        clearTimeout(timer);
        timers.delete(timer);
        held.delete(release);
      });
      return;
    }
    const answer = () => {
      const body = bodyOf(route);
      response
        .writeHead(route.status ?? 200, { 'Content-Type': 'application/json', 'X-Consul-ContentHash': hash, 'X-Consul-Index': index })
        .end(body);
    };
    if (route.delayMs === undefined) return answer();
    const timer = setTimeout(() => {
      timers.delete(timer);
      answer();
    }, route.delayMs);
    timers.add(timer);
  };

  let server: http.Server;
  let tls: FakeTls | undefined;
  if (transport === 'tls') {
    const made = await makeCertificates(dir);
    tls = made.tls;
    const clientCertificates = { ca: readFileSync(tls.caFile, 'utf8'), requestCert: true, rejectUnauthorized: true };
    server = https.createServer(
      { key: made.serverKey, cert: made.serverCert, ...(options.requireClientCert ? clientCertificates : {}) },
      handle,
    );
  } else {
    server = http.createServer(handle);
  }
  // Quiet the server side of deliberately broken handshakes.
  server.on('tlsClientError', () => undefined);

  const socketPath = join(dir, 'agent.sock');
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    if (transport === 'unix') server.listen(socketPath, resolve);
    else server.listen(0, '127.0.0.1', resolve);
  });
  const port = (server.address() as AddressInfo).port;
  const address =
    transport === 'unix' ? `unix://${socketPath}` : transport === 'tls' ? `https://127.0.0.1:${port}` : `127.0.0.1:${port}`;

  return {
    address,
    requests,
    ...(tls === undefined ? {} : { tls }),
    set(path, route) {
      routes[path] = route;
      served.set(path, 0);
      versions.set(path, (versions.get(path) ?? 0) + 1);
      for (const release of [...(waiting.get(path) ?? [])]) release();
    },
    held: () => [...waiting.values()].reduce((sum, held) => sum + held.size, 0),
    async close() {
      for (const timer of timers) clearTimeout(timer);
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A `serve(routes, options)` for one test file: every agent it starts is closed after each test. */
export function fakeAgentPerTest() {
  const started: FakeAgent[] = [];
  afterEach(async () => {
    await Promise.all(started.splice(0).map((agent) => agent.close()));
  });
  return async (routes: FakeAgentOptions['routes'], options: Omit<FakeAgentOptions, 'routes'> = {}) => {
    const agent = await startFakeAgent({ ...options, routes });
    started.push(agent);
    return agent;
  };
}
