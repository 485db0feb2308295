/**
 * The store lock held by another live process (a busy replica) past the wait: the answer is the
 * retryable `busy` (503 with Retry-After), not a 4xx that blames the request. A lock left by a
 * process that died is broken at once.
 */
import { writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { withStoreLock } from '../../src/adapters/store-lock.js';
import { LoraplexError } from '../../src/errors.js';
import { tempDir } from '../helpers/tiny-model.js';

describe('store lock', () => {
  it('held by a live process past the wait: busy, retryable, with Retry-After', () => {
    const path = join(tempDir('loraplex-lock-'), '.lock');
    // Held by this machine's init process, which is alive and never releases it.
    writeFileSync(path, `1@${hostname()}#abcd1234 ${new Date().toISOString()}\n`);
    let err: LoraplexError | null = null;
    try {
      withStoreLock(path, () => 'ran', { waitMs: 100, staleMs: 60_000 });
    } catch (e) {
      err = e as LoraplexError;
    }
    expect(err?.code).toBe('busy');
    expect(err?.statusCode).toBe(503);
    expect(err?.retryAfterSeconds).toBeGreaterThan(0);
  });

  it('left by a process that died: broken, and the work runs', () => {
    const path = join(tempDir('loraplex-lock-'), '.lock');
    writeFileSync(path, `${2 ** 22 + 12345}@${hostname()}#abcd1234 ${new Date().toISOString()}\n`);
    expect(withStoreLock(path, () => 'ran', { waitMs: 100, staleMs: 60_000 })).toBe('ran');
  });
});
