/**
 * Bearer tokens (API keys, the admin token), compared in constant time: both sides are hashed to
 * 32 bytes first, so neither the comparison's time nor its early exit reveals a token's length or
 * contents.
 */
import { createHash, timingSafeEqual } from 'node:crypto';

const digest = (s: string): Buffer => createHash('sha256').update(s, 'utf8').digest();

export function bearerMatches(header: string | undefined, tokens: readonly string[]): boolean {
  const m = /^Bearer\s+(.+)$/i.exec(header ?? '');
  if (!m) return false;
  const given = digest(m[1].trim());
  let ok = false;
  // Every token is compared, whichever matches.
  for (const t of tokens) ok = timingSafeEqual(digest(t), given) || ok;
  return ok;
}
