/**
 * Bearer tokens (API keys, the admin token), compared in constant time: both sides are hashed to
 * 32 bytes first, so neither the comparison's time nor its early exit reveals a token's length or
 * contents.
 */
import { createHash, timingSafeEqual } from 'node:crypto';

const digest = (s: string): Buffer => createHash('sha256').update(s, 'utf8').digest();

/** The token of an `Authorization: Bearer <token>` header, or null. */
export function bearerToken(header: string | undefined): string | null {
  const m = /^Bearer\s+(.+)$/i.exec(header ?? '');
  return m ? m[1].trim() : null;
}

/**
 * The API key a client presents: `Authorization: Bearer <key>`, or Anthropic's `x-api-key: <key>`
 * (the Anthropic SDK's header). Null when it presents none.
 */
export function presentedKey(headers: { authorization?: string; 'x-api-key'?: string | string[] }): string | null {
  const bearer = bearerToken(headers.authorization);
  if (bearer !== null) return bearer;
  const key = headers['x-api-key'];
  return typeof key === 'string' && key.trim() !== '' ? key.trim() : null;
}

export function bearerMatches(header: string | undefined, tokens: readonly string[]): boolean {
  return keyMatches(bearerToken(header), tokens);
}

/** True when `token` is one of `tokens` (compared in constant time). */
export function keyMatches(token: string | null, tokens: readonly string[]): boolean {
  if (token === null) return false;
  const given = digest(token);
  let ok = false;
  // Every token is compared, whichever matches.
  for (const t of tokens) ok = timingSafeEqual(digest(t), given) || ok;
  return ok;
}
