import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fetchProxyPorts } from '../../src/consul/agent.ts';
import { secretHider } from '../../src/consul/secrets.ts';
import { createLogger } from '../../src/log.ts';
import { agentOptions, startFakeAgent, type FakeAgent } from '../helpers/fakeAgent.ts';
import { CliError, ExitCode } from '../../src/errors.ts';
import { captureOutput } from '../helpers/fakes.ts';

// Defect 8: a short token (CONSUL_HTTP_TOKEN=e) hid every "e" of every message, twice over
// ("[hidd[hidden]n]"), and the pattern of what was hidden spelled the token out. Then the cold judge found
// "1" hidden in 127.0.0.1, and the agent's answer itself altered before it was read (a token "web" changed a
// service name, and with it the rules).

const hider = (token: string, password?: string) =>
  secretHider(agentOptions({ token, ...(password === undefined ? {} : { basicAuth: { username: 'ops', password } }) }));

const MESSAGE = 'the agent at 127.0.0.1:8500 refused the connection: check -http-addr';

describe('secretHider', () => {
  it.each(['e', 'a', '1', '0', 'on', 'the', 'agent', '127', 'connection', 'check-http', '8500'])(
    'a short token (%j) is never hidden in our own messages',
    (token) => {
      expect(hider(token).message(MESSAGE)).toBe(MESSAGE);
    },
  );

  it.each(['e', 'a', '1', '0', 'on', '127', 'onnection', 'check-http'])(
    'in what the agent sent, a short token (%j) leaves words and addresses that merely contain it alone, and hiding twice changes nothing',
    (token) => {
      const { agentText } = hider(token);
      const hidden = agentText(MESSAGE);
      expect(hidden).toBe(MESSAGE);
      expect(agentText('"envoy_prometheus_bind_addr":"0.0.0.0:9102","Port":21000,"ServiceName":"web-1"')).toBe(
        '"envoy_prometheus_bind_addr":"0.0.0.0:9102","Port":21000,"ServiceName":"web-1"',
      );
      expect(agentText(hidden)).toBe(hidden);
    },
  );

  it('in what the agent sent, a short token is hidden where it stands alone', () => {
    const { agentText } = hider('e');
    expect(agentText('ACL not found for token e (X-Consul-Token: e)')).toBe('ACL not found for token [hidden] (X-Consul-Token: [hidden])');
    expect(agentText('{"token":"e"}')).toBe('{"token":"[hidden]"}');
    expect(agentText('token=e; other')).toBe('token=[hidden]; other');
  });

  it('in what the agent sent, a short secret next to punctuation is hidden, but not inside an address or port', () => {
    const { agentText } = hider('Tok3n9', 'pw9');
    for (const [echo, hidden] of [
      ['invalid token Tok3n9.', 'invalid token [hidden].'],
      ['token:Tok3n9', 'token:[hidden]'],
      ['<td>Tok3n9</td>', '<td>[hidden]</td>'],
      ['X-Consul-Token=Tok3n9&dc=1', 'X-Consul-Token=[hidden]&dc=1'],
      ['password pw9!', 'password [hidden]!'],
      ['user:pw9@host', 'user:[hidden]@host'],
      // As JSON escapes it: Go's \u003c for <, and \n, \t before it.
      ['{"error":"\\u003ctd\\u003eTok3n9\\u003c/td\\u003e"}', '{"error":"\\u003ctd\\u003e[hidden]\\u003c/td\\u003e"}'],
      ['"bad token:\\nTok3n9"', '"bad token:\\n[hidden]"'],
      ['"password:\\tpw9"', '"password:\\t[hidden]"'],
    ]) expect(agentText(echo!)).toBe(hidden);
    expect(hider('1').agentText('"http://127.0.0.1:1","from 1 to 9"')).toBe('"http://127.0.0.1:1","from [hidden] to 9"');
  });

  it('a common word as the token: only its standalone occurrences in what the agent sent, never a part of a word', () => {
    expect(hider('agent').agentText(MESSAGE)).toBe('the [hidden] at 127.0.0.1:8500 refused the connection: check -http-addr');
    expect(hider('on').agentText(MESSAGE)).toBe(MESSAGE);
  });

  it('hiding twice changes nothing, whatever the token; the placeholder is never hidden inside', () => {
    for (const token of ['e', 'hidden', 'd', '[hidden]', 'n]', 'i']) {
      const { agentText } = hider(token);
      const once = agentText(`token ${token} echoed`);
      expect(agentText(once), token).toBe(once);
      expect(once, token).toBe('token [hidden] echoed');
    }
  });

  it('a long token is hidden wherever it occurs, even inside a longer word, in messages and in what the agent sent', () => {
    const token = '6f1e4c2a-9b7d-4e3f-a1c5-secrettoken';
    const { message, agentText } = hider(token);
    expect(message(`zzz${token}zzz and ${token}`)).toBe('zzz[hidden]zzz and [hidden]');
    expect(agentText(`zzz${token}zzz and ${token}`)).toBe('zzz[hidden]zzz and [hidden]');
  });

  it('token and password together, one holding the other: the longer is hidden whole', () => {
    const { message } = hider('secret-password-and-more', 'secret-password');
    expect(message('a secret-password-and-more b secret-password c')).toBe('a [hidden] b [hidden] c');
  });

  it('regular-expression characters in a secret are taken literally', () => {
    expect(hider('a.b').agentText('axb a.b')).toBe('axb [hidden]');
    expect(hider('(x)*').agentText('((x)*)')).toBe('([hidden])');
    expect(hider('(x)*-and-a-long-tail').message('(((x)*-and-a-long-tail)')).toBe('(([hidden])');
  });

  // A regular expression built from the token: V8 refused one of 32 KiB, and the error message held the token.
  it('a token as long as a token file may hold (64 KiB) is hidden', () => {
    const token = 'b'.repeat(65_536);
    const { message } = hider(token);
    expect(message(`a ${token} b ${token}`)).toBe('a [hidden] b [hidden]');
    expect(message('b'.repeat(1_000_000)).replaceAll('[hidden]', '')).toBe('b'.repeat(1_000_000 % 65_536));
  });

  it('a secret as JSON writes it inside a string is hidden too (a message quoting a value the agent echoed)', () => {
    for (const token of ['abc"defghijklmnop', 'abc\\defghijklmnop', 'a"b']) {
      const { agentText } = hider(token);
      expect(agentText(`Port must be a port number (got ${JSON.stringify(token)})`), token).toBe('Port must be a port number (got "[hidden]")');
    }
  });

  it("a password as the agent's Go JSON writes it (< > & escaped) is hidden too", () => {
    const { agentText } = hider('token-of-some-length', 'p<a>s&s');
    expect(agentText('{"Password":"p\\u003ca\\u003es\\u0026s"}')).toBe('{"Password":"[hidden]"}');
  });

  it('without secrets, text is unchanged', () => {
    const { message, agentText } = secretHider(agentOptions());
    expect(message(MESSAGE)).toBe(MESSAGE);
    expect(agentText(MESSAGE)).toBe(MESSAGE);
  });

  it.each(['e', '1', '0'])('a failed lookup with the one-character token %j still says what happened, ungarbled', async (token) => {
    const captured = captureOutput();
    const agent = agentOptions({ token, address: '127.0.0.1:1', timeoutMs: 500 });
    const error = (await fetchProxyPorts(agent, 'web', createLogger(captured.output, { debug: true })).catch((e: unknown) => e)) as Error;
    expect(error.message).toContain('connection refused');
    expect(error.message).toContain('127.0.0.1:1');
    expect(error.message).not.toContain('[hidden]');
    expect(captured.stderr()).not.toContain('[hidden]');
  });
});

