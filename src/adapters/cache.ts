/**
 * The host tier: loaded adapters kept in memory up to a byte budget, least recently used evicted
 * first. Loads are deduplicated (concurrent requests share one), and a failed load is remembered for
 * a short while so queued requests fail fast; after that it may be retried (and it is forgotten:
 * expired failures are swept once their number has doubled since the last sweep).
 */
import { LRUCache } from 'lru-cache';
import type { LoraWeights } from '../runtime/lora-stacks.js';

export type CacheReadiness = 'ready' | 'loading' | 'failed' | 'absent';

export interface CacheStats {
  hits: number;
  misses: number;
  loads: number;
  loadFailures: number;
  evictions: number;
  bytes: number;
  entries: number;
}

export class AdapterCache<Spec> {
  private readonly lru: LRUCache<string, LoraWeights>;
  private readonly loading = new Map<string, Promise<LoraWeights>>();
  private readonly failures = new Map<string, { error: Error; until: number }>();
  private readonly load: (spec: Spec) => Promise<LoraWeights>;
  private readonly failureTtlMs: number;
  private sweepFailuresAt = 64;
  readonly maxBytes: number;
  readonly stats: CacheStats = { hits: 0, misses: 0, loads: 0, loadFailures: 0, evictions: 0, bytes: 0, entries: 0 };

  constructor(maxBytes: number, load: (spec: Spec) => Promise<LoraWeights>, opts: { failureTtlMs?: number } = {}) {
    this.maxBytes = maxBytes;
    this.load = load;
    this.failureTtlMs = opts.failureTtlMs ?? 5000;
    this.lru = new LRUCache<string, LoraWeights>({
      maxSize: Math.max(1, maxBytes),
      sizeCalculation: (w) => Math.max(1, w.bytes),
      dispose: (_v, _k, reason) => {
        if (reason === 'evict') this.stats.evictions++;
      },
    });
  }

  readiness(key: string, now = Date.now()): CacheReadiness {
    if (this.lru.has(key)) return 'ready';
    if (this.loading.has(key)) return 'loading';
    const f = this.failures.get(key);
    if (f && now < f.until) return 'failed';
    return 'absent';
  }

  /** Records a lookup for the hit/miss counters (one per request). */
  lookup(key: string): boolean {
    const hit = this.lru.has(key);
    if (hit) this.stats.hits++;
    else this.stats.misses++;
    return hit;
  }

  /** Cached keys, most recently used first. */
  cachedKeys(): string[] {
    return [...this.lru.keys()];
  }

  /** Failed loads remembered now (recent ones, and expired ones not yet swept). */
  get failureCount(): number {
    return this.failures.size;
  }

  failure(key: string): Error | undefined {
    return this.failures.get(key)?.error;
  }

  get(key: string): LoraWeights | undefined {
    return this.lru.get(key);
  }

  /** Starts loading `key` unless it is cached, loading, or failed recently. */
  ensure(key: string, spec: Spec, now = Date.now()): Promise<LoraWeights> | null {
    const cached = this.lru.get(key);
    if (cached) return Promise.resolve(cached);
    const pending = this.loading.get(key);
    if (pending) return pending;
    const f = this.failures.get(key);
    if (f && now < f.until) return null;
    this.failures.delete(key);
    this.stats.loads++;
    const p = this.load(spec).then(
      (w) => {
        this.loading.delete(key);
        if (w.bytes > this.maxBytes) {
          throw this.fail(key, new Error(`the adapter needs ${w.bytes} bytes of memory but the adapter cache holds ${this.maxBytes} (--adapter-cache-bytes)`));
        }
        this.lru.set(key, w);
        this.refreshSize();
        return w;
      },
      (err: unknown) => {
        this.loading.delete(key);
        throw this.fail(key, err instanceof Error ? err : new Error(String(err)));
      },
    );
    // Callers may not await: keep rejections from being unhandled.
    p.catch(() => {});
    this.loading.set(key, p);
    return p;
  }

  /** Remembers that `key` cannot be used (its weights were refused downstream), as a failed load. */
  markFailed(key: string, error: Error): void {
    this.lru.delete(key);
    this.refreshSize();
    this.fail(key, error);
  }

  private fail(key: string, error: Error): Error {
    this.stats.loadFailures++;
    const now = Date.now();
    this.failures.set(key, { error, until: now + this.failureTtlMs });
    if (this.failures.size >= this.sweepFailuresAt) {
      for (const [k, f] of this.failures) if (now >= f.until) this.failures.delete(k);
      this.sweepFailuresAt = Math.max(64, 2 * this.failures.size);
    }
    return error;
  }

  delete(key: string): void {
    this.lru.delete(key);
    this.failures.delete(key);
    this.refreshSize();
  }

  private refreshSize(): void {
    this.stats.bytes = this.lru.calculatedSize;
    this.stats.entries = this.lru.size;
  }
}
