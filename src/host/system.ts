import { closeSync, constants, openSync, readFileSync, readlinkSync, statfsSync } from 'node:fs';
import { UsageError, PermissionError } from '../errors.ts';
import { openFailureText } from '../userFile.ts';
import type { Uid, UidSpec } from '../core/values.ts';
import type { CommandRunner } from './runner.ts';

const CAP_NET_ADMIN = 12n;

/** True when this process may change netfilter rules. */
export function hasNetAdmin(statusText = readProcStatus()): boolean {
  const hex = /^CapEff:\s*([0-9a-f]+)$/im.exec(statusText)?.[1];
  if (hex === undefined) return process.getuid?.() === 0;
  return ((BigInt(`0x${hex}`) >> CAP_NET_ADMIN) & 1n) === 1n;
}

function readProcStatus(): string {
  try {
    return readFileSync('/proc/self/status', 'utf8');
  } catch {
    return '';
  }
}

/** `offersDryRun`: whether the command takes --dry-run, the way to go on without root (status does not). */
export function requireNetAdmin(action: string, offersDryRun: boolean): void {
  if (!hasNetAdmin()) {
    throw new PermissionError(
      `${action} needs root (CAP_NET_ADMIN): run it with sudo${offersDryRun ? ', or use --dry-run to only print the rules' : ''}`,
    );
  }
}

/** statfs's type of the namespace filesystem (nsfs), where `ip netns` files and /proc/<pid>/ns/net are. */
const NSFS_MAGIC = 0x6e736673;

/**
 * Why `path` is not a network namespace file, or undefined if it is one. Opened only once statfs says it is
 * on nsfs (opening a device can have effects; nsenter opening a FIFO given as -netns would wait for a writer
 * until its time limit), without blocking, and checked again through the descriptor, in case the path
 * changed in between. A /proc/<pid>/ns file's descriptor names its type (`mnt:[4026531840]` is on nsfs
 * too); one bound elsewhere (`ip netns add`) names its path only, and nsenter tells if it is of another type.
 */
export function networkNamespaceProblem(path: string): string | undefined {
  const notOne = 'is not a network namespace file (such as /var/run/netns/<name> or /proc/<pid>/ns/net)';
  try {
    if (statfsSync(path).type !== NSFS_MAGIC) return notOne;
    const fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY);
    try {
      const opened = `/proc/self/fd/${fd}`;
      if (statfsSync(opened).type !== NSFS_MAGIC) return notOne;
      const type = /^([a-z_]+):\[\d+\]$/.exec(readlinkSync(opened))?.[1];
      return type === undefined || type === 'net' ? undefined : notOne;
    } finally {
      closeSync(fd);
    }
  } catch (error) {
    return openFailureText(error);
  }
}

/** The local passwd file, or nothing when there is none. */
export function readPasswd(): string {
  try {
    return readFileSync('/etc/passwd', 'utf8');
  } catch {
    return '';
  }
}

function uidFromPasswd(name: string, passwd: string): number | undefined {
  for (const line of passwd.split('\n')) {
    const [user, , uid] = line.split(':');
    if (user === name && uid !== undefined && /^\d+$/.test(uid)) return Number(uid);
  }
  return undefined;
}

/**
 * Resolves user names to UIDs once, now, so the kernel's owner match never triggers an NSS look-up. The
 * local passwd file answers without a process; other NSS sources (LDAP, sssd) go through getent. A name
 * this host does not know is refused, unless `keepUnknown` (a dry run previewing another host): then it
 * stays a name.
 */
export async function resolveUid(spec: UidSpec, flag: string, runner: CommandRunner, keepUnknown = false): Promise<Uid> {
  if (spec.kind === 'id') return spec.uid;
  let passwd = '';
  try {
    passwd = readFileSync('/etc/passwd', 'utf8');
  } catch {
    // no local file; getent below still asks NSS
  }
  const local = uidFromPasswd(spec.name, passwd);
  if (local !== undefined) return local;
  const result = await runner.run('getent', ['passwd', spec.name]).catch(() => undefined);
  const uid = result?.exitCode === 0 ? uidFromPasswd(spec.name, result.stdout) : undefined;
  if (uid !== undefined) return uid;
  if (keepUnknown) return spec.name;
  throw new UsageError(`invalid value "${spec.name}" for ${flag}: no such user on this host`);
}

/** Server address and port of the SSH session this runs in, from SSH_CONNECTION. */
export function sshServerEndpoint(env: NodeJS.ProcessEnv): { address: string; port: number } | undefined {
  const fields = (env['SSH_CONNECTION'] ?? '').trim().split(/\s+/);
  if (fields.length !== 4) return undefined;
  const port = Number(fields[3]);
  return Number.isInteger(port) && port > 0 && port < 65536 ? { address: fields[2] ?? '', port } : undefined;
}

