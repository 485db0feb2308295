/**
 * The KV cache: one token pool per layer for keys and one for values, [poolTokens, kvHeads*headDim],
 * fed to the graph whole (zero-copy). Sequences own pool tokens in blocks; a step gathers each row's
 * past by index, so a decode step reads O(live context), whatever the pool's capacity.
 *
 * Block 0 is the null block: never handed out, never written, always zero. Padding in a step's past
 * index points there, so a masked padding slot can only ever read zeros — never another row's
 * tokens, nor stale values (NaN included) left by a finished sequence.
 */
import { RuntimeConfigError } from '../errors.js';
import { RuntimeLimitError } from './limit-error.js';

/** Tokens per allocation block. */
export const KV_BLOCK = 16;

export type FloatStore = Float32Array | Uint16Array;

export class KvSequence {
  /** Tokens whose K/V are in the pool. */
  length = 0;
  /** [capacity] pool index of each of this sequence's token positions (valid below `allocated`). */
  indices: Int32Array = new Int32Array(0);
  /** Positions with a pool slot (a multiple of KV_BLOCK). */
  allocated = 0;
  readonly blocks: number[] = [];
  freed = false;
}

/** Pool index of the null block's first token: what padding in a past index points to. */
export const NULL_KV_TOKEN = 0;

export class KvPool {
  readonly kvDim: number;
  /** Tokens sequences can hold (the null block excluded). */
  readonly capacity: number;
  /** Tokens in each pool array: the capacity plus the null block. */
  readonly poolTokens: number;
  readonly keys: FloatStore[];
  readonly values: FloatStore[];
  private readonly freeBlocks: number[];

  constructor(numLayers: number, kvDim: number, capacityTokens: number, half: boolean) {
    if (!Number.isSafeInteger(capacityTokens) || capacityTokens < KV_BLOCK) {
      throw new RuntimeConfigError(`KV cache capacity must be at least ${KV_BLOCK} tokens, got ${capacityTokens}`);
    }
    const blocks = Math.floor(capacityTokens / KV_BLOCK);
    this.kvDim = kvDim;
    this.capacity = blocks * KV_BLOCK;
    this.poolTokens = (blocks + 1) * KV_BLOCK;
    const make = (): FloatStore => (half ? new Uint16Array(this.poolTokens * kvDim) : new Float32Array(this.poolTokens * kvDim));
    this.keys = Array.from({ length: numLayers }, make);
    this.values = Array.from({ length: numLayers }, make);
    // Blocks 1..blocks; pop from the end: low blocks are handed out first.
    this.freeBlocks = Array.from({ length: blocks }, (_, i) => blocks - i);
  }

  get freeTokens(): number {
    return this.freeBlocks.length * KV_BLOCK;
  }

  /** Tokens a sequence of `length` positions holds in the pool (whole blocks). */
  static tokensFor(length: number): number {
    return Math.ceil(length / KV_BLOCK) * KV_BLOCK;
  }

  /** Makes sure `seq` has pool slots for `length` positions; throws when the pool is full. */
  reserve(seq: KvSequence, length: number): void {
    if (seq.freed) throw new Error('KV sequence used after free');
    if (length <= seq.allocated) return;
    const need = Math.ceil((length - seq.allocated) / KV_BLOCK);
    if (need > this.freeBlocks.length) {
      throw new RuntimeLimitError(
        `KV cache is full: ${length} positions need ${need * KV_BLOCK} more tokens, ${this.freeTokens} of ${this.capacity} are free`,
      );
    }
    const newAllocated = seq.allocated + need * KV_BLOCK;
    if (seq.indices.length < newAllocated) {
      const grown = new Int32Array(Math.max(newAllocated, seq.indices.length * 2));
      grown.set(seq.indices.subarray(0, seq.allocated));
      seq.indices = grown;
    }
    for (let i = 0; i < need; i++) {
      const block = this.freeBlocks.pop()!;
      seq.blocks.push(block);
      const at = seq.allocated + i * KV_BLOCK;
      for (let j = 0; j < KV_BLOCK; j++) seq.indices[at + j] = block * KV_BLOCK + j;
    }
    seq.allocated = newAllocated;
  }

  free(seq: KvSequence): void {
    if (seq.freed) return;
    for (let i = seq.blocks.length - 1; i >= 0; i--) this.freeBlocks.push(seq.blocks[i]);
    seq.blocks.length = 0;
    seq.allocated = 0;
    seq.length = 0;
    seq.freed = true;
  }

  /** Copies new K/V rows ([T, kvDim] per layer) to the pool positions in `target` ([T] pool indices). */
  write(layer: number, newKeys: FloatStore, newValues: FloatStore, target: Int32Array, count: number): void {
    const d = this.kvDim;
    const k = this.keys[layer];
    const v = this.values[layer];
    let t = 0;
    while (t < count) {
      // Copy runs of consecutive pool indices in one call.
      let run = 1;
      while (t + run < count && target[t + run] === target[t] + run) run++;
      k.set(newKeys.subarray(t * d, (t + run) * d), target[t] * d);
      v.set(newValues.subarray(t * d, (t + run) * d), target[t] * d);
      t += run;
    }
  }
}
