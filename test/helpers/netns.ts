import { execa } from 'execa';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { namespaceKey } from '../../src/host/exclusive.ts';
import { RECORD_DIR } from '../../src/host/record.ts';

// Network namespaces for the end-to-end tests. Every namespace is named rt-e2e-<pid>-<n>-<role>, so a
// run only ever touches its own, and leftovers of a crashed run (whose pid is gone) can be recognised.
// Nothing here runs a command in the host's own namespace except `ip netns add/del/list/pids`.

export const NETNS_PREFIX = 'rt-e2e-';
const COMMAND_TIMEOUT_MS = 15_000;

export interface CommandOutput {
  exitCode: number;
  stdout: string;
  stderr: string;
}

/** Runs a program directly (no shell) under a time limit; never throws for a non-zero exit. */
export async function runCommand(
  file: string,
  args: readonly string[],
  options: { input?: string; timeoutMs?: number; env?: Record<string, string> } = {},
): Promise<CommandOutput> {
  const result = await execa(file, args, {
    input: options.input ?? '',
    timeout: options.timeoutMs ?? COMMAND_TIMEOUT_MS,
    killSignal: 'SIGKILL',
    reject: false,
    stripFinalNewline: false,
    ...(options.env ? { env: options.env, extendEnv: false } : {}),
  });
  if (result.timedOut) throw new Error(`${file} ${args.join(' ')} timed out`);
  return { exitCode: result.exitCode ?? -1, stdout: String(result.stdout), stderr: String(result.stderr) };
}

/** Like runCommand, but a non-zero exit is an error naming the command and its stderr. */
export async function mustRun(file: string, args: readonly string[], options?: { input?: string }): Promise<string> {
  const result = await runCommand(file, args, options);
  if (result.exitCode !== 0) {
    throw new Error(`${file} ${args.join(' ')} exited ${result.exitCode}: ${result.stderr.trim()}`);
  }
  return result.stdout;
}

export class Netns {
  readonly name: string;
  constructor(name: string) {
    this.name = name;
  }

  /** The path the CLI's -netns takes. */
  get path(): string {
    return `/run/netns/${this.name}`;
  }

  /** Runs a program inside this namespace, as root. */
  run(file: string, args: readonly string[], options?: { input?: string; timeoutMs?: number }): Promise<CommandOutput> {
    return runCommand('ip', ['netns', 'exec', this.name, file, ...args], options);
  }

  /** Runs a program inside this namespace; a non-zero exit throws. */
  async must(file: string, ...args: string[]): Promise<string> {
    const result = await this.run(file, args);
    if (result.exitCode !== 0) {
      throw new Error(`[${this.name}] ${file} ${args.join(' ')} exited ${result.exitCode}: ${result.stderr.trim()}`);
    }
    return result.stdout;
  }

  /** `ip -n <ns> ...` */
  ip(...args: string[]): Promise<string> {
    return mustRun('ip', ['-n', this.name, ...args]);
  }

  /** The PIDs of the processes running inside this namespace. */
  processes(): Promise<number[]> {
    return processesIn(this.name);
  }
}

let counter = 0;
const created = new Set<string>();

async function processesIn(name: string): Promise<number[]> {
  const result = await runCommand('ip', ['netns', 'pids', name]);
  return result.stdout.split('\n').filter((line) => /^\d+$/.test(line)).map(Number);
}

/** Kills what runs inside one of our namespaces, then deletes it. Never throws. */
export async function deleteNamespace(name: string): Promise<void> {
  if (!name.startsWith(NETNS_PREFIX)) throw new Error(`refusing to delete namespace ${name}: not ours`);
  for (const pid of await processesIn(name).catch(() => [])) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  // The tool's record of the last apply is keyed by the namespace's inode, which a later namespace may reuse.
  try {
    rmSync(join(RECORD_DIR, `${namespaceKey(`/run/netns/${name}`)}.json`), { force: true });
  } catch {
    // the namespace is already gone
  }
  await runCommand('ip', ['netns', 'del', name]).catch(() => undefined);
  created.delete(name);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Deletes namespaces a crashed earlier run of this suite left behind (their creator's pid is gone). */
export async function removeStaleNamespaces(): Promise<string[]> {
  const list = await runCommand('ip', ['netns', 'list']);
  const stale = list.stdout
    .split('\n')
    .map((line) => line.split(' ')[0] ?? '')
    .filter((name) => {
      const pid = new RegExp(`^${NETNS_PREFIX}(\\d+)-`).exec(name)?.[1];
      return pid !== undefined && Number(pid) !== process.pid && !alive(Number(pid));
    });
  for (const name of stale) await deleteNamespace(name);
  return stale;
}

/** A fresh namespace with only `lo`, up. */
export async function createNamespace(role: string): Promise<Netns> {
  const name = `${NETNS_PREFIX}${process.pid}-${++counter}-${role}`;
  await mustRun('ip', ['netns', 'add', name]);
  created.add(name);
  const ns = new Netns(name);
  await ns.ip('link', 'set', 'lo', 'up');
  return ns;
}

/** Deletes every namespace this process created and has not deleted yet. */
export async function deleteAllNamespaces(): Promise<void> {
  await Promise.all([...created].map(deleteNamespace));
}

// The test network: VM (the host under test) and PEER, joined by a veth created directly inside them.
export const ADDR = {
  vm4: '198.18.0.1',
  peer4: '198.18.0.2',
  /** PEER's second address, in the network an exclusion CIDR covers. */
  peer4Excluded: '198.18.1.2',
  excludedNet4: '198.18.1.0/24',
  vm6: '2001:db8::1',
  peer6: '2001:db8::2',
  peer6Excluded: '2001:db8:1::2',
  excludedNet6: '2001:db8:1::/64',
} as const;

export interface Topology {
  vm: Netns;
  peer: Netns;
}

/** VM and PEER joined by a veth, with IPv4 and IPv6 addresses usable at once (nodad). */
export async function createTopology(): Promise<Topology> {
  const vm = await createNamespace('vm');
  const peer = await createNamespace('peer');
  await vm.ip('link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', peer.name);
  await vm.ip('addr', 'add', `${ADDR.vm4}/24`, 'dev', 'eth0');
  await vm.ip('addr', 'add', `${ADDR.vm6}/64`, 'dev', 'eth0', 'nodad');
  await peer.ip('addr', 'add', `${ADDR.peer4}/24`, 'dev', 'eth0');
  await peer.ip('addr', 'add', `${ADDR.peer4Excluded}/24`, 'dev', 'eth0');
  await peer.ip('addr', 'add', `${ADDR.peer6}/64`, 'dev', 'eth0', 'nodad');
  await peer.ip('addr', 'add', `${ADDR.peer6Excluded}/64`, 'dev', 'eth0', 'nodad');
  await vm.ip('link', 'set', 'eth0', 'up');
  await peer.ip('link', 'set', 'eth0', 'up');
  await vm.ip('route', 'add', ADDR.excludedNet4, 'dev', 'eth0');
  await vm.ip('-6', 'route', 'add', ADDR.excludedNet6, 'dev', 'eth0');
  return { vm, peer };
}
