import { InternalError } from '../errors.ts';
import type { WatchOptions } from '../options.ts';
import type { CommandContext } from './context.ts';

export async function watch(_options: WatchOptions, _context: CommandContext): Promise<number> {
  throw new InternalError('watch is not built yet');
}
