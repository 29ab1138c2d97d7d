import type { AgentOptions } from '../options.ts';

const PLACEHOLDER = '[hidden]';

/**
 * From this length on, a secret is hidden wherever it occurs, even inside a longer word. A shorter one is hidden
 * only where it stands alone: hiding every "e" of a one-letter token would garble each message and show the
 * token through the pattern of what was hidden.
 */
const MIN_EMBEDDED_SECRET_LENGTH = 12;

// The characters of Consul's tokens (UUIDs) and of base64url: a short secret next to one is part of a longer word.
const WORD_CHARACTER = '[A-Za-z0-9_-]';

const escapeRegExp = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/**
 * Hides the ACL token and the basic-auth password in `text`. Applied to every answer as it arrives (so a
 * truncated excerpt can never hold part of one) and again to every message and log line.
 */
export function secretHider(agent: AgentOptions): (text: string) => string {
  const secrets = [agent.token, agent.basicAuth?.password].filter((secret): secret is string => !!secret);
  if (secrets.length === 0) return (text) => text;
  const patterns = secrets
    // Longest first: where one secret holds another, the whole of it is hidden.
    .sort((a, b) => b.length - a.length)
    .map((secret) =>
      secret.length >= MIN_EMBEDDED_SECRET_LENGTH
        ? escapeRegExp(secret)
        : `(?<!${WORD_CHARACTER})${escapeRegExp(secret)}(?!${WORD_CHARACTER})`,
    );
  // One pass, and the placeholder matched as itself: text hidden once is never hidden again inside "[hidden]".
  const pattern = new RegExp([...patterns, escapeRegExp(PLACEHOLDER)].join('|'), 'g');
  return (text) => text.replace(pattern, PLACEHOLDER);
}