describe('what the agent sent is read as it came, whatever the token', () => {
  const registration = {
    ID: 'web-sidecar-proxy',
    Port: 21000,
    Proxy: { DestinationServiceName: 'web', Config: { envoy_prometheus_bind_addr: '0.0.0.0:9102' }, Expose: { Checks: true } },
  };
  let agent: FakeAgent;
  beforeAll(async () => {
    agent = await startFakeAgent({
      routes: {
        '/v1/agent/service/web-sidecar-proxy': { body: registration },
        '/v1/agent/checks': { body: { 'web-check': { ExposedPort: 21500 } } },
        '/v1/agent/service/deep': { rawBody: `{"Port": ${'['.repeat(100_000)}${']'.repeat(100_000)}}` },
      },
    });
  });
  afterAll(() => agent.close());
  const lookup = (token: string | undefined, proxyId = 'web-sidecar-proxy') =>
    fetchProxyPorts(agentOptions({ address: agent.address, ...(token === undefined ? {} : { token }) }), proxyId, createLogger(captureOutput().output));

  // A token "web" once turned the checks' filter into ServiceName == "[hidden]": the exposed check's port was
  // silently left out of the rules.
  it.each(['0', 'web', '"', ':', ',', '{', '21000', '9102', 'e'])('with the token %j the same ports, the same queries', async (token) => {
    const expected = await lookup(undefined);
    expect(expected.excludeInboundPorts).toContainEqual({ low: 21500, high: 21500 });
    const before = agent.requests.length;
    expect(await lookup(token)).toEqual(expected);
    const filters = agent.requests.slice(before).flatMap((request) => request.query.get('filter') ?? []);
    expect(filters).toEqual(['ServiceName == "web"']);
  });

  it('an answer nested 100,000 deep is an invalid answer naming the field (65), not a crash', async () => {
    const error = (await lookup('e', 'deep').catch((e: unknown) => e)) as CliError;
    expect(error).toBeInstanceOf(CliError);
    expect(error.exitCode).toBe(ExitCode.badRegistration);
    expect(error.message).toMatch(/^invalid answer from the Consul agent for service ID "deep": Port .*\(got a list nested too deep to show\)$/);
  });
});
