import { CliError, ExitCode } from '../errors.ts';
import type { WatchOptions } from '../options.ts';
import type { CommandContext } from './context.ts';

export async function watch(_options: WatchOptions, _context: CommandContext): Promise<number> {
  throw new CliError('watch is not built yet', ExitCode.internal);
}
