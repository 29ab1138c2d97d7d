import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';

/**
 * Makes `dir` and its parent, each only if missing (mode 0700): the runtime directory in /run, or the locks'
 * and inputs' directories in it. Throws the error of the one that failed (EROFS for a read-only /run). Not
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
