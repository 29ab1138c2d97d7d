import { copyFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { fetchProxyPorts } from '../../src/consul/agent.ts';
import type { ProxyPorts } from '../../src/core/registration.ts';
import { CliError, ExitCode } from '../../src/errors.ts';
import { createLogger } from '../../src/log.ts';
import type { AgentOptions } from '../../src/options.ts';
import {
  agentOptions,
  consulFixture,
  fakeAgentPerTest,
  registrationCases,
  type FakeRoute,
  type FakeTls,
} from '../helpers/fakeAgent.ts';
import { captureOutput, portRanges } from '../helpers/fakes.ts';

const PROXY_ID = 'web-sidecar-proxy';
const SERVICE_PATH = `/v1/agent/service/${PROXY_ID}`;
const SAMPLE = consulFixture('web-sidecar-proxy.json');
const SAMPLE_PORTS: ProxyPorts = {
  inboundPort: 21000,
  outboundPort: 15001,
  excludeInboundPorts: portRanges('9102', '9103', '21500', '21501', '21502'),
};
const sampleRoutes = (): Record<string, FakeRoute> => ({
  [SERVICE_PATH]: { body: SAMPLE },
  '/v1/agent/checks': { body: consulFixture('web-checks.json') },
});

const serve = fakeAgentPerTest();

/** fetchProxyPorts with its stderr captured (debug on), its outcome and how long it took. */
async function lookup(options: Partial<AgentOptions>, proxyId = PROXY_ID) {
  const captured = captureOutput();
  const log = createLogger(captured.output, { debug: true });
  const start = performance.now();
  try {
    const ports = await fetchProxyPorts(agentOptions(options), proxyId, log);
    return { ports, error: undefined, seconds: (performance.now() - start) / 1000, stderr: captured.stderr() };
  } catch (error) {
    if (!(error instanceof CliError)) throw error;
    return { ports: undefined, error, seconds: (performance.now() - start) / 1000, stderr: captured.stderr() };
  }
}

async function failure(options: Partial<AgentOptions>, proxyId = PROXY_ID) {
  const result = await lookup(options, proxyId);
  if (result.error === undefined) throw new Error(`expected a failure, got ${JSON.stringify(result.ports)}`);
  expect(result.error.message).not.toContain('\n');
  return { ...result, error: result.error };
}

/** A TCP server that answers each connection with `onConnection`, for answers no HTTP server would give. */
async function rawServer(onConnection: (socket: Socket) => void) {
  const sockets = new Set<Socket>();
  const server = createServer((socket) => {
    sockets.add(socket);
    onConnection(socket);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    address: `127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** A TCP address where nothing listens. */
async function closedPort(): Promise<string> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return `127.0.0.1:${port}`;
}

describe('over TCP', () => {
  it('reads the sample registration and the exposed checks, as Consul does', async () => {
    const agent = await serve(sampleRoutes());
    const { ports } = await lookup({ address: agent.address });
    expect(ports).toEqual(SAMPLE_PORTS);
    expect(agent.requests.map((r) => [r.method, r.path, r.query.toString()])).toEqual([
      ['GET', SERVICE_PATH, ''],
      ['GET', '/v1/agent/checks', new URLSearchParams({ filter: 'ServiceName == "web"' }).toString()],
    ]);
    expect(agent.requests[0]?.headers['x-consul-token']).toBeUndefined();
    expect(agent.requests[0]?.headers['authorization']).toBeUndefined();
  });

  it('filters checks on an empty DestinationServiceName, as Consul does', async () => {
    const registration = { Port: 20000, Proxy: { Expose: { Checks: true } } };
    const agent = await serve({ [SERVICE_PATH]: { body: registration }, '/v1/agent/checks': { body: {} } });
    expect((await lookup({ address: agent.address })).ports?.excludeInboundPorts).toEqual([]);
    expect(agent.requests[1]?.query.get('filter')).toBe('ServiceName == ""');
  });

  it('asks for no checks when Expose.Checks is off', async () => {
    const registration = { Port: 20000, Proxy: { DestinationServiceName: 'web', Expose: { Checks: false } } };
    const agent = await serve({ [SERVICE_PATH]: { body: registration } });
    const { ports } = await lookup({ address: agent.address });
    expect(ports).toEqual({ inboundPort: 20000, outboundPort: 15001, excludeInboundPorts: [] });
    expect(agent.requests).toHaveLength(1);
  });

  it('sends ns and partition on every request', async () => {
    const agent = await serve(sampleRoutes());
    await lookup({ address: agent.address, namespace: 'team-a', partition: 'part-1' });
    expect(agent.requests).toHaveLength(2);
    for (const request of agent.requests) {
      expect(request.query.get('ns')).toBe('team-a');
      expect(request.query.get('partition')).toBe('part-1');
    }
  });

  it('sends the token as X-Consul-Token and CONSUL_HTTP_AUTH as basic auth, on every request', async () => {
    const agent = await serve(sampleRoutes());
    await lookup({
      address: agent.address,
      token: '0d4a5e5c-token',
      tokenSource: 'CONSUL_HTTP_TOKEN',
      basicAuth: { username: 'ops', password: 'pa:ss' },
    });
    expect(agent.requests).toHaveLength(2);
    for (const request of agent.requests) {
      expect(request.headers['x-consul-token']).toBe('0d4a5e5c-token');
      expect(request.headers['authorization']).toBe(`Basic ${Buffer.from('ops:pa:ss').toString('base64')}`);
      expect(request.path).not.toContain('token');
      expect([...request.query.keys()]).not.toContain('token');
    }
  });

  it.each([
    ['a/../b?c=d#e', '/v1/agent/service/a%2F..%2Fb%3Fc%3Dd%23e'],
    ['..', '/v1/agent/service/%2E%2E'],
    ['.', '/v1/agent/service/%2E'],
    ['web%2Fx&y=1', '/v1/agent/service/web%252Fx%26y%3D1'],
  ])('URL-encodes the proxy id %j into one path segment', async (proxyId, path) => {
    const agent = await serve({ [`/v1/agent/service/${proxyId}`]: { body: { Port: 20000, Proxy: {} } } });
    const { ports } = await lookup({ address: agent.address }, proxyId);
    expect(ports?.inboundPort).toBe(20000);
    expect(agent.requests.map((r) => [r.path, r.query.toString()])).toEqual([[path, '']]);
  });

  it('puts the path prefix of an http:// address before every request', async () => {
    const agent = await serve({ [`/consul${SERVICE_PATH}`]: { body: SAMPLE }, '/consul/v1/agent/checks': { body: {} } });
    const { ports } = await lookup({ address: `http://${agent.address}/consul` });
    expect(ports?.inboundPort).toBe(21000);
    expect(agent.requests.map((r) => r.path)).toEqual([`/consul${SERVICE_PATH}`, '/consul/v1/agent/checks']);
  });

  it.each(registrationCases().map((c) => [c.name, c] as const))('serves the variant "%s" through HTTP', async (_, c) => {
    const { registration, checks, expected, error } = c;
    const agent = await serve({ [SERVICE_PATH]: { body: registration }, '/v1/agent/checks': { body: checks ?? {} } });
    const result = await lookup({ address: agent.address });
    if (expected !== undefined) expect(result.ports).toEqual(expected);
    else {
      expect(result.error?.message).toContain(error);
      expect(result.error?.exitCode).toBe(ExitCode.badRegistration);
    }
  });
});

