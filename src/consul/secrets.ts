import type { AgentOptions } from '../options.ts';

const PLACEHOLDER = '[hidden]';

/**
 * From this length on, a secret is hidden wherever it occurs, even inside a longer word: in every message and
 * log line. A shorter one could be part of anything (a one-letter token is in most words, "1" in 127.0.0.1),
 * so it is hidden only in what the agent sent (which is all that can echo it: we never print it), and there
 * only where it stands alone. Hiding every "e" of a one-letter token would garble each message and show
 * the token through the pattern of what was hidden.
 */
const MIN_EMBEDDED_SECRET_LENGTH = 12;

// A short secret the agent echoed stands alone where no character of a word is next to it (those of Consul's
// tokens, UUIDs, and of base64url); a dot or colon between two digits joins a word too (127.0.0.1:8500), so a
// token "1" is not found inside an address, while the one in `token:Tok3n9.` is hidden.
const WORD_CHARACTER = /[A-Za-z0-9_-]/;
const DIGIT = /[0-9]/;
/** A JSON escape just before a secret (`\\n`, `\\u003e`) ends in a letter or digit, but sets it apart all the same. */
const ESCAPE_BEFORE = /\\(?:[bfnrt"\\/]|u[0-9a-fA-F]{4})$/;

export interface SecretHider {
  /** A whole message or log line: the secrets long enough to be told from anything else, wherever they are. */
  message(text: string): string;
  /** Text the agent sent, before it is quoted in a message: short secrets too, where they stand alone. */
  agentText(text: string): string;
}

/**
 * Hides the ACL token and the basic-auth password, as they are and as JSON writes them inside a string: ours
 * (a message quoting a value: `"abc\"def"`) and Go's, the agent's, which also escapes < > & and U+2028/9
 * (`\u003c`). Only ever in text for people: what the agent sent is parsed as it came. Searched for as plain
 * text, never as a regular expression: V8 refuses one built from a 32 KiB token.
 */
export function secretHider(agent: AgentOptions): SecretHider {
  const secrets = [agent.token, agent.basicAuth?.password].filter((secret): secret is string => !!secret);
  if (secrets.length === 0) return { message: (text) => text, agentText: (text) => text };
  // Longest first: where one secret holds another, the whole of it is hidden.
  const forms = [...new Set(secrets.flatMap((secret) => [secret, ...jsonForms(secret)]))].sort((a, b) => b.length - a.length);
  const long = forms.filter((form) => form.length >= MIN_EMBEDDED_SECRET_LENGTH);
  return { message: (text) => hide(text, long), agentText: (text) => hide(text, forms) };
}

/** `secret` inside a JSON string, as JavaScript and as Go write it. */
function jsonForms(secret: string): string[] {
  const javascript = JSON.stringify(secret).slice(1, -1);
  return [javascript, javascript.replace(/[<>&\u2028\u2029]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`)];
}

/**
 * `text` with each occurrence of `forms` replaced, left to right in one pass; the placeholder is matched as
 * itself, so text hidden once is never hidden again inside "[hidden]".
 */
function hide(text: string, forms: readonly string[]): string {
  const wanted = [PLACEHOLDER, ...forms];
  // Where each is next found from `at` on (-1: nowhere): searched again only once passed.
  const next = wanted.map(() => -2);
  let hidden = '';
  let at = 0;
  for (;;) {
    let found = -1;
    wanted.forEach((form, index) => {
      if (next[index]! !== -1 && next[index]! < at) next[index] = occurrence(text, form, at, index === 0);
      const where = next[index]!;
      // The earliest; at one place, the longer (the placeholder and the forms are sorted so).
      if (where !== -1 && (found === -1 || where < next[found]! || (where === next[found]! && form.length > wanted[found]!.length))) found = index;
    });
    if (found === -1) return hidden + text.slice(at);
    hidden += `${text.slice(at, next[found])}${PLACEHOLDER}`;
    at = next[found]! + wanted[found]!.length;
  }
}

/** Where `form` next occurs from `from` on; a short secret only where it stands alone (see above). */
function occurrence(text: string, form: string, from: number, anywhere: boolean): number {
  for (let at = text.indexOf(form, from); at !== -1; at = text.indexOf(form, at + 1)) {
    if (anywhere || form.length >= MIN_EMBEDDED_SECRET_LENGTH) return at;
    const end = at + form.length;
    const left = apart(text[at - 1], form[0], text[at - 2]) || ESCAPE_BEFORE.test(text.slice(Math.max(0, at - 6), at));
    if (left && apart(text[end], form.at(-1), text[end + 1])) return at;
  }
  return -1;
}

/** Whether `neighbour` sets a secret apart: `edge` is the secret's character beside it, `beyond` the next one out. */
function apart(neighbour = '', edge = '', beyond = ''): boolean {
  if (WORD_CHARACTER.test(neighbour)) return false;
  return !((neighbour === '.' || neighbour === ':') && DIGIT.test(edge) && DIGIT.test(beyond));
}
