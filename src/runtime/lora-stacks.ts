/**
 * The LoRA slots the graph reads: per (layer, projection) a stack A [slots, in, R] and
 * B [slots, R, out] with the PEFT scale folded into B. Loaded adapters occupy slots 0..count-1
 * contiguously, so the graph is fed zero-copy prefix views [count, ...]. Loading writes slot `count`;
 * unloading moves the last slot into the hole. R is the largest rank loaded (rounded up to 8): lower
 * ranks are zero-padded, and the stacks are repacked when R changes.
 *
 * Semantics: y[t] += (x[t] @ A[slot[t]]) @ B[slot[t]]
 *
 * DoRA (adapters/dora.ts): each stack also holds G [slots, out], the slot's DoRA scale minus one
 * (g − 1, with g already folded into B), and the graph adds G[slot[t]] ⊙ (x[t]·Wᵀ) as well. Plain
 * LoRA slots, and projections a DoRA adapter does not target, hold exactly 0 there.
 */
import { AdapterInvalidError, RuntimeConfigError } from '../errors.js';
import { RuntimeLimitError } from './limit-error.js';
import { floatToHalf } from './checkpoint/safetensors.js';
import { PROJECTIONS, projectionShape, type ModelSpec, type Projection } from './checkpoint/spec.js';
import type { FloatStore } from './kv-cache.js';

/** One projection's LoRA factors in runtime layout. */
export interface LoraFactor {
  rank: number;
  /** [in, rank] (PEFT lora_A transposed) */
  a: Float32Array;
  /** [rank, out] (PEFT lora_B transposed, times the scale) */
  b: Float32Array;
  /** The LoRA scale folded into `b` (TIES/DARE merges work on the unscaled factors); absent: unknown. */
  scale?: number;
  /** DoRA: g = m / ‖W + s·B·A‖ per output [out], already folded into `b` too; absent: plain LoRA. */
  doraScale?: Float32Array;
}

/** An adapter ready to be put into a slot. Key: `${layer}.${projection}`; absent = no LoRA there. */
export interface LoraWeights {
  factors: ReadonlyMap<string, LoraFactor>;
  /** The largest rank of any factor. */
  maxRank: number;
  /** Bytes held by the factors (for cache accounting). */
  bytes: number;
}

export const factorKey = (layer: number, p: Projection): string => `${layer}.${p}`;

/** Element type of the slot stacks (the graph's activation type). */
export type SlotDtype = 'float32' | 'float16';

/** The largest magnitude a float16 slot holds; beyond it a value becomes Inf. */
export const MAX_HALF = 65504;
const MAX_FLOAT = 3.4028234663852886e38;

/**
 * Throws AdapterInvalidError unless every value is finite once stored as `dtype`. Nothing
 * non-finite may enter a slot: the stacks are shared by every row of a step.
 */
export function checkFactorValues(values: Float32Array, dtype: SlotDtype, what: string): void {
  const limit = dtype === 'float16' ? MAX_HALF : MAX_FLOAT;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    // (NaN fails both comparisons.)
    if (!(v <= limit && v >= -limit)) {
      throw new AdapterInvalidError(`${what} holds ${v} at index ${i}, which is not a finite ${dtype} value`, 'adapter_model');
    }
  }
}

/** Checks every factor of an adapter (scale folded in) for the slot dtype. */
export function checkLoraWeights(w: LoraWeights, dtype: SlotDtype): void {
  for (const [key, f] of w.factors) {
    checkFactorValues(f.a, dtype, `LoRA factor ${key} (A)`);
    checkFactorValues(f.b, dtype, `LoRA factor ${key} (B, scale included)`);
    if (f.doraScale) checkFactorValues(f.doraScale.map((g) => g - 1), dtype, `LoRA factor ${key} (DoRA scale − 1)`);
  }
}

const RANK_ALIGN = 8;

interface Stack {
  layer: number;
  projection: Projection;
  din: number;
  dout: number;
  a: FloatStore;
  b: FloatStore;
  /** [slots, out]: g − 1 (0 for plain LoRA). */
  g: FloatStore;
}

