import { readFileSync, statSync } from 'node:fs';

// Port names, as iptables and Consul's nftables branch take them (`-exclude-inbound-port=ssh`): the TCP
// services of /etc/services, names and aliases. Read once, when a name is first asked for.

const SERVICES_FILE = '/etc/services';
/** Far more than any services file holds (Debian's is 13 kB); beyond it, the file is not read. */
const MAX_SERVICES_BYTES = 4 * 1024 * 1024;

let tcpPorts: Map<string, number> | undefined;

/** The TCP port /etc/services gives `name`, or undefined. */
export function tcpServicePort(name: string): number | undefined {
  tcpPorts ??= parseServices(readServices());
  return tcpPorts.get(name);
}

/** Its text; empty when it is missing, not a regular file, or too large to be one. */
function readServices(): string {
  try {
    const stats = statSync(SERVICES_FILE);
    return stats.isFile() && stats.size <= MAX_SERVICES_BYTES ? readFileSync(SERVICES_FILE, 'latin1') : '';
  } catch {
    return '';
  }
}

/** `name port/protocol aliases... # comment` lines; the first entry of a name wins, as getservbyname's. */
export function parseServices(text: string): Map<string, number> {
  const ports = new Map<string, number>();
  for (const line of text.split('\n')) {
    const [name, portAndProtocol, ...aliases] = line.replace(/#.*/, '').trim().split(/\s+/);
    const match = /^(\d{1,5})\/tcp$/.exec(portAndProtocol ?? '');
    if (name === undefined || match === null || Number(match[1]) > 65535) continue;
    for (const key of [name, ...aliases]) if (!ports.has(key)) ports.set(key, Number(match[1]));
  }
  return ports;
}
