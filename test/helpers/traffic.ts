import { execa } from 'execa';
import { readFileSync } from 'node:fs';
import { expect } from 'vitest';
import { runCommand, type Netns } from './netns.ts';

// Real listeners and real connections inside the test namespaces, through test/helpers/netprobe.py.

export const PYTHON = '/usr/bin/python3';
// Passed with -c so a client running as an unprivileged UID never needs to read the checkout.
const PROBE_SOURCE = readFileSync(new URL('./netprobe.py', import.meta.url), 'utf8');
const PYTHON_ARGS = ['-I', '-S', '-c', PROBE_SOURCE];
const READY_TIMEOUT_MS = 5_000;

/** UIDs used for clients; none needs a passwd entry. */
export const UID = {
  ordinary: 42001,
  proxy: 42002,
  excluded: 42003,
} as const;

/** What a probe server answers on each connection. */
export interface Reply {
  name: string;
  /** The destination before NAT, or null when the connection was not NATed. */
  origDst?: string | null;
  local: string;
  peer: string;
}

export interface Server {
  name: string;
  stop(): Promise<void>;
}

/** How to stop each probe server still running, and the namespace it runs in. */
const running = new Map<() => Promise<void>, string>();

/**
 * Starts a probe server inside `ns` listening on each `proto:host:port` spec (e.g. `tcp:0.0.0.0:8080`,
 * `tcp:[::]:8080`, `udp:127.0.0.1:8600`) and resolves once all are bound.
 */
export async function startServer(ns: Netns, name: string, listen: readonly string[]): Promise<Server> {
  const args = [...PYTHON_ARGS, 'serve', '--name', name, '--lifetime', '300', ...listen.flatMap((spec) => ['--listen', spec])];
  const child = execa('ip', ['netns', 'exec', ns.name, PYTHON, ...args], {
    stdin: 'pipe',
    reject: false,
    timeout: 300_000,
    killSignal: 'SIGKILL',
  });
  const stop = async () => {
    child.kill('SIGKILL');
    await child;
    running.delete(stop);
  };
  running.set(stop, ns.name);
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  let timer: NodeJS.Timeout | undefined;
  const ready = new Promise<void>((resolve, reject) => {
    let seen = '';
    child.stdout?.on('data', (chunk: Buffer) => {
      seen += chunk.toString();
      if (seen.includes('READY\n')) resolve();
    });
    void child.then((result) => reject(new Error(`server ${name} exited ${result.exitCode}: ${stderr.trim()}`)));
    timer = setTimeout(() => reject(new Error(`server ${name} did not listen within ${READY_TIMEOUT_MS}ms: ${stderr.trim()}`)), READY_TIMEOUT_MS);
  });
  try {
    await ready;
  } catch (error) {
    await stop();
    throw error;
  } finally {
    clearTimeout(timer);
  }
  return { name, stop };
}

/** Kills the probe servers this process started, all of them or those inside `namespaces`. */
export async function stopServers(namespaces?: readonly Netns[]): Promise<void> {
  const names = namespaces?.map((ns) => ns.name);
  await Promise.all([...running].filter(([, name]) => !names || names.includes(name)).map(([stop]) => stop()));
}

export type ProbeResult = Reply | { error: string };

/**
 * Connects from inside `ns` as `uid` (root when omitted) to host:port and returns the server's reply, or
 * `{error}` when nothing answered within the timeout.
 */
export async function probe(
  ns: Netns,
  target: { proto?: 'tcp' | 'udp'; host: string; port: number; uid?: number; timeoutSeconds?: number },
): Promise<ProbeResult> {
  const timeout = target.timeoutSeconds ?? 2;
  const user = target.uid === undefined ? [] : ['--setuid', String(target.uid), '--setgid', String(target.uid)];
  const args = [`--net=${ns.path}`, ...user, '--', PYTHON, ...PYTHON_ARGS, 'connect', target.proto ?? 'tcp', target.host, String(target.port), '--timeout', String(timeout)];
  const result = await runCommand('nsenter', args, { timeoutMs: (timeout + 5) * 1000 });
  const line = result.stdout.trim().split('\n').pop() ?? '';
  try {
    return JSON.parse(line) as ProbeResult;
  } catch {
    return { error: `no reply (exit ${result.exitCode}): ${result.stderr.trim() || line}` };
  }
}

/** host:port as the probe server prints it. */
export const endpoint = (host: string, port: number) => (host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`);

/**
 * The connection was redirected: `server` answered, and the destination the client dialled survived as
 * the connection's original destination (SO_ORIGINAL_DST).
 */
export function expectRedirected(reply: ProbeResult, server: string, host: string, port: number): void {
  expect(reply, `connection to ${endpoint(host, port)}`).toMatchObject({ name: server, origDst: endpoint(host, port) });
  expect((reply as Reply).local).not.toBe(endpoint(host, port));
}

/** The connection went direct: `server` answered on the very address and port the client dialled. */
export function expectDirect(reply: ProbeResult, server: string, host: string, port: number): void {
  expect(reply, `connection to ${endpoint(host, port)}`).toMatchObject({ name: server, local: endpoint(host, port) });
  const original = (reply as Reply).origDst;
  if (original !== null && original !== undefined) expect(original).toBe(endpoint(host, port));
}