export class LoraStacks {
  readonly capacity: number;
  readonly maxRank: number;
  private readonly half: boolean;
  private readonly stacks: Stack[] = [];
  /** Rank of every slot's adapter, for repacking. */
  private readonly slotRank: number[] = [];
  /** Per slot: whether its adapter has DoRA scales (the graph runs the DoRA term for those rows only). */
  private readonly slotDora: boolean[] = [];
  private weights: (LoraWeights | null)[];
  private r = 0;
  /** Bumped whenever the stacks' contents or layout change (feeds cache key). */
  version = 0;

  constructor(spec: ModelSpec, capacity: number, maxRank: number, half: boolean) {
    if (!Number.isSafeInteger(capacity) || capacity < 1) throw new RuntimeConfigError(`adapter slots must be >= 1, got ${capacity}`);
    if (!Number.isSafeInteger(maxRank) || maxRank < 1) throw new RuntimeConfigError(`max LoRA rank must be >= 1, got ${maxRank}`);
    this.capacity = capacity;
    this.maxRank = maxRank;
    this.half = half;
    this.weights = [];
    for (let l = 0; l < spec.numLayers; l++) {
      for (const p of PROJECTIONS) {
        const [din, dout] = projectionShape(spec, p);
        this.stacks.push({ layer: l, projection: p, din, dout, a: this.alloc(0), b: this.alloc(0), g: this.alloc(0) });
      }
    }
  }

  private alloc(n: number): FloatStore {
    return this.half ? new Uint16Array(n) : new Float32Array(n);
  }

  /** Number of occupied slots (slots 0..count-1). */
  get count(): number {
    return this.weights.length;
  }

  /** Whether the adapter in `slot` is DoRA (its G rows are not all zero). */
  isDora(slot: number): boolean {
    return this.slotDora[slot] ?? false;
  }

  /** The rank dimension R of the stacks (0 when empty). */
  get rank(): number {
    return this.r;
  }

  get dtype(): SlotDtype {
    return this.half ? 'float16' : 'float32';
  }

  /**
   * Puts an adapter into the next free slot and returns the slot index. Throws AdapterInvalidError
   * (leaving the slots unchanged) when a value would not be finite in the slot dtype.
   */
  load(w: LoraWeights): number {
    if (this.weights.length >= this.capacity) throw new RuntimeLimitError(`all ${this.capacity} adapter slots are in use`);
    if (w.maxRank > this.maxRank) {
      throw new RuntimeLimitError(`adapter rank ${w.maxRank} is above the maximum LoRA rank ${this.maxRank}`);
    }
    checkLoraWeights(w, this.dtype);
    const slot = this.weights.length;
    this.weights.push(w);
    this.slotRank.push(w.maxRank);
    this.slotDora.push([...w.factors.values()].some((f) => f.doraScale !== undefined));
    const wanted = Math.max(this.r, roundRank(w.maxRank, this.maxRank));
    if (wanted !== this.r || this.weights.length > this.slotsAllocated()) this.repack(wanted);
    else this.writeSlot(slot, w);
    this.version++;
    return slot;
  }

  /**
   * Empties `slot`. The last slot's adapter moves into it; returns the slot it moved from (the
   * caller remaps that adapter to `slot`), or null when `slot` was the last.
   */
  unload(slot: number): number | null {
    const last = this.weights.length - 1;
    if (slot < 0 || slot > last) throw new Error(`slot ${slot} is not loaded`);
    let moved: number | null = null;
    if (slot !== last) {
      this.weights[slot] = this.weights[last];
      this.slotRank[slot] = this.slotRank[last];
      this.slotDora[slot] = this.slotDora[last];
      this.writeSlot(slot, this.weights[slot]!);
      moved = last;
    }
    this.weights.pop();
    this.slotRank.pop();
    this.slotDora.pop();
    const wanted = this.slotRank.length === 0 ? 0 : roundRank(Math.max(...this.slotRank), this.maxRank);
    if (wanted < this.r) this.repack(wanted);
    this.version++;
    return moved;
  }

