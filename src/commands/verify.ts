import { InternalError } from '../errors.ts';
import type { VerifyOptions } from '../options.ts';
import type { CommandContext } from './context.ts';

export async function verify(_options: VerifyOptions, _context: CommandContext): Promise<number> {
  throw new InternalError('verify is not built yet');
}
