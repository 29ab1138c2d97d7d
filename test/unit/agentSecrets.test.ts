import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fetchProxyPorts } from '../../src/consul/agent.ts';
import { createLogger } from '../../src/log.ts';
import { run } from '../../src/main.ts';
import type { AgentOptions } from '../../src/options.ts';
import { agentOptions, startFakeAgent, type FakeAgent, type FakeRoute } from '../helpers/fakeAgent.ts';
import { captureOutput, fakeRunner } from '../helpers/fakes.ts';

// Every failure path runs with a recognisable token and password, against an agent that echoes them back
// wherever an answer can carry text. Nothing captured may contain either.

const TOKEN = '6f1e4c2a-9b7d-4e3f-a1c5-secrettoken';
const PASSWORD = 'pw-8d2f-secretpassword';
const SECRETS = { token: TOKEN, tokenSource: 'CONSUL_HTTP_TOKEN', basicAuth: { username: 'ops', password: PASSWORD } };
const PROXY_ID = 'web-sidecar-proxy';
const echo = `token ${TOKEN} password ${PASSWORD}`;

const ROUTES: Record<string, FakeRoute | FakeRoute[]> = {
  '/v1/agent/service/forbidden': { status: 403, rawBody: `ACL denied for ${echo}` },
  '/v1/agent/service/unauthorized': { status: 401, rawBody: echo },
  '/v1/agent/service/missing': { status: 404, rawBody: `unknown service ID: ${echo}` },
  '/v1/agent/service/broken': { status: 500, rawBody: `${'x'.repeat(190)}${echo}` },
  '/v1/agent/service/bad-request': { status: 400, rawBody: echo },
  '/v1/agent/service/moved': { status: 302, rawBody: echo },
  '/v1/agent/service/not-json': { rawBody: `${'y'.repeat(70)}${echo}` },
  '/v1/agent/service/bad-bind-port': { body: { Port: 1, Proxy: { Config: { bind_port: echo } } } },
  '/v1/agent/service/bad-stats-addr': { body: { Port: 1, Proxy: { Config: { envoy_stats_bind_addr: `${'z'.repeat(70)}${TOKEN}` } } } },
  '/v1/agent/service/bad-check': { body: { Port: 1, Proxy: { DestinationServiceName: TOKEN, Expose: { Checks: true } } } },
  '/v1/agent/service/not-a-proxy': { body: { ID: TOKEN, Port: 1 } },
  '/v1/agent/service/hangs': { hang: true },
  '/v1/agent/checks': { body: { [TOKEN]: { ExposedPort: PASSWORD } } },
  [`/v1/agent/service/${PROXY_ID}`]: { body: { Port: 21000, Proxy: {} } },
};

let agent: FakeAgent;
let tlsAgent: FakeAgent;
let closedAddress: string;
beforeAll(async () => {
  agent = await startFakeAgent({ routes: ROUTES });
  tlsAgent = await startFakeAgent({ transport: 'tls', requireClientCert: true, routes: ROUTES });
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  closedAddress = `127.0.0.1:${(server.address() as { port: number }).port}`;
  await new Promise((resolve) => server.close(resolve));
});
afterAll(async () => {
  await agent.close();
  await tlsAgent.close();
});

/** Everything a lookup leaves behind: its debug log, and the error's message, stack and serialisations. */
async function traces(options: Partial<AgentOptions>, proxyId: string): Promise<string> {
  const captured = captureOutput();
  try {
    await fetchProxyPorts(agentOptions({ ...SECRETS, ...options }), proxyId, createLogger(captured.output, { debug: true }));
    return captured.stderr();
  } catch (error) {
    const { message, stack } = error as Error;
    return [captured.stderr(), message, stack, String(error), JSON.stringify(error), JSON.stringify(Object.entries(error as object))].join('\n');
  }
}

describe('the token and password never show', () => {
  it.each([
    ['403 ACL denied', 'forbidden', {}],
    ['401', 'unauthorized', {}],
    ['404 not registered, waited for', 'missing', { waitMs: 600 }],
    ['500, waited for', 'broken', { waitMs: 600 }],
    ['400', 'bad-request', {}],
    ['an unexpected status', 'moved', {}],
    ['not JSON', 'not-json', {}],
    ['an invalid bind_port', 'bad-bind-port', {}],
    ['an invalid stats address', 'bad-stats-addr', {}],
    ['an invalid exposed check', 'bad-check', {}],
    ['not a proxy', 'not-a-proxy', {}],
    ['a hanging agent', 'hangs', { timeoutMs: 300, waitMs: 500 }],
    ['success', PROXY_ID, {}],
    ['the catalog', PROXY_ID, { nodeName: 'unknown-node' }],
  ] as const)('on %s', async (_, proxyId, options) => {
    const text = await traces({ address: agent.address, ...options }, proxyId);
    expect(text).not.toContain(TOKEN);
    expect(text).not.toContain(PASSWORD);
  });

  it('replaces an echo before an excerpt is cut, so no part of a secret shows', async () => {
    expect(await traces({ address: agent.address }, 'forbidden')).toContain('ACL denied for token [hidden] password [hidden]');
    expect(await traces({ address: agent.address }, 'broken')).toMatch(/x{190}token \[hid\.\.\."\)/);
  });

  it('when the agent is unreachable, waited for', async () => {
    const text = await traces({ address: closedAddress, waitMs: 600 }, PROXY_ID);
    expect(text).toContain('connection refused');
    expect(text).not.toContain(TOKEN);
    expect(text).not.toContain(PASSWORD);
  });

  it('on TLS failures', async () => {
    const text = await traces({ address: tlsAgent.address }, PROXY_ID);
    expect(text).toContain('TLS handshake');
    expect(text).not.toContain(TOKEN);
    expect(text).not.toContain(PASSWORD);
  });

  it('on a bad -http-addr', async () => {
    const text = await traces({ address: 'ftp://127.0.0.1' }, PROXY_ID);
    expect(text).toContain('-http-addr');
    expect(text).not.toContain(TOKEN);
  });

  describe('through the CLI with --debug (stack traces on)', () => {
    const tokenDir = mkdtempSync(join(tmpdir(), 'token-'));
    const tokenFile = join(tokenDir, 'token');
    writeFileSync(tokenFile, `${TOKEN}\n`);
    afterAll(() => rmSync(tokenDir, { recursive: true, force: true }));

    it.each([
      ['-token', ['-token', TOKEN], {}],
      ['-token-file', [`-token-file=${tokenFile}`], {}],
      ['CONSUL_HTTP_TOKEN', [], { CONSUL_HTTP_TOKEN: TOKEN }],
      ['CONSUL_HTTP_TOKEN_FILE', [], { CONSUL_HTTP_TOKEN_FILE: tokenFile }],
    ])('with the token from %s', async (_, tokenArgs, env) => {
      for (const proxyId of ['forbidden', 'broken', 'bad-bind-port', PROXY_ID]) {
        const captured = captureOutput();
        const runner = fakeRunner();
        const code = await run(
          ['--dry-run', '--debug', `-proxy-id=${proxyId}`, '-proxy-uid=101', `-http-addr=${agent.address}`, ...tokenArgs],
          { output: captured.output, env: { CONSUL_HTTP_AUTH: `ops:${PASSWORD}`, ...env }, runner: runner.factory },
        );
        expect(code === 0).toBe(proxyId === PROXY_ID);
        expect(captured.stderr()).not.toContain(TOKEN);
        expect(captured.stdout()).not.toContain(TOKEN);
        expect(captured.stderr()).not.toContain(PASSWORD);
      }
    });
  });
});
