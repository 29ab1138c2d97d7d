import { UsageError, invalidValue } from '../errors.ts';

/** Where the agent listens and how to talk to it, from -http-addr. */
export interface AgentEndpoint {
  tls: boolean;
  /** A unix socket, or undefined for TCP to `host:port`. */
  socketPath: string | undefined;
  /** Without IPv6 brackets, as node:http wants it. */
  host: string;
  port: number;
  /** `/consul` for `http://host:8500/consul`; '' for none. */
  pathPrefix: string;
  /** The address as messages show it: `http://127.0.0.1:8500`, `unix:///run/consul/http.sock`. */
  location: string;
}

const FORMS = 'use host:port, http://host:port, https://host:port or unix:///path/to/socket';

/**
 * Reads -http-addr the way Consul's api.NewClient does: a scheme before `://` picks the transport, no
 * scheme means http (https with CONSUL_HTTP_SSL=true), and a URL path becomes a prefix of every request.
 */
export function parseAgentAddress(address: string, useTls: boolean, source = '-http-addr'): AgentEndpoint {
  const invalid = (reason: string) => invalidValue(source, address, reason);
  const separator = address.indexOf('://');
  const scheme = separator < 0 ? undefined : address.slice(0, separator);
  const rest = separator < 0 ? address : address.slice(separator + 3);
  if (scheme === 'unix') {
    if (rest === '') throw invalid(`no socket path after unix://; ${FORMS}`);
    return { tls: useTls, socketPath: rest, host: 'localhost', port: 0, pathPrefix: '', location: address };
  }
  if (scheme !== undefined && scheme !== 'http' && scheme !== 'https') {
    throw invalid(`unknown scheme "${scheme}"; ${FORMS}`);
  }
  // As Consul: an http:// address never turns TLS off once CONSUL_HTTP_SSL asked for it.
  const tls = scheme === 'https' || useTls;
  let url: URL;
  try {
    url = new URL(`${tls ? 'https' : 'http'}://${rest}`);
  } catch {
    throw invalid(FORMS);
  }
  if (url.username !== '' || url.password !== '') {
    // The value is not echoed: it holds a password.
    throw new UsageError(`${source} must not hold credentials (value not shown): put them in CONSUL_HTTP_AUTH`);
  }
  if (url.hostname === '' || url.search !== '' || url.hash !== '') throw invalid(FORMS);
  const pathPrefix = url.pathname.replace(/\/+$/, '');
  return {
    tls,
    socketPath: undefined,
    host: url.hostname.replace(/^\[(.*)\]$/, '$1'),
    port: url.port === '' ? (tls ? 443 : 80) : Number(url.port),
    pathPrefix,
    location: `${url.protocol}//${url.host}${pathPrefix}`,
  };
}
