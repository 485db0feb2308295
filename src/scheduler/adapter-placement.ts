/**
 * Where a step's adapters come from: the host cache that loads them and the graph's slots that a
 * step reads them from, with the recipe (AdapterSpec) each key was asked for.
 *
 * The recipe map follows the cache: a key is remembered while a request in the engine uses it, its
 * weights are cached, loading or recently failed, or it sits in a slot. Every other entry is swept
 * once the map has doubled since the last sweep, so distinct recipes (each `merged_adapters` mix is
 * one) cannot grow it without bound.
 */
import { AdapterCache, type CacheReadiness } from '../adapters/cache.js';
import { AdapterSlots } from '../adapters/slots.js';
import { LoraplexError } from '../errors.js';
import type { LoraStacks, LoraWeights } from '../runtime/lora-stacks.js';
import type { AdapterSpec } from './request.js';

/** Entries the recipe map may hold before its first sweep. */
const FIRST_SWEEP = 64;

export class AdapterPlacement {
  readonly cache: AdapterCache<AdapterSpec>;
  readonly slots: AdapterSlots;
  private readonly specs = new Map<string, AdapterSpec>();
  private sweepAt = FIRST_SWEEP;
  private readonly inUse: () => Iterable<string>;
  private readonly settled: () => void;
  private readonly log: (msg: string) => void;

  constructor(opts: {
    lora: LoraStacks;
    cacheBytes: number;
    failureTtlMs?: number;
    load: (spec: AdapterSpec) => Promise<LoraWeights>;
    /** Keys of the adapters the engine's requests use (their recipes are never swept). */
    inUse: () => Iterable<string>;
    /** Called when a load started here ends, either way. */
    settled: () => void;
    log: (msg: string) => void;
  }) {
    this.cache = new AdapterCache<AdapterSpec>(opts.cacheBytes, (spec) => opts.load(spec), { failureTtlMs: opts.failureTtlMs });
    this.slots = new AdapterSlots(opts.lora);
    this.inUse = opts.inUse;
    this.settled = opts.settled;
    this.log = opts.log;
  }

  /** A request wants this adapter: counts a cache hit or miss and starts its load if needed. */
  want(spec: AdapterSpec): void {
    this.remember(spec);
    this.cache.lookup(spec.key);
    this.kick(spec.key);
  }

  /** Loads an adapter into the host cache ahead of use (admin preload). */
  async preload(spec: AdapterSpec): Promise<void> {
    this.remember(spec);
    const p = this.cache.ensure(spec.key, spec);
    if (!p) throw this.cache.failure(spec.key) ?? new LoraplexError('adapter_load_failed', `adapter ${spec.name} failed to load recently; retry shortly`);
    await p;
  }

  /** Starts loading the adapters of waiting requests that are neither cached nor loading. */
  kickAbsent(keys: Iterable<string>): void {
    for (const key of keys) if (this.cache.readiness(key) === 'absent') this.kick(key);
  }

  /** The scheduler's view of an adapter: one that is absent is about to load. */
  readiness(key: string): Exclude<CacheReadiness, 'absent'> {
    const r = this.cache.readiness(key);
    return r === 'absent' ? 'loading' : r;
  }

  /**
   * Puts the step's adapters in slots; returns the keys the slots refused, with why (those are
   * marked failed in the cache, so their waiting requests fail too).
   */
  place(keys: Set<string>): Map<string, LoraplexError> {
    const refused = this.slots.acquire(keys, (key) => this.cache.get(key));
    for (const [key, err] of refused) {
      this.log(`adapter ${this.name(key)} was refused by the slots: ${err.message}`);
      this.cache.markFailed(key, err);
    }
    return refused;
  }

  /** Drops an adapter from the slots and the host cache unless running rows use it. */
  unload(key: string): boolean {
    if (this.slots.isPinned(key)) return false;
    this.slots.remove(key);
    this.cache.delete(key);
    // (Its recipe stays until a sweep: a waiting request may still want it loaded again.)
    return true;
  }

  /** The adapter's name (its key when the recipe is no longer known). */
  name(key: string): string {
    return this.specs.get(key)?.name ?? key;
  }

  /** Recipes remembered now (bounded: see the module comment). */
  get recipes(): number {
    return this.specs.size;
  }

  private remember(spec: AdapterSpec): void {
    // Sweep first: the recipe being remembered may not be in use or cached yet (a preload).
    if (this.specs.size >= this.sweepAt) this.sweep();
    this.specs.set(spec.key, spec);
  }

  private sweep(): void {
    const keep = new Set(this.inUse());
    for (const key of this.slots.occupants()) keep.add(key);
    for (const key of this.specs.keys()) {
      if (!keep.has(key) && this.cache.readiness(key) === 'absent') this.specs.delete(key);
    }
    this.sweepAt = Math.max(FIRST_SWEEP, 2 * this.specs.size);
  }

  private kick(key: string): void {
    const spec = this.specs.get(key);
    if (!spec) return;
    const p = this.cache.ensure(key, spec);
    if (p && this.cache.readiness(key) === 'loading') {
      p.then(
        () => this.settled(),
        (err: Error) => {
          this.log(`adapter ${spec.name} failed to load: ${err.message}`);
          this.settled();
        },
      );
    }
  }
}
