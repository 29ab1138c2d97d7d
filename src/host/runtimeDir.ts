import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';

/**
 * Makes `dir` and its parent (the runtime directory, for the record, the locks and the inputs), each 0700
 * and only if missing, and throws the error of the one that failed (EROFS for a read-only /run). Not
 * `recursive`: Node's recursive mkdir says ENOENT where a parent cannot be made, and spins for ever where
 * mkdir says ENOENT under an existing one (procfs).
 */
export function makeDirAndParent(dir: string): void {
  for (const level of [dirname(dir), dir]) {
    try {
      mkdirSync(level, { mode: 0o700 });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
  }
}
