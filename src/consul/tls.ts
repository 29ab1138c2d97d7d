import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import type { AgentOptions, FileSetting } from '../options.ts';
import { FILE_LIMITS, readUserFile } from '../userFile.ts';

/** The TLS part of a request's options (node:https passes them to tls.connect). */
export interface TlsSettings {
  ca?: string[];
  cert?: string;
  key?: string;
  servername?: string;
  rejectUnauthorized: boolean;
}

const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;

const readText = (setting: FileSetting, path: string) => readUserFile(path, setting.label, FILE_LIMITS.tls, setting.errorKind);

function certificatesIn(setting: FileSetting, path: string): string[] {
  return readText(setting, path).match(PEM_CERTIFICATE) ?? [];
}

/** -ca-file wins over -ca-path, as in Consul; without either, Node's own root certificates apply. */
function trustedCertificates(agent: AgentOptions): string[] | undefined {
  if (agent.caFile !== undefined) {
    const setting = agent.tlsFileSources.caFile;
    const found = certificatesIn(setting, agent.caFile);
    if (found.length === 0) throw new setting.errorKind(`${setting.label} ${agent.caFile} holds no PEM certificate`);
    return found;
  }
  if (agent.caPath === undefined) return undefined;
  const caPath = agent.caPath;
  // Unlike Go, files without a certificate are skipped: CA directories often hold READMEs and hash links.
  const found = readdirSync(caPath, { withFileTypes: true })
    .filter((entry) => entry.isFile() || entry.isSymbolicLink())
    .map((entry) => entry.name)
    .sort()
    .flatMap((name) => certificatesIn(agent.tlsFileSources.caPath, join(caPath, name)));
  const setting = agent.tlsFileSources.caPath;
  if (found.length === 0) throw new setting.errorKind(`${setting.label} ${caPath} holds no PEM certificate`);
  return found;
}

/** Reads the TLS files once, up front, so a bad file is a usage error rather than a failed handshake. */
export async function tlsSettings(agent: AgentOptions): Promise<TlsSettings> {
  const ca = trustedCertificates(agent);
  const settings: TlsSettings = {
    ...(ca === undefined ? {} : { ca }),
    // The name to verify, without a port, as Consul strips it.
    ...(agent.tlsServerName === undefined ? {} : { servername: agent.tlsServerName.replace(/:\d+$/, '') }),
    rejectUnauthorized: agent.verifyTls,
  };
  if (agent.clientCert === undefined || agent.clientKey === undefined) return settings;
  const { clientCert: certSource, clientKey: keySource } = agent.tlsFileSources;
  const cert = readText(certSource, agent.clientCert);
  const key = readText(keySource, agent.clientKey);
  // node:tls is loaded here, not at start-up: most runs never talk to the agent.
  const { createSecureContext } = await import('node:tls');
  try {
    createSecureContext({ cert, key });
  } catch (error) {
    throw new certSource.errorKind(
      `cannot use ${certSource.label} ${agent.clientCert} with ${keySource.label} ${agent.clientKey}: ${(error as Error).message}`,
    );
  }
  return { ...settings, cert, key };
}

const UNKNOWN_AUTHORITY = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
]);
const NAME_MISMATCH = new Set(['ERR_TLS_CERT_ALTNAME_INVALID', 'HOSTNAME_MISMATCH']);
// OpenSSL's and Node's TLS errors, and the X.509 verification results Node reports by name.
const TLS_CODE = /^ERR_(SSL|TLS)_|CERT|CRL|^UNABLE_TO_|^INVALID_(CA|PURPOSE)$|^PATH_LENGTH_EXCEEDED$/;

/** What went wrong in a TLS handshake and which flag to look at, or undefined for a non-TLS error. */
export function describeTlsFailure(error: unknown): string | undefined {
  const { code = '', message, reason } = error as NodeJS.ErrnoException & { reason?: string };
  if (UNKNOWN_AUTHORITY.has(code)) {
    return `certificate signed by unknown authority (${code}): check -ca-file/-ca-path and -tls-server-name`;
  }
  if (NAME_MISMATCH.has(code)) return `${message}: check -tls-server-name`;
  // Node reports a plain-HTTP server answering a TLS hello as ERR_SSL_... or as a bare EPROTO.
  if (code === 'ERR_SSL_WRONG_VERSION_NUMBER' || (code === 'EPROTO' && /wrong version number/.test(message))) {
    return 'the agent does not speak TLS at this address: use an http:// address, or unset CONSUL_HTTP_SSL';
  }
  if (code === 'EPROTO') return 'TLS protocol error (EPROTO): check that the agent serves HTTPS at this address';
  if (!TLS_CODE.test(code)) return undefined;
  return `${reason ?? message} (${code}): check -client-cert/-client-key, -ca-file/-ca-path and -tls-server-name`;
}
