/**
 * The active set: which adapter occupies which graph slot. An adapter used by a running row is
 * pinned and never evicted; when a new adapter needs a slot and none is free, the least recently
 * used unpinned one leaves. Slot indices move when another slot is freed (the runtime moves the
 * last slot into the hole) and when a step's adapters are moved into the lowest slots (below), so
 * rows look their slot up by adapter key every step.
 *
 * A step's adapters always sit in slots 0..n-1 (n = how many the step uses). The graph runs the
 * LoRA groups of every slot up to the highest one a row uses, so otherwise a lone row whose adapter
 * sat in the last of 8 slots paid for the LoRA work of the 7 adapters before it, which earlier
 * traffic had left there (measured on the Qwen2.5-0.5B shape, rank 16, int4: a one-row decode step
 * took 56 ms with its adapter in slot 7 and 35 ms in slot 0). The steps of one set of running
 * requests use the same adapters, so the moves happen when that set changes, not every step.
 */
import { LoraplexError } from '../errors.js';
import type { LoraStacks, LoraWeights } from '../runtime/lora-stacks.js';

export class AdapterSlots {
  private readonly slots: LoraStacks;
  /** [slot] the adapter key in each occupied slot */
  private readonly bySlot: (string | null)[] = [];
  /** adapter key → its slot */
  private readonly index = new Map<string, number>();
  private readonly pins = new Map<string, number>();
  private readonly lastUsed = new Map<string, number>();
  private clock = 0;
  loads = 0;
  /** Swaps that moved a step's adapters into the lowest slots (each copies two adapters' stacks). */
  moves = 0;

  /** The tensor stacks the graph reads; this table says which adapter sits in which of their slots. */
  constructor(slots: LoraStacks) {
    this.slots = slots;
  }

  /** [slot] the adapter key in each occupied slot (for stats and tests). */
  occupants(): string[] {
    return this.bySlot.slice(0, this.slots.count) as string[];
  }

  slotOf(key: string): number | undefined {
    return this.index.get(key);
  }


  pin(key: string): void {
    this.pins.set(key, (this.pins.get(key) ?? 0) + 1);
  }

  unpin(key: string): void {
    const n = (this.pins.get(key) ?? 0) - 1;
    if (n > 0) this.pins.set(key, n);
    else this.pins.delete(key);
  }

  isPinned(key: string): boolean {
    return this.pins.has(key);
  }

  /**
   * Makes sure every key in `keys` has a slot, loading weights with `weightsOf`. Returns the keys
   * whose weights the slots refused (values not finite in the slot dtype), with the reason; the
   * caller fails the requests that use them. Throws when a slot would have to be taken from a
   * pinned adapter (the scheduler's active-set limit prevents it).
   */
  acquire(keys: Iterable<string>, weightsOf: (key: string) => LoraWeights | undefined): Map<string, LoraplexError> {
    const refused = new Map<string, LoraplexError>();
    const wanted = new Set(keys);
    const now = ++this.clock;
    for (const key of wanted) this.lastUsed.set(key, now);
    for (const key of wanted) {
      if (this.index.has(key)) continue;
      const w = weightsOf(key);
      if (!w) throw new Error(`adapter ${key} is not in the host cache`);
      if (this.slots.count >= this.slots.capacity) this.evictOne(wanted);
      let slot: number;
      try {
        slot = this.slots.load(w);
      } catch (err) {
        refused.set(key, LoraplexError.from(err));
        continue;
      }
      this.bySlot[slot] = key;
      this.index.set(key, slot);
      this.loads++;
    }
    this.compact(wanted);
    return refused;
  }

  /** Moves the placed keys of `wanted` into the lowest slots, swapping out the adapters there. */
  private compact(wanted: Set<string>): void {
    const placed = [...wanted].filter((k) => this.index.has(k));
    const n = placed.length;
    let free = 0;
    for (const key of placed) {
      const slot = this.index.get(key)!;
      if (slot < n) continue;
      // The next low slot holding an adapter this step does not use (one exists: n slots below n, fewer than n of them wanted ones).
      while (wanted.has(this.bySlot[free]!)) free++;
      const other = this.bySlot[free]!;
      this.slots.swap(free, slot);
      this.moves++;
      this.bySlot[free] = key;
      this.bySlot[slot] = other;
      this.index.set(key, free);
      this.index.set(other, slot);
    }
  }

  private evictOne(keep: Set<string>): void {
    let victim: string | null = null;
    for (const key of this.index.keys()) {
      if (keep.has(key) || this.pins.has(key)) continue;
      if (victim === null || this.lastUsed.get(key)! < this.lastUsed.get(victim)!) victim = key;
    }
    if (victim === null) throw new Error('all adapter slots are pinned by running requests');
    this.remove(victim);
  }

  /** Takes an adapter out of its slot (if it is there and not pinned). */
  remove(key: string): boolean {
    const slot = this.index.get(key);
    if (slot === undefined || this.pins.has(key)) return false;
    const moved = this.slots.unload(slot);
    this.index.delete(key);
    this.lastUsed.delete(key);
    if (moved !== null) {
      const movedKey = this.bySlot[moved]!;
      this.bySlot[slot] = movedKey;
      this.index.set(movedKey, slot);
    } else {
      this.bySlot[slot] = null;
    }
    this.bySlot.length = this.slots.count;
    return true;
  }
}
