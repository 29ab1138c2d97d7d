// The probe `verify` runs: its source text is handed to `node -e`, so it must be self-contained (no imports,
// nothing from the enclosing module; only `require` of Node's own modules, inside the function).
//
// Two processes, both started as root in the target network namespace at the same time (src/host/probe.ts):
//
//   node -e <PROBE_SOURCE> -- probe '<ProbePlan JSON>'
//       Binds the listeners it can (the outbound port on every address, the DNS endpoint over UDP) and prints
//       the client's plan as one JSON line {"client": ...}. Then reads the client's result on stdin, waits for
//       what is still on its way, and prints one JSON line: a ProbeReport, or {"error": ...}. When the outbound
//       port was taken, it also looks in this namespace's socket tables (/proc/net/tcp, tcp6) for who listens
//       there and for the other end of the client's connection: where it was accepted, if on this host at all.
//   node -e <PROBE_SOURCE> -- client        (the client plan as the first line on stdin)
//       Drops to the plan's UID/GID (no supplementary groups) before opening any socket, so the kernel's
//       owner match sees that UID; connects / sends, prints one JSON line with what it saw. A handshake with
//       someone else's listener is held open (the probe looks for its other end meanwhile) until stdin ends,
//       then reset.

/* eslint-disable @typescript-eslint/no-require-imports */
export function probeMain(): void {
  const net = require('node:net') as typeof import('node:net');
  const dgram = require('node:dgram') as typeof import('node:dgram');
  const { randomBytes } = require('node:crypto') as typeof import('node:crypto');
  const { readFileSync } = require('node:fs') as typeof import('node:fs');
  const { endianness } = require('node:os') as typeof import('node:os');

  type Endpoint = { host: string; port: number };
  type Client = { outcome: string; code?: string; local?: Endpoint };
  const write = (value: unknown) => process.stdout.write(`${JSON.stringify(value)}\n`);
  const errno = (error: unknown) => String((error as NodeJS.ErrnoException)?.code ?? (error as Error)?.message ?? error);
  const mode = process.argv[1];

  /** A DNS query: `consul.` SOA, recursion not desired (an answer must not need the Internet). */
  const dnsQuery = (id: number) =>
    Buffer.concat([
      Buffer.from([id >> 8, id & 0xff, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00]),
      Buffer.from([6, ...Buffer.from('consul'), 0, 0x00, 0x06, 0x00, 0x01]),
    ]);

  if (mode === 'client') {
    let input = '';
    let planSeen = false;
    // The connection held for the probe to find, and whether the CLI has let go of it (stdin ended).
    let held: import('node:net').Socket | undefined;
    let released = false;
    let reported = false;
    const resetAndExit = () => {
      held?.resetAndDestroy();
      process.exit(0);
    };
    process.stdin.setEncoding('utf8');
    process.stdin.on('data', (chunk) => {
      input += chunk;
      const end = input.indexOf('\n');
      if (planSeen || end < 0) return;
      planSeen = true;
      run(input.slice(0, end));
    });
    process.stdin.on('end', () => {
      released = true;
      if (!planSeen) process.exit(1);
      if (reported) resetAndExit();
    });
    const run = (line: string) => {
      const plan = JSON.parse(line) as {
        uid: number;
        gid: number;
        waitMs: number;
        nonce: string;
        outbound?: { send: Endpoint; handshakeOnly: boolean };
        dns?: { send: Endpoint; query: boolean; id: number };
      };
      // Never outlive the parent's interest, whatever happens.
      setTimeout(() => process.exit(2), plan.waitMs + 1000).unref();
      try {
        process.setgroups?.([]);
        process.setgid?.(plan.gid);
        process.setuid?.(plan.uid);
      } catch (error) {
        write({ error: `could not switch to uid ${plan.uid}: ${errno(error)}` });
        process.exit(1);
      }
      const started = Date.now();
      const tcp = new Promise<Client | undefined>((resolve) => {
        const target = plan.outbound;
        if (!target) return resolve(undefined);
        // Half-open allowed: a listener that closes at once gets no FIN back, the connection stays findable.
        const socket = net.connect({ host: target.send.host, port: target.send.port, allowHalfOpen: true });
        const timer = setTimeout(() => {
          socket.destroy();
          resolve({ outcome: 'timeout' });
        }, Math.max(1, plan.waitMs - (Date.now() - started)));
        const done = (client: Client) => {
          clearTimeout(timer);
          resolve(client);
        };
        socket.on('error', (error) => done({ outcome: 'error', code: errno(error) }));
        socket.on('connect', () => {
          if (target.handshakeOnly) {
            // Someone else's listener (Envoy), or whatever answers for 192.0.2.1: the handshake alone does not
            // say which. Keep the connection while the probe looks for its other end (a few milliseconds),
            // then reset it, before Envoy makes much of it.
            held = socket;
            socket.on('error', () => undefined);
            const { localAddress: host, localPort: port } = socket;
            return done({ outcome: 'connected', ...(host !== undefined && port !== undefined ? { local: { host, port } } : {}) });
          }
          // Our own listener acknowledges the nonce; the parent also sees it arrive.
          socket.write(`${plan.nonce}\n`);
          let reply = '';
          socket.on('data', (chunk) => {
            reply += chunk.toString();
            if (!reply.includes('\n')) return;
            // Reset rather than closed: no TIME_WAIT is left on the proxy's port to keep Envoy from binding it.
            socket.resetAndDestroy();
            done(reply.startsWith('ok') ? { outcome: 'connected' } : { outcome: 'error', code: 'no acknowledgement' });
          });
          socket.on('close', () => done({ outcome: 'error', code: 'closed without acknowledgement' }));
        });
      });
      const udp = new Promise<Client | undefined>((resolve) => {
        const target = plan.dns;
        if (!target) return resolve(undefined);
        const socket = dgram.createSocket(target.send.host.includes(':') ? 'udp6' : 'udp4');
        let finished = false;
        const done = (client: Client) => {
          if (finished) return;
          finished = true;
          clearTimeout(timer);
          socket.close();
          resolve(client);
        };
        const timer = setTimeout(() => done({ outcome: target.query ? 'timeout' : 'sent' }), Math.max(1, plan.waitMs - (Date.now() - started)));
        socket.on('error', (error) => done({ outcome: 'error', code: errno(error) }));
        socket.on('message', (message) => {
          // A reply to our query: same ID, QR bit set.
          if (target.query && message.length >= 12 && message.readUInt16BE(0) === target.id && (message[2]! & 0x80) !== 0) {
            done({ outcome: 'answered' });
          }
        });
        // Connected: the kernel hands us only datagrams from the address we sent to (NAT undone), and ICMP errors.
        socket.connect(target.send.port, target.send.host, () => {
          const payload = target.query ? dnsQuery(target.id) : Buffer.from(`${plan.nonce}\n`);
          socket.send(payload, (error) => {
            if (error) done({ outcome: 'error', code: errno(error) });
            // Our own listener: the parent sees the datagram arrive; an ICMP error still shows here meanwhile.
          });
        });
      });
      void Promise.all([tcp, udp]).then(([outbound, dns]) => {
        write({ outbound, dns, elapsedMs: Date.now() - started });
        reported = true;
        if (held === undefined || released) resetAndExit();
      });
    };
    return;
  }

  if (mode !== 'probe') {
    write({ error: `unknown probe mode ${String(mode)}` });
    process.exit(1);
  }

  const plan = JSON.parse(process.argv[2] ?? '{}') as {
    uid: number;
    gid: number;
    waitMs: number;
    limitMs: number;
    outbound?: { send: Endpoint; expect: Endpoint };
    dns?: { mode: 'port' | 'ip'; send: Endpoint; expect: Endpoint };
  };
  setTimeout(() => {
    write({ error: `the probe did not finish within ${plan.limitMs / 1000} s` });
    process.exit(1);
  }, plan.limitMs).unref();
  const started = Date.now();
  const nonce = randomBytes(16).toString('hex');
  const dnsId = randomBytes(2).readUInt16BE(0);
  const arrivals = { outbound: false, dns: false };
  let onArrival = () => undefined as void;

  /** Whether some socket serves host:port over UDP in this namespace, read from /proc/net (changes nothing). */
  const udpServed = (host: string, port: number) => {
    const hex = (address: string) =>
      address
        .split('.')
        .reverse()
        .map((octet) => Number(octet).toString(16).padStart(2, '0'))
        .join('')
        .toUpperCase();
    const wanted = [`${hex(host)}:${port.toString(16).toUpperCase().padStart(4, '0')}`, `00000000:${port.toString(16).toUpperCase().padStart(4, '0')}`];
    try {
      return readFileSync('/proc/net/udp', 'utf8')
        .split('\n')
        .some((line) => wanted.includes(line.trim().split(/\s+/)[1] ?? ''));
    } catch {
      return false;
    }
  };

  /**
   * This namespace's TCP sockets, IPv4 and IPv6, from /proc/net (the reader's namespace; changes nothing).
   * Addresses are printed as 32-bit words in host byte order; IPv4-mapped IPv6 ones are given as IPv4.
   * Undefined when neither table can be read.
   */
  const tcpSockets = () => {
    const wordBytes = (word: string) => {
      const bytes = [0, 2, 4, 6].map((i) => parseInt(word.slice(i, i + 2), 16));
      return endianness() === 'LE' ? bytes.reverse() : bytes;
    };
    const endpoint = (text: string): Endpoint => {
      const [hex = '', port = '0'] = text.split(':');
      const bytes: number[] = [];
      for (let i = 0; i < hex.length; i += 8) bytes.push(...wordBytes(hex.slice(i, i + 8)));
      const mapped = bytes.length === 16 && bytes.slice(0, 10).every((b) => b === 0) && bytes[10] === 255 && bytes[11] === 255;
      const host =
        bytes.length === 4 || mapped
          ? bytes.slice(-4).join('.')
          : Array.from({ length: 8 }, (_, i) => ((bytes[2 * i]! << 8) | bytes[2 * i + 1]!).toString(16)).join(':');
      return { host, port: parseInt(port, 16) };
    };
    let readable = false;
    const sockets: { local: Endpoint; remote: Endpoint; listening: boolean; uid: number }[] = [];
    for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
      let text: string;
      try {
        text = readFileSync(file, 'utf8');
      } catch {
        continue;
      }
      readable = true;
      for (const line of text.split('\n').slice(1)) {
        // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
        const fields = line.trim().split(/\s+/);
        if (fields.length < 10) continue;
        sockets.push({ local: endpoint(fields[1]!), remote: endpoint(fields[2]!), listening: fields[3] === '0A', uid: Number(fields[7]) });
      }
    }
    return readable ? sockets : undefined;
  };
  /** Plain IPv4 for an IPv4-mapped IPv6 address, as the socket tables are read. */
  const plainHost = (host: string) => host.replace(/^::ffff:(\d+\.\d+\.\d+\.\d+)$/i, '$1');

  const listenTcp = (at: Endpoint) =>
    new Promise<{ server?: import('node:net').Server; error?: string }>((resolve) => {
      const server = net.createServer((connection) => {
        let data = '';
        connection.setTimeout(plan.waitMs, () => connection.destroy());
        connection.on('error', () => undefined);
        connection.on('data', (chunk) => {
          data += chunk.toString();
          if (!data.includes('\n') && data.length <= 64) return;
          // Someone else's redirected connection (an application's, while the proxy is down) is just closed.
          if (data.trim() === nonce) {
            arrivals.outbound = true;
            // The client resets the connection once it reads this: the listener's side never lingers.
            connection.write('ok\n');
            onArrival();
          } else connection.destroy();
        });
      });
      server.once('error', (error) => resolve({ error: errno(error) }));
      server.listen({ host: at.host, port: at.port, exclusive: true }, () => resolve({ server }));
    });

  const bindUdp = (at: Endpoint) =>
    new Promise<{ socket?: import('node:dgram').Socket; error?: string }>((resolve) => {
      const socket = dgram.createSocket(at.host.includes(':') ? 'udp6' : 'udp4');
      socket.once('error', (error) => {
        socket.close();
        resolve({ error: errno(error) });
      });
      socket.on('message', (message) => {
        if (message.toString().trim() === nonce) {
          arrivals.dns = true;
          onArrival();
        }
      });
      socket.bind({ address: at.host, port: at.port, exclusive: true }, () => resolve({ socket }));
    });

  const method = (error: string | undefined) => (error === undefined ? 'listener' : error === 'EADDRNOTAVAIL' ? 'remote' : 'occupied');

  void (async () => {
    // The outbound port on every IPv4 address: where a REDIRECT delivers. Taken (by Envoy, or anything else): a
    // handshake counts only if its other end is then found on that port (below), not merely because it completed.
    const tcp = plan.outbound ? await listenTcp({ host: '0.0.0.0', port: plan.outbound.expect.port }) : undefined;
    const udp = plan.dns ? await bindUdp(plan.dns.expect) : undefined;
    const tcpMethod = tcp && method(tcp.error);
    const udpMethod = udp && method(udp.error);
    const tcpListenError = tcp?.error !== undefined && tcp.error !== 'EADDRINUSE' ? tcp.error : undefined;
    const udpListenError = udp?.error !== undefined && udp.error !== 'EADDRINUSE' && udp.error !== 'EADDRNOTAVAIL' ? udp.error : undefined;
    const nativeServed = plan.dns?.mode === 'port' && udpMethod === 'occupied' ? udpServed(plan.dns.send.host, 53) : undefined;
    // DNS, port mode, where an answer would prove nothing: nothing is sent.
    const dnsAmbiguous = plan.dns?.mode === 'port' && (udpMethod === 'remote' || nativeServed === true);
    const client = {
      uid: plan.uid,
      gid: plan.gid,
      waitMs: plan.waitMs,
      nonce,
      ...(plan.outbound && tcpListenError === undefined
        ? { outbound: { send: plan.outbound.send, handshakeOnly: tcpMethod !== 'listener' } }
        : {}),
      ...(plan.dns && udpListenError === undefined && !dnsAmbiguous
        ? { dns: { send: plan.dns.send, query: udpMethod !== 'listener', id: dnsId } }
        : {}),
    };
    // The client was started alongside this process (so the two Node start-ups overlap): the CLI hands it
    // this plan, then hands back what it saw.
    write({ client });
    const seen = await new Promise<{ outbound?: Client; dns?: Client; elapsedMs?: number; error?: string }>((resolve) => {
      let input = '';
      process.stdin.setEncoding('utf8');
      process.stdin.on('data', (chunk) => (input += chunk));
      process.stdin.on('end', () => {
        try {
          resolve(JSON.parse(input));
        } catch {
          resolve({ error: `the client failed: ${input.trim() || 'no output'}` });
        }
      });
    });
    if (seen.error !== undefined) {
      write({ error: seen.error });
      process.exit(1);
    }
    // A datagram to our own DNS listener may still be on its way: wait for it, up to the client's wait.
    if (client.dns && !client.dns.query && !arrivals.dns) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.max(0, plan.waitMs - (Date.now() - started)));
        onArrival = () => {
          if (arrivals.dns) {
            clearTimeout(timer);
            resolve();
          }
        };
      });
    }
    // The outbound port taken: who listens there, and where the client's handshake was accepted, if on this
    // host. The socket whose peer is the client's end is the other end of that very connection: still there,
    // since the client holds it open until this report is out.
    const tcpFacts: { acceptedOn?: Endpoint | null; holderUids?: number[] } = {};
    if (plan.outbound && tcpMethod === 'occupied') {
      const sockets = tcpSockets();
      const port = plan.outbound.expect.port;
      if (sockets !== undefined) {
        tcpFacts.holderUids = sockets.filter((s) => s.listening && s.local.port === port).map((s) => s.uid);
        const local = seen.outbound?.outcome === 'connected' ? seen.outbound.local : undefined;
        if (local !== undefined && typeof local.host === 'string' && typeof local.port === 'number') {
          const peer = { host: plainHost(local.host), port: local.port };
          const other = sockets.find((s) => !s.listening && s.remote.port === peer.port && s.remote.host === peer.host);
          tcpFacts.acceptedOn = other ? other.local : null;
        }
      }
    }
    const elapsedMs = Date.now() - started;
    const observation = (
      listenMethod: string | undefined,
      listenError: string | undefined,
      arrived: boolean,
      seenClient: Client | undefined,
      extra: object,
    ) => ({
      method: listenMethod,
      arrived,
      client: seenClient ?? { outcome: 'error', code: 'not attempted' },
      ...(listenError === undefined ? {} : { listenError }),
      ...extra,
      elapsedMs,
    });
    write({
      ...(plan.outbound ? { outbound: observation(tcpMethod, tcpListenError, arrivals.outbound, seen.outbound, tcpFacts) } : {}),
      ...(plan.dns
        ? {
            dns: observation(udpMethod, udpListenError, arrivals.dns, seen.dns, nativeServed === undefined ? {} : { nativeServed }),
          }
        : {}),
    });
    process.exit(0);
  })().catch((error: unknown) => {
    write({ error: `probe failed: ${errno(error)}` });
    process.exit(1);
  });
}

/** The probe as a `node -e` program. */
export const PROBE_SOURCE = `(${probeMain.toString()})();`;
