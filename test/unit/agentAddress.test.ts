import { describe, expect, it } from 'vitest';
import { parseAgentAddress } from '../../src/consul/address.ts';
import { CliError, ExitCode } from '../../src/errors.ts';

describe('parseAgentAddress', () => {
  it.each([
    ['127.0.0.1:8500', false, { tls: false, host: '127.0.0.1', port: 8500, pathPrefix: '', location: 'http://127.0.0.1:8500' }],
    ['127.0.0.1:8501', true, { tls: true, host: '127.0.0.1', port: 8501, pathPrefix: '', location: 'https://127.0.0.1:8501' }],
    ['consul.service:8500', false, { tls: false, host: 'consul.service', port: 8500, location: 'http://consul.service:8500' }],
    ['[::1]:8500', false, { tls: false, host: '::1', port: 8500, location: 'http://[::1]:8500' }],
    ['http://[fe80::1]:8500', false, { tls: false, host: 'fe80::1', port: 8500 }],
    ['http://127.0.0.1:8500', false, { tls: false, port: 8500 }],
    // Consul never falls back to plain HTTP once CONSUL_HTTP_SSL asked for TLS.
    ['http://127.0.0.1:8500', true, { tls: true, location: 'https://127.0.0.1:8500' }],
    ['https://127.0.0.1:8501', false, { tls: true, port: 8501 }],
    ['https://consul.example', false, { tls: true, port: 443, location: 'https://consul.example' }],
    ['consul.example', false, { tls: false, port: 80 }],
    ['http://127.0.0.1:8500/consul/', false, { pathPrefix: '/consul', location: 'http://127.0.0.1:8500/consul' }],
    ['https://lb.example:443/a/b', false, { tls: true, port: 443, pathPrefix: '/a/b', location: 'https://lb.example/a/b' }],
  ])('%s (CONSUL_HTTP_SSL=%s)', (address, useTls, expected) => {
    expect(parseAgentAddress(address, useTls)).toMatchObject({ socketPath: undefined, ...expected });
  });

  it.each([
    ['unix:///run/consul/http.sock', false],
    ['unix:///run/consul/http.sock', true],
  ])('%s is a unix socket (CONSUL_HTTP_SSL=%s)', (address, useTls) => {
    expect(parseAgentAddress(address, useTls)).toMatchObject({
      tls: useTls,
      socketPath: '/run/consul/http.sock',
      pathPrefix: '',
      location: 'unix:///run/consul/http.sock',
    });
  });

  function usageError(address: string): CliError {
    try {
      parseAgentAddress(address, false);
    } catch (error) {
      if (error instanceof CliError) return error;
      throw error;
    }
    throw new Error(`${address} was accepted`);
  }

  it('names -http-addr, the value and the unknown scheme', () => {
    const error = usageError('tcp://127.0.0.1:8500');
    expect(error.exitCode).toBe(ExitCode.usage);
    expect(error.message).toBe(
      'invalid value "tcp://127.0.0.1:8500" for -http-addr: unknown scheme "tcp"; use host:port, http://host:port, https://host:port or unix:///path/to/socket',
    );
  });

  it.each(['unix://', 'http://', '127.0.0.1:port', 'http://127.0.0.1:8500?x=1', 'http://127.0.0.1:8500#x', '[::1:8500', 'HTTP://x:1'])(
    'refuses %s as a usage error naming it',
    (address) => {
      const error = usageError(address);
      expect(error.exitCode).toBe(ExitCode.usage);
      expect(error.message).toContain(`invalid value ${JSON.stringify(address)} for -http-addr`);
    },
  );

  it('refuses credentials in the address without echoing them', () => {
    const error = usageError('http://admin:hunter2@127.0.0.1:8500');
    expect(error.exitCode).toBe(ExitCode.usage);
    expect(error.message).not.toContain('hunter2');
    expect(error.message).toContain('CONSUL_HTTP_AUTH');
  });
});