describe('-node-name: the catalog instead of the agent', () => {
  it('filters the node services by ID with central config merged, and never asks for checks', async () => {
    const agent = await serve({ '/v1/catalog/node-services/vm-1': { body: consulFixture('node-services.json') } });
    const { ports } = await lookup({ address: agent.address, nodeName: 'vm-1', namespace: 'team-a' });
    expect(ports).toEqual({ inboundPort: 20000, outboundPort: 15002, excludeInboundPorts: portRanges('9103', '21500') });
    expect(agent.requests).toHaveLength(1);
    const query = agent.requests[0]?.query;
    expect(query?.get('filter')).toBe('ID == "web-sidecar-proxy"');
    expect(query?.has('merge-central-config')).toBe(true);
    expect(query?.get('ns')).toBe('team-a');
  });

  it('quotes the id in the filter like Go %q, and encodes the node name', async () => {
    const agent = await serve({ '/v1/catalog/node-services/vm/1': { body: { Services: [{ Port: 1, Proxy: {} }] } } });
    await lookup({ address: agent.address, nodeName: 'vm/1' }, 'we"b\\x');
    expect(agent.requests[0]?.path).toBe('/v1/catalog/node-services/vm%2F1');
    expect(agent.requests[0]?.query.get('filter')).toBe('ID == "we\\"b\\\\x"');
  });

  it.each([
    ['no services', { Node: { Node: 'vm-1' }, Services: [] }],
    ['an unknown node (null)', null],
  ])('treats %s as not registered', async (_, body) => {
    const agent = await serve({ '/v1/catalog/node-services/vm-1': { body } });
    const { error } = await failure({ address: agent.address, nodeName: 'vm-1' });
    expect(error.exitCode).toBe(ExitCode.unavailable);
    expect(error.message).toBe(
      `service ID "web-sidecar-proxy" on node "vm-1" is not registered in the catalog of http://${agent.address}: ` +
        "check -proxy-id (the sidecar's own service ID), -namespace and -partition; at boot, -wait=60s waits for the registration",
    );
  });

  it('refuses more than one match', async () => {
    const service = { ID: PROXY_ID, Port: 20000, Proxy: {} };
    const agent = await serve({ '/v1/catalog/node-services/vm-1': { body: { Services: [service, service] } } });
    const { error } = await failure({ address: agent.address, nodeName: 'vm-1' });
    expect(error.exitCode).toBe(ExitCode.badRegistration);
    expect(error.message).toBe('the catalog holds 2 services with ID "web-sidecar-proxy" on node "vm-1", expected one');
  });
});

