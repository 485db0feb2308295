/**
 * The KV cache: one token pool per layer for keys and one for values, [poolTokens, kvHeads*headDim],
 * fed to the graph whole (zero-copy). Sequences own pool tokens in blocks; a step gathers each row's
 * past by index, so a decode step reads O(live context), whatever the pool's capacity.
 *
 * Block 0 is the null block: never handed out, never written, always zero. Padding in a step's past
 * index points there, so a masked padding slot can only ever read zeros — never another row's
 * tokens, nor stale values (NaN included) left by a finished sequence.
 *
 * Prefix caching: a full block can be published under its chain hash (see prefix-chain.ts), with
 * the weights key and the tokens that produced it. Blocks are reference-counted; a sequence that
 * starts with a published chain adopts those blocks instead of computing them. A published block no
 * sequence references stays cached (idle) until the pool needs the room: idle blocks count as free,
 * and the least recently used is taken first, so caching never shrinks the batch the pool holds.
 * A sequence only ever writes positions past its adopted prefix, so shared blocks are read-only.
 */
import { RuntimeConfigError } from '../errors.js';
import { KV_BLOCK } from './kv-block.js';
import { RuntimeLimitError } from './limit-error.js';
import type { PrefixChain } from './prefix-chain.js';

export { KV_BLOCK };

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
  /** Per block: sequences holding it. */
  private readonly refs: Int32Array;
  /** Per published block: its chain hash, the weights key and the tokens that produced it. */
  private readonly blockHash: (string | null)[];
  private readonly blockWeights: (string | null)[];
  private readonly blockTokens: Int32Array;
  private readonly byHash = new Map<string, number>();
  /** Published blocks no sequence holds, least recently used first. */
  private readonly idle = new Set<number>();

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
    this.refs = new Int32Array(blocks + 1);
    this.blockHash = new Array<string | null>(blocks + 1).fill(null);
    this.blockWeights = new Array<string | null>(blocks + 1).fill(null);
    this.blockTokens = new Int32Array((blocks + 1) * KV_BLOCK);
  }

  /** Tokens a sequence can still get: unused blocks plus idle cached ones. */
  get freeTokens(): number {
    return (this.freeBlocks.length + this.idle.size) * KV_BLOCK;
  }

  /** Published blocks (held by sequences or idle). */
  get cachedBlocks(): number {
    return this.byHash.size;
  }

  /** Published blocks no sequence holds (reclaimed as the pool needs room). */
  get idleBlocks(): number {
    return this.idle.size;
  }

  /**
   * How many of the chain's first `maxBlocks` blocks are published, from the start. A block counts
   * only if its weights key and tokens are the chain's own, not just its hash.
   */
  matchPrefix(chain: PrefixChain, maxBlocks: number): number {
    const n = Math.min(maxBlocks, chain.length);
    for (let i = 0; i < n; i++) {
      const b = this.byHash.get(chain.hash(i));
      if (b === undefined || this.blockWeights[b] !== chain.weights || !this.sameTokens(b, chain.tokens(i))) return i;
    }
    return n;
  }

  /** Gives an empty sequence the chain's first published blocks (at most `maxBlocks`); returns how many. */
  adoptPrefix(seq: KvSequence, chain: PrefixChain, maxBlocks: number): number {
    if (seq.freed || seq.allocated !== 0) throw new Error('only an empty KV sequence can adopt a cached prefix');
    const n = this.matchPrefix(chain, maxBlocks);
    if (n === 0) return 0;
    if (seq.indices.length < n * KV_BLOCK) seq.indices = new Int32Array(n * KV_BLOCK);
    for (let i = 0; i < n; i++) {
      const b = this.byHash.get(chain.hash(i))!;
      if (this.refs[b]++ === 0) this.idle.delete(b);
      seq.blocks.push(b);
      for (let j = 0; j < KV_BLOCK; j++) seq.indices[i * KV_BLOCK + j] = b * KV_BLOCK + j;
    }
    seq.allocated = seq.length = n * KV_BLOCK;
    return n;
  }

  /**
   * Publishes the sequence's block `index` (its positions must be written) as the chain's block
   * `index`. A no-op if the block is published already, or another block holds that chain position.
   */
  publish(seq: KvSequence, index: number, chain: PrefixChain): void {
    if ((index + 1) * KV_BLOCK > seq.length) throw new Error(`KV block ${index} is not fully written (${seq.length} positions)`);
    const b = seq.blocks[index];
    const hash = chain.hash(index);
    if (this.blockHash[b] !== null || this.byHash.has(hash)) return;
    this.blockHash[b] = hash;
    this.blockWeights[b] = chain.weights;
    this.blockTokens.set(chain.tokens(index), b * KV_BLOCK);
    this.byHash.set(hash, b);
  }

  /**
   * Unpublishes every block made with weights `matches` accepts (an adapter version unloaded):
   * idle ones return to the free list, held ones are freed when their sequences end. Returns how
   * many blocks were unpublished.
   */
  forget(matches: (weights: string) => boolean): number {
    let n = 0;
    for (const [, b] of this.byHash) {
      if (!matches(this.blockWeights[b]!)) continue;
      this.unpublish(b);
      if (this.idle.delete(b)) this.freeBlocks.push(b);
      n++;
    }
    return n;
  }

  private unpublish(b: number): void {
    this.byHash.delete(this.blockHash[b]!);
    this.blockHash[b] = null;
    this.blockWeights[b] = null;
  }

  private sameTokens(b: number, tokens: Int32Array): boolean {
    const at = b * KV_BLOCK;
    for (let j = 0; j < KV_BLOCK; j++) if (this.blockTokens[at + j] !== tokens[j]) return false;
    return true;
  }

  /** An unused block, or else the least recently used idle one (unpublished). */
  private takeBlock(): number {
    const b = this.freeBlocks.pop();
    if (b !== undefined) return b;
    const lru = this.idle.values().next().value as number;
    this.idle.delete(lru);
    this.unpublish(lru);
    return lru;
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
    if (need > this.freeBlocks.length + this.idle.size) {
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
      const block = this.takeBlock();
      this.refs[block] = 1;
      seq.blocks.push(block);
      const at = seq.allocated + i * KV_BLOCK;
      for (let j = 0; j < KV_BLOCK; j++) seq.indices[at + j] = block * KV_BLOCK + j;
    }
    seq.allocated = newAllocated;
  }

  /** Releases the sequence's blocks: published ones stay cached (the chain's tail is reclaimed first), others are free. */
  free(seq: KvSequence): void {
    if (seq.freed) return;
    for (let i = seq.blocks.length - 1; i >= 0; i--) {
      const b = seq.blocks[i];
      if (--this.refs[b] > 0) continue;
      if (this.blockHash[b] !== null) this.idle.add(b);
      else this.freeBlocks.push(b);
    }
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
