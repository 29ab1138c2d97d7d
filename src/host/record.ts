import { renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as z from 'zod/mini';
import { ConfigError } from '../errors.ts';
import type { BackendName } from './backend.ts';
import type { RawOptions } from '../flags.ts';
import { FILE_LIMITS, readUserFile } from '../userFile.ts';
import { namespaceKey } from './exclusive.ts';
import { makeDirAndParent } from './runtimeDir.ts';

// What the last apply in a namespace asked for, so that a bare `status` can compare against it and tell a
// run that was killed halfway. Explicit flags only (the agent's answer written out as ports), never a
// secret; root-only, under /run, so it is gone after a reboot, as the rules are.

export const RECORD_DIR = '/run/redirect-traffic';

export interface ApplyRecord {
  /** The flags that reproduce the configuration without the agent. */
  flags: RawOptions;
  /** Which run wrote it, and whether that run got to the end of its writes. */
  pid: number;
  startedAt: string;
  finished: boolean;
  /** The backend it wrote (records of older versions have none). */
  backend?: BackendName;
}

const recordSchema = z.object({
  flags: z.record(z.string(), z.union([z.string(), z.boolean(), z.array(z.string())])),
  pid: z.int(),
  startedAt: z.string(),
  finished: z.boolean(),
  backend: z.optional(z.enum(['iptables-nft', 'iptables-legacy', 'nftables'])),
});

const recordPath = (netns: string | undefined) => join(RECORD_DIR, `${namespaceKey(netns)}.json`);

/**
 * Writes the record atomically. Where it cannot be written (a full /run), the namespace has none: an older
 * one left in place would have a bare status compare against another run's settings.
 */
export function writeRecord(netns: string | undefined, record: ApplyRecord): boolean {
  const path = recordPath(netns);
  // One name per namespace: records are written under the namespace lock, and a run killed mid-write leaves
  // a file the next one simply overwrites, instead of one more per PID.
  const temporary = `${path}.tmp`;
  try {
    makeDirAndParent(RECORD_DIR);
    writeFileSync(temporary, `${JSON.stringify(record)}\n`, { mode: 0o600 });
    renameSync(temporary, path);
    return true;
  } catch {
    for (const file of [temporary, path]) {
      try {
        rmSync(file, { force: true });
      } catch {
        // not there, or /run is read-only: then nothing was written either
      }
    }
    return false;
  }
}

/** The record, or undefined when there is none; a damaged one is an error naming the file. */
export function readRecord(netns: string | undefined): ApplyRecord | undefined {
  const path = recordPath(netns);
  let text: string;
  try {
    text = readUserFile(path, 'the record of the last apply', FILE_LIMITS.config, ConfigError);
  } catch (error) {
    if (error instanceof ConfigError && error.message.endsWith('does not exist')) return undefined;
    throw error;
  }
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch {
    data = undefined;
  }
  const result = recordSchema.safeParse(data);
  if (!result.success) throw new ConfigError(`the record of the last apply ${path} is damaged: remove it, or run an apply`);
  return result.data as ApplyRecord;
}

export function removeRecord(netns: string | undefined): void {
  rmSync(recordPath(netns), { force: true });
}