  /**
   * Exchanges the adapters in slots `i` and `j` (their stack rows, DoRA scales and flags), so that a
   * step's adapters can sit in the lowest slots: the graph reads slots 0..U-1, U = the highest slot
   * a row uses + 1. Both slots keep the current rank stride, so this is three copies of each.
   */
  swap(i: number, j: number): void {
    for (const slot of [i, j]) if (!Number.isInteger(slot) || slot < 0 || slot >= this.weights.length) throw new Error(`slot ${slot} is not loaded`);
    if (i === j) return;
    const r = this.r;
    for (const s of this.stacks) {
      swapRegions(s.a, i, j, s.din * r);
      swapRegions(s.b, i, j, r * s.dout);
      swapRegions(s.g, i, j, s.dout);
    }
    for (const list of [this.weights, this.slotRank, this.slotDora] as unknown[][]) [list[i], list[j]] = [list[j], list[i]];
    this.version++;
  }

  private slotsAllocated(): number {
    const s = this.stacks[0];
    const per = s.din * this.r;
    return per === 0 ? 0 : s.a.length / per;
  }

  /** Reallocates every stack with rank stride `r` and room for all slots, rewriting each slot. */
  private repack(r: number): void {
    this.r = r;
    // Grow in steps so that loading slot after slot does not reallocate every time.
    const slots = r === 0 ? 0 : Math.min(this.capacity, Math.max(1, 2 * this.weights.length));
    for (const s of this.stacks) {
      s.a = this.alloc(slots * s.din * r);
      s.b = this.alloc(slots * r * s.dout);
      s.g = this.alloc(slots * s.dout);
    }
    this.weights.forEach((w, slot) => this.writeSlot(slot, w!));
  }

  private writeSlot(slot: number, w: LoraWeights): void {
    const r = this.r;
    for (const s of this.stacks) {
      const aOff = slot * s.din * r;
      const bOff = slot * r * s.dout;
      const gOff = slot * s.dout;
      s.a.fill(0, aOff, aOff + s.din * r);
      s.b.fill(0, bOff, bOff + r * s.dout);
      s.g.fill(0, gOff, gOff + s.dout);
      const f = w.factors.get(factorKey(s.layer, s.projection));
      if (!f) continue;
      if (f.doraScale) this.store(s.g, gOff, f.doraScale.map((g) => g - 1));
      // A [in, rank] → rows of stride r; B [rank, out] → the first `rank` rows.
      for (let i = 0; i < s.din; i++) this.store(s.a, aOff + i * r, f.a.subarray(i * f.rank, (i + 1) * f.rank));
      this.store(s.b, bOff, f.b);
    }
  }

  private store(dst: FloatStore, at: number, src: Float32Array): void {
    if (dst instanceof Float32Array) {
      dst.set(src, at);
      return;
    }
    for (let i = 0; i < src.length; i++) dst[at + i] = floatToHalf(src[i]);
  }

  /** The prefix views [u, in, R] / [u, R, out] / [u, out] of every stack (slots 0..u-1), in graph order. */
  *views(u = this.weights.length): Generator<{ layer: number; projection: Projection; a: FloatStore; aDims: number[]; b: FloatStore; bDims: number[]; g: FloatStore; gDims: number[] }> {
    if (u > this.weights.length) throw new Error(`views of ${u} slots but ${this.weights.length} are loaded`);
    const r = this.r;
    for (const s of this.stacks) {
      yield {
        layer: s.layer,
        projection: s.projection,
        a: s.a.subarray(0, u * s.din * r),
        aDims: [u, s.din, r],
        b: s.b.subarray(0, u * r * s.dout),
        bDims: [u, r, s.dout],
        g: s.g.subarray(0, u * s.dout),
        gDims: [u, s.dout],
      };
    }
  }
}

/** Exchanges the `per`-element regions of slots i and j of a stack. */
function swapRegions(store: FloatStore, i: number, j: number, per: number): void {
  const held = store.slice(i * per, (i + 1) * per);
  store.copyWithin(i * per, j * per, (j + 1) * per);
  store.set(held, j * per);
}

function roundRank(rank: number, max: number): number {
  return Math.min(max, Math.ceil(rank / RANK_ALIGN) * RANK_ALIGN);
}
