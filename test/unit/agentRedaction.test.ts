import { describe, expect, it } from 'vitest';
import { fetchProxyPorts } from '../../src/consul/agent.ts';
import { secretHider } from '../../src/consul/secrets.ts';
import { createLogger } from '../../src/log.ts';
import { agentOptions } from '../helpers/fakeAgent.ts';
import { captureOutput } from '../helpers/fakes.ts';

// Defect 8: a short token (CONSUL_HTTP_TOKEN=e) hid every "e" of every message, twice over
// ("[hidd[hidden]n]"), and the pattern of what was hidden spelled the token out.

const hider = (token: string, password?: string) =>
  secretHider(agentOptions({ token, ...(password === undefined ? {} : { basicAuth: { username: 'ops', password } }) }));

const MESSAGE = 'the agent at 127.0.0.1:8500 refused the connection: check -http-addr';

describe('secretHider', () => {
  it.each(['e', 'a', '1', 'on', 'the', 'agent', '127', 'connection', 'check-http'])(
    'a short token (%j) leaves words that merely contain it alone, and hiding twice changes nothing',
    (token) => {
      const hide = hider(token);
      const hidden = hide(MESSAGE);
      for (const word of MESSAGE.match(/[A-Za-z0-9_-]+/g) ?? []) {
        if (word !== token) expect(hidden).toContain(word);
      }
      expect(hidden.replaceAll('[hidden]', '')).not.toMatch(/[[\]]|hidd/);
      expect(hide(hidden)).toBe(hidden);
    },
  );

  it('a short token is hidden where it stands alone', () => {
    const hide = hider('e');
    expect(hide('ACL not found for token e (X-Consul-Token: e)')).toBe('ACL not found for token [hidden] (X-Consul-Token: [hidden])');
    expect(hide('{"token":"e"}')).toBe('{"token":"[hidden]"}');
  });

  it('a common word as the token: only its whole-word occurrences go, never a part of a word', () => {
    expect(hider('agent')(MESSAGE)).toBe('the [hidden] at 127.0.0.1:8500 refused the connection: check -http-addr');
    expect(hider('on')(MESSAGE)).toBe(MESSAGE);
  });

  it('hiding twice changes nothing, whatever the token; the placeholder is never hidden inside', () => {
    for (const token of ['e', 'hidden', 'd', '[hidden]', 'n]', 'i']) {
      const hide = hider(token);
      const once = hide(`token ${token} echoed`);
      expect(hide(once), token).toBe(once);
      expect(once, token).toBe('token [hidden] echoed');
    }
  });

  it('a long token is hidden wherever it occurs, even inside a longer word', () => {
    const token = '6f1e4c2a-9b7d-4e3f-a1c5-secrettoken';
    const hide = hider(token);
    expect(hide(`zzz${token}zzz and ${token}`)).toBe('zzz[hidden]zzz and [hidden]');
  });

  it('token and password together, one holding the other: the longer is hidden whole', () => {
    const hide = hider('secret-password-and-more', 'secret-password');
    expect(hide('a secret-password-and-more b secret-password c')).toBe('a [hidden] b [hidden] c');
  });

  it('regular-expression characters in a secret are taken literally', () => {
    expect(hider('a.b')('axb a.b')).toBe('axb [hidden]');
    expect(hider('(x)*')('((x)*)')).toBe('([hidden])');
  });

  // A regular expression built from the token: V8 refused one of 32 KiB, and the error message held the token.
  it('a token as long as a token file may hold (64 KiB) is hidden', () => {
    const token = 'b'.repeat(65_536);
    const hide = hider(token);
    expect(hide(`a ${token} b ${token}`)).toBe('a [hidden] b [hidden]');
    expect(hide('b'.repeat(1_000_000)).replaceAll('[hidden]', '')).toBe('b'.repeat(1_000_000 % 65_536));
  });

  it('a secret as JSON writes it inside a string is hidden too (a message quoting a value the agent echoed)', () => {
    for (const token of ['abc"defghijklmnop', 'abc\\defghijklmnop', 'a"b']) {
      const hide = hider(token);
      expect(hide(`Port must be a port number (got ${JSON.stringify(token)})`), token).toBe('Port must be a port number (got "[hidden]")');
    }
  });

  it("a password as the agent's Go JSON writes it (< > & escaped) is hidden too", () => {
    const hide = hider('token-of-some-length', 'p<a>s&s');
    expect(hide('{"Password":"p\\u003ca\\u003es\\u0026s"}')).toBe('{"Password":"[hidden]"}');
  });

  it('without secrets, text is unchanged', () => {
    expect(secretHider(agentOptions())(MESSAGE)).toBe(MESSAGE);
  });

  it('a failed lookup with a one-letter token still says what happened, ungarbled', async () => {
    const captured = captureOutput();
    const agent = agentOptions({ token: 'e', address: '127.0.0.1:1', timeoutMs: 500 });
    const error = (await fetchProxyPorts(agent, 'web', createLogger(captured.output, { debug: true })).catch((e: unknown) => e)) as Error;
    expect(error.message).toContain('connection refused');
    expect(error.message).not.toContain('[hidden]');
    expect(captured.stderr()).not.toContain('[hidden]');
  });
});