describe('over a unix socket', () => {
  it('reads the registration', async () => {
    const agent = await serve(sampleRoutes(), { transport: 'unix' });
    expect(agent.address).toMatch(/^unix:\/\/\//);
    expect((await lookup({ address: agent.address })).ports).toEqual(SAMPLE_PORTS);
  });

  it('reports a missing socket as an unreachable agent', async () => {
    const { error } = await failure({ address: 'unix:///nonexistent/consul.sock' });
    expect(error.exitCode).toBe(ExitCode.unavailable);
    expect(error.message).toBe(
      'cannot reach the Consul agent at unix:///nonexistent/consul.sock (no such socket file): is the agent running? set -http-addr or CONSUL_HTTP_ADDR',
    );
  });
});

describe('over HTTPS requiring a client certificate', () => {
  async function tlsAgent() {
    const agent = await serve(sampleRoutes(), { transport: 'tls', requireClientCert: true });
    const tls = agent.tls;
    if (tls === undefined) throw new Error('no TLS material');
    const client = { clientCert: tls.clientCertFile, clientKey: tls.clientKeyFile };
    return { agent, tls, client };
  }

  it('reads the registration with -ca-file, -client-cert/-client-key and -tls-server-name', async () => {
    const { agent, tls, client } = await tlsAgent();
    expect(agent.address).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    const { ports } = await lookup({ address: agent.address, caFile: tls.caFile, tlsServerName: tls.serverName, ...client });
    expect(ports).toEqual(SAMPLE_PORTS);
  });

  it('verifies the IP address without -tls-server-name, and strips a port from it', async () => {
    const { agent, tls, client } = await tlsAgent();
    expect((await lookup({ address: agent.address, caFile: tls.caFile, ...client })).ports).toEqual(SAMPLE_PORTS);
    const named = await lookup({ address: agent.address, caFile: tls.caFile, tlsServerName: `${tls.serverName}:8501`, ...client });
    expect(named.ports).toEqual(SAMPLE_PORTS);
  });

  it('uses https for host:port when CONSUL_HTTP_SSL is true', async () => {
    const { agent, tls, client } = await tlsAgent();
    const address = agent.address.replace('https://', '');
    expect((await lookup({ address, useTls: true, caFile: tls.caFile, ...client })).ports).toEqual(SAMPLE_PORTS);
  });

  it('reads every certificate file of -ca-path and skips other files', async () => {
    const { agent, tls, client } = await tlsAgent();
    const caPath = mkdtempSync(join(tmpdir(), 'ca-path-'));
    try {
      copyFileSync(tls.caFile, join(caPath, 'consul-agent-ca.pem'));
      writeFileSync(join(caPath, 'README'), 'not a certificate\n');
      expect((await lookup({ address: agent.address, caPath, ...client })).ports).toEqual(SAMPLE_PORTS);
    } finally {
      rmSync(caPath, { recursive: true, force: true });
    }
  });

  it('skips verification with CONSUL_HTTP_SSL_VERIFY=false', async () => {
    const { agent, client } = await tlsAgent();
    expect((await lookup({ address: agent.address, verifyTls: false, ...client })).ports).toEqual(SAMPLE_PORTS);
  });

  it.each<[string, (tls: FakeTls) => Partial<AgentOptions>, string]>([
    ['an unknown CA', () => ({}), 'certificate signed by unknown authority (SELF_SIGNED_CERT_IN_CHAIN): check -ca-file/-ca-path and -tls-server-name'],
    [
      'a wrong server name',
      (tls) => ({ caFile: tls.caFile, tlsServerName: 'consul.example' }),
      "is not in the cert's altnames: DNS:localhost, IP Address:127.0.0.1: check -tls-server-name",
    ],
    ['no client certificate', (tls) => ({ caFile: tls.caFile, clientCert: undefined, clientKey: undefined }), 'check -client-cert/-client-key'],
  ])('names %s as a TLS failure and does not wait on it', async (_, overrides, detail) => {
    const { agent, tls, client } = await tlsAgent();
    const { error, seconds } = await failure({ address: agent.address, ...client, ...overrides(tls), waitMs: 20_000 });
    expect(error.exitCode).toBe(ExitCode.unavailable);
    expect(error.message).toMatch(new RegExp(`^TLS handshake with the Consul agent at ${agent.address} failed: `));
    expect(error.message).toContain(detail);
    expect(agent.requests).toEqual([]);
    expect(seconds).toBeLessThan(10);
  });

  it('says when the agent does not speak TLS', async () => {
    const agent = await serve(sampleRoutes());
    const { error } = await failure({ address: `https://${agent.address}` });
    expect(error.message).toBe(
      `TLS handshake with the Consul agent at https://${agent.address} failed: the agent does not speak TLS at this address: use an http:// address, or unset CONSUL_HTTP_SSL`,
    );
  });

  it('refuses TLS files that hold no certificate or key as usage errors', async () => {
    const { agent, tls, client } = await tlsAgent();
    const dir = mkdtempSync(join(tmpdir(), 'bad-tls-'));
    try {
      const junk = join(dir, 'junk.pem');
      writeFileSync(junk, 'not PEM\n');
      const badCa = await failure({ address: agent.address, caFile: junk, ...client });
      expect(badCa.error.exitCode).toBe(ExitCode.usage);
      expect(badCa.error.message).toBe(`-ca-file ${junk} holds no PEM certificate`);
      const badKey = await failure({ address: agent.address, caFile: tls.caFile, clientCert: tls.clientCertFile, clientKey: junk });
      expect(badKey.error.exitCode).toBe(ExitCode.usage);
      expect(badKey.error.message).toContain(`cannot use -client-cert ${tls.clientCertFile} with -client-key ${junk}: `);
      expect(agent.requests).toEqual([]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('faults', () => {
  it('says where it looked when nothing listens', async () => {
    const address = await closedPort();
    const { error } = await failure({ address });
    expect(error.exitCode).toBe(ExitCode.unavailable);
    expect(error.message).toBe(
      `cannot reach the Consul agent at http://${address} (connection refused): is the agent running? set -http-addr or CONSUL_HTTP_ADDR`,
    );
  });

  it('stops at once on 403 and names the token source, not the token', async () => {
    const denial = `Permission denied: token with AccessorID 'a1b2' lacks permission 'service:read' on "web-sidecar-proxy"`;
    const agent = await serve({ [SERVICE_PATH]: { status: 403, rawBody: denial } });
    const { error, seconds } = await failure({
      address: agent.address,
      token: 'secret-value-123',
      tokenSource: 'CONSUL_HTTP_TOKEN_FILE',
      waitMs: 20_000,
    });
    expect(error.exitCode).toBe(ExitCode.noPermission);
    expect(error.message).toBe(
      `the Consul agent at http://${agent.address} denied access to service ID "web-sidecar-proxy" ` +
        `(HTTP 403: "Permission denied: token with AccessorID 'a1b2' lacks permission 'service:read' on \\"web-sidecar-proxy\\""): ` +
        'check the ACL token from CONSUL_HTTP_TOKEN_FILE (it needs service:read)',
    );
    expect(agent.requests).toHaveLength(1);
    expect(seconds).toBeLessThan(10);
  });

  it('says when a 403 came without any token', async () => {
    const agent = await serve({ [SERVICE_PATH]: { status: 403, rawBody: 'ACL not found' } });
    const { error } = await failure({ address: agent.address });
    expect(error.message).toContain('no ACL token was given: set -token-file or CONSUL_HTTP_TOKEN_FILE');
  });

  it('fails fast on 404 without -wait, pointing at -wait', async () => {
    const agent = await serve({ [SERVICE_PATH]: { status: 404, rawBody: 'unknown service ID: web-sidecar-proxy' } });
    const { error, stderr } = await failure({ address: agent.address });
    expect(error.exitCode).toBe(ExitCode.unavailable);
    expect(error.message).toBe(
      `service ID "web-sidecar-proxy" is not registered with the Consul agent at http://${agent.address}: ` +
        "check -proxy-id (the sidecar's own service ID), -namespace and -partition; at boot, -wait=60s waits for the registration",
    );
    expect(agent.requests).toHaveLength(1);
    expect(stderr).not.toContain('waiting');
  });

  it('with -wait, retries a 404 until the proxy is registered, saying what it waits for', async () => {
    const agent = await serve({
      [SERVICE_PATH]: [{ status: 404 }, { status: 404 }, { body: SAMPLE }],
      '/v1/agent/checks': { body: consulFixture('web-checks.json') },
    });
    const { ports, stderr } = await lookup({ address: agent.address, waitMs: 30_000 });
    expect(ports).toEqual(SAMPLE_PORTS);
    expect(agent.requests.filter((r) => r.path === SERVICE_PATH)).toHaveLength(3);
    expect(stderr).toContain(
      `redirect-traffic: waiting for service ID "web-sidecar-proxy" to be registered with the Consul agent at http://${agent.address}; retrying for up to `,
    );
  });

  it('with -wait, retries a 500 until the agent recovers', async () => {
    const agent = await serve({
      [SERVICE_PATH]: [{ status: 500, rawBody: 'rpc error: No cluster leader' }, { body: SAMPLE }],
      '/v1/agent/checks': { body: {} },
    });
    const { ports, stderr } = await lookup({ address: agent.address, waitMs: 30_000 });
    expect(ports?.inboundPort).toBe(21000);
    expect(stderr).toContain(`waiting for the Consul agent at http://${agent.address} to recover (HTTP 500)`);
  });

  it('reports a 500 with the agent\'s own words, truncated', async () => {
    const agent = await serve({ [SERVICE_PATH]: { status: 500, rawBody: `rpc error: No cluster leader\n${'x'.repeat(1000)}` } });
    const { error } = await failure({ address: agent.address });
    expect(error.exitCode).toBe(ExitCode.unavailable);
    expect(error.message).toMatch(
      /^the Consul agent at http:\/\/[\d.:]+ failed to answer for service ID "web-sidecar-proxy" \(HTTP 500: "rpc error: No cluster leader\\nx+\.\.\."\)$/,
    );
    expect(error.message.length).toBeLessThan(400);
  });

  it('stops at once on 400, as a usage problem', async () => {
    const rejection = 'Invalid query parameter: "ns" - Namespaces are a Consul Enterprise feature';
    const agent = await serve({ [SERVICE_PATH]: { status: 400, rawBody: rejection } });
    const { error } = await failure({ address: agent.address, namespace: 'team-a', waitMs: 20_000 });
    expect(error.exitCode).toBe(ExitCode.usage);
    expect(error.message).toContain('rejected the request for service ID "web-sidecar-proxy" (HTTP 400: "Invalid query parameter');
    expect(agent.requests).toHaveLength(1);
  });

  it.each([
    ['invalid JSON', { rawBody: '{"Port": 21000, "Proxy": ' }, 'invalid answer from the Consul agent for service ID "web-sidecar-proxy": not JSON (got "{\\"Port\\": 21000, \\"Proxy\\": ")'],
    ['an HTML error page', { rawBody: '<html>502 Bad Gateway</html>' }, 'not JSON (got "<html>502 Bad Gateway</html>")'],
    ['wrong field types', { body: { Port: '21000', Proxy: {} } }, 'Port must be a port number from 0 to 65535 (got "21000")'],
    ['not a proxy', { body: { ID: 'web', Port: 8080 } }, 'is not a proxy'],
  ])('stops at once on %s, even with -wait', async (_, route, message) => {
    const agent = await serve({ [SERVICE_PATH]: route });
    const { error } = await failure({ address: agent.address, waitMs: 20_000 });
    expect(error.exitCode).toBe(ExitCode.badRegistration);
    expect(error.message).toContain(message);
    expect(agent.requests).toHaveLength(1);
  });

  it('refuses an answer too large to be a registration', async () => {
    const agent = await serve({ [SERVICE_PATH]: { rawBody: `{"Port": 1, "Pad": "${'x'.repeat(5 * 1024 * 1024)}"}` } });
    const { error } = await failure({ address: agent.address });
    expect(error.exitCode).toBe(ExitCode.badRegistration);
    expect(error.message).toBe(`the Consul agent at http://${agent.address} sent an answer larger than 4 MiB`);
  });

  it('a refusal stays a refusal (77) however large its answer', async () => {
    const agent = await serve({ [SERVICE_PATH]: { status: 403, rawBody: `ACL not found ${'x'.repeat(5 * 1024 * 1024)}` } });
    const { error } = await failure({ address: agent.address });
    expect(error.exitCode).toBe(ExitCode.noPermission);
    expect(error.message).toContain('denied access');
    expect(error.message).toContain('ACL not found xxx');
  });

  it('gives up on a hanging agent within -timeout', async () => {
    const agent = await serve({ [SERVICE_PATH]: { hang: true } });
    const { error, seconds } = await failure({ address: agent.address, timeoutMs: 500 });
    expect(error.exitCode).toBe(ExitCode.unavailable);
    expect(error.message).toBe(
      `the Consul agent at http://${agent.address} did not answer within 500ms: is it overloaded or stuck? -timeout sets the limit`,
    );
    expect(seconds).toBeLessThan(5);
  });

  it('gives up within -timeout on an agent that stops in the middle of its answer', async () => {
    const { address, close } = await rawServer((socket) => {
      socket.write('HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"Port": 2');
    });
    try {
      const { error, seconds } = await failure({ address, timeoutMs: 500 });
      expect(error.message).toBe(
        `the Consul agent at http://${address} did not answer within 500ms: is it overloaded or stuck? -timeout sets the limit`,
      );
      expect(seconds).toBeLessThan(5);
    } finally {
      await close();
    }
  });

  it('says when something other than HTTP answers', async () => {
    const { address, close } = await rawServer((socket) => socket.end('SSH-2.0-OpenSSH_9.6\r\n'));
    try {
      const { error } = await failure({ address });
      expect(error.exitCode).toBe(ExitCode.unavailable);
      expect(error.message).toMatch(
        new RegExp(`^the Consul agent at http://${address} did not answer in HTTP \\(HPE_[A-Z_]+\\): if it serves HTTPS, use an https:// address$`),
      );
    } finally {
      await close();
    }
  });

  it('keeps to the -wait deadline with a hanging agent', async () => {
    const agent = await serve({ [SERVICE_PATH]: { hang: true } });
    const { error, seconds } = await failure({ address: agent.address, timeoutMs: 300, waitMs: 1_500 });
    expect(error.message).toMatch(/^after waiting 1\.5s, the Consul agent at .* did not answer within 300ms/);
    expect(agent.requests.length).toBeGreaterThan(1);
    expect(seconds).toBeLessThan(8);
  });

  it('keeps to the -wait deadline while nothing listens, saying what it waits for each time', async () => {
    const address = await closedPort();
    const { error, seconds, stderr } = await failure({ address, waitMs: 2_000 });
    expect(error.exitCode).toBe(ExitCode.unavailable);
    expect(error.message).toBe(
      `after waiting 2s, cannot reach the Consul agent at http://${address} (connection refused): is the agent running? set -http-addr or CONSUL_HTTP_ADDR`,
    );
    const waits = stderr.split('\n').filter((line) => line.includes('waiting for the Consul agent'));
    expect(waits.length).toBeGreaterThan(1);
    expect(waits[0]).toMatch(new RegExp(`^redirect-traffic: waiting for the Consul agent at http://${address} \\(connection refused\\); retrying for up to [\\d.]+m?s$`));
    expect(seconds).toBeLessThan(8);
  });

  it('refuses a bad -http-addr before any request', async () => {
    const { error } = await failure({ address: 'consul://127.0.0.1:8500' });
    expect(error.exitCode).toBe(ExitCode.usage);
    expect(error.message).toContain('invalid value "consul://127.0.0.1:8500" for -http-addr: unknown scheme "consul"');
  });
});
