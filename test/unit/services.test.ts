import { existsSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parseServices, tcpServicePort } from '../../src/host/services.ts';

describe('/etc/services', () => {
  it('maps TCP names and aliases to ports; the first entry of a name wins; UDP-only names, comments and junk are not', () => {
    const ports = parseServices(
      [
        '# Network services, Internet style',
        'ssh\t\t22/tcp\t\t\t\t# SSH Remote Login Protocol',
        'domain\t\t53/udp',
        'http\t\t80/tcp\t\twww\t\t# WorldWideWeb HTTP',
        'www\t\t8080/tcp',
        'kerberos-adm\t749/tcp',
        'toolarge\t70000/tcp',
        'broken',
        '',
      ].join('\n'),
    );
    expect(Object.fromEntries(ports)).toEqual({ ssh: 22, http: 80, www: 80, 'kerberos-adm': 749 });
  });

  // Debian's netbase ships it; a minimal container may not have it, and then knows no names.
  it("reads this host's file", () => {
    expect(tcpServicePort('ssh')).toBe(existsSync('/etc/services') ? 22 : undefined);
    expect(tcpServicePort('no-such-service-xyz')).toBeUndefined();
  });
});
