/**
 * Prefix-cache partitions: which requests may share cached KV blocks. A cache hit is reported in
 * `usage.prompt_tokens_details.cached_tokens` and makes the first token come sooner, so anyone who
 * shares a partition can tell whether someone in it sent a given prefix before, and recover a
 * secret in it by guessing one candidate per request. So with API keys and `--prefix-cache-scope
 * key` (the default) each key gets a partition of its own, and `cache_salt` (vLLM's field) splits
 * one further. A partition is an HMAC, under a secret made at start, of a digest of the key and of
 * the salt: neither the key nor the salt can be read back from it, and it means nothing to another
 * process (the prefix cache lives in this one).
 */
import { createHmac, randomBytes } from 'node:crypto';

const SECRET = randomBytes(32);

const mac = (parts: readonly (string | null)[]): string => createHmac('sha256', SECRET).update(JSON.stringify(parts)).digest('base64');

/** The tenant a bearer token stands for (an opaque digest). */
export function tenantOf(token: string): string {
  return mac(['tenant', token]);
}

/** The partition of a request from `tenant` ('' = none: no keys, or a shared scope) with `cacheSalt`; '' = the shared partition. */
export function cachePartition(tenant: string, cacheSalt: string | null | undefined): string {
  if (tenant === '' && cacheSalt == null) return '';
  return mac(['partition', tenant, cacheSalt ?? null]);
}
