/**
 * AdapterCache step by step with a budget of two adapters: deduplicated loads, LRU order after every
 * access, eviction by bytes, an oversize adapter refused, failures remembered for their TTL and then
 * retried, and markFailed.
 */
import { describe, expect, it } from 'vitest';
import { AdapterCache } from '../../src/adapters/cache.js';
import type { LoraWeights } from '../../src/runtime/lora-stacks.js';

const w = (bytes: number): LoraWeights => ({ factors: new Map(), maxRank: 1, bytes });

function harness() {
  const loads: string[] = [];
  const fail = new Set<string>();
  let resolveSlow: (() => void) | null = null;
  const cache = new AdapterCache<{ key: string; bytes: number; slow?: boolean }>(
    200,
    async (s) => {
      loads.push(s.key);
      if (s.slow) await new Promise<void>((r) => (resolveSlow = r));
      if (fail.has(s.key)) throw new Error(`${s.key} is broken`);
      return w(s.bytes);
    },
    { failureTtlMs: 1000 },
  );
  return { cache, loads, fail, release: () => resolveSlow?.() };
}

describe('AdapterCache', () => {
  it('loads once for concurrent requests, keeps LRU order, evicts by bytes', async () => {
    const { cache, loads, release } = harness();
    const p1 = cache.ensure('a', { key: 'a', bytes: 100, slow: true });
    const p2 = cache.ensure('a', { key: 'a', bytes: 100, slow: true });
    expect(p1).toBe(p2);
    expect(cache.readiness('a')).toBe('loading');
    release();
    await p1;
    expect(loads).toEqual(['a']);
    expect(cache.readiness('a')).toBe('ready');
    await cache.ensure('b', { key: 'b', bytes: 100 });
    expect(cache.cachedKeys()).toEqual(['b', 'a']);
    cache.get('a');
    expect(cache.cachedKeys()).toEqual(['a', 'b']);
    expect(cache.stats).toMatchObject({ bytes: 200, entries: 2, loads: 2, evictions: 0 });
    // c needs room: b, the least recently used, leaves.
    await cache.ensure('c', { key: 'c', bytes: 100 });
    expect(cache.cachedKeys()).toEqual(['c', 'a']);
    expect(cache.readiness('b')).toBe('absent');
    expect(cache.stats).toMatchObject({ bytes: 200, entries: 2, evictions: 1 });
    // A hit does not load again.
    await cache.ensure('a', { key: 'a', bytes: 100 });
    expect(loads).toEqual(['a', 'b', 'c']);
    expect(cache.lookup('a')).toBe(true);
    expect(cache.lookup('b')).toBe(false);
    expect(cache.stats).toMatchObject({ hits: 1, misses: 1 });
  });

  it('refuses an adapter larger than the whole cache, with the numbers', async () => {
    const { cache } = harness();
    await expect(cache.ensure('huge', { key: 'huge', bytes: 300 })).rejects.toThrow(/needs 300 bytes of memory but the adapter cache holds 200/);
    expect(cache.readiness('huge')).toBe('failed');
    expect(cache.stats.entries).toBe(0);
  });

  it('remembers a failure for its TTL (no new load), then retries; markFailed works the same way', async () => {
    const { cache, loads, fail } = harness();
    fail.add('x');
    const t0 = Date.now();
    await expect(cache.ensure('x', { key: 'x', bytes: 10 }, t0)).rejects.toThrow(/x is broken/);
    expect(cache.readiness('x', t0 + 10)).toBe('failed');
    expect(cache.ensure('x', { key: 'x', bytes: 10 }, t0 + 10)).toBeNull();
    expect(cache.failure('x')!.message).toBe('x is broken');
    expect(loads).toEqual(['x']);
    fail.delete('x');
    expect(cache.readiness('x', t0 + 5000)).toBe('absent');
    await cache.ensure('x', { key: 'x', bytes: 10 }, t0 + 5000);
    expect(loads).toEqual(['x', 'x']);
    expect(cache.readiness('x')).toBe('ready');
    cache.markFailed('x', new Error('refused by the slots'));
    expect(cache.readiness('x')).toBe('failed');
    expect(cache.stats.entries).toBe(0);
    expect(cache.stats).toMatchObject({ loadFailures: 2 });
    cache.delete('x');
    expect(cache.readiness('x')).toBe('absent');
  });
});
