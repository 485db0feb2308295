/**
 * The identity of a sequence's full KV blocks, for prefix caching: block i's hash covers the
 * weights that computed the K/V (an adapter version's content digest, a merge recipe of digests, or
 * the base model), the cache partition, and every token up to the end of block i. Two sequences
 * share block i's hash only if the same weights read the same first 16·(i+1) tokens — the only case
 * where their K/V for those positions is the same — and they are in the same partition. Partitions
 * keep tenants from learning each other's prompts through cache hits (the server derives one from
 * the API key and `cache_salt`; '' = shared). Blocks are added in order as their tokens become known.
 */
import { createHash } from 'node:crypto';
import { KV_BLOCK } from './kv-block.js';

/** Weights key of the base model (adapter keys are content digests or merge recipes, never this). */
export const BASE_WEIGHTS = 'base';

export class PrefixChain {
  readonly weights: string;
  readonly partition: string;
  private readonly hashes: string[] = [];
  private readonly blockTokens: Int32Array[] = [];
  private readonly seed: string;

  constructor(weights: string, partition = '') {
    this.weights = weights;
    this.partition = partition;
    const seed = createHash('sha256').update('loraplex-kv-prefix\0').update(weights);
    // (Weights keys hold no NUL, so "weights\0partition" is unambiguous; the shared partition keeps the old seed.)
    if (partition !== '') seed.update('\0').update(partition);
    this.seed = seed.digest('base64');
  }

  /** Blocks hashed so far. */
  get length(): number {
    return this.hashes.length;
  }

  hash(i: number): string {
    return this.hashes[i];
  }

  /** The tokens of block i. */
  tokens(i: number): Int32Array {
    return this.blockTokens[i];
  }

  /** Appends the next block (exactly KV_BLOCK tokens). */
  push(tokens: ArrayLike<number>): void {
    if (tokens.length !== KV_BLOCK) throw new Error(`a KV block has ${KV_BLOCK} tokens, got ${tokens.length}`);
    const block = Int32Array.from(tokens);
    const parent = this.hashes.length > 0 ? this.hashes[this.hashes.length - 1] : this.seed;
    this.hashes.push(createHash('sha256').update(parent).update(new Uint8Array(block.buffer)).digest('base64'));
    this.blockTokens.push(block);
  }

  /** Hashes the full blocks of `tokens` (the sequence from position 0) not hashed yet, up to `blocks`. */
  extend(tokens: ArrayLike<number>, blocks = Math.floor(tokens.length / KV_BLOCK)): void {
    const n = Math.min(blocks, Math.floor(tokens.length / KV_BLOCK));
    for (let i = this.hashes.length; i < n; i++) push(this, tokens, i);
  }
}

function push(chain: PrefixChain, tokens: ArrayLike<number>, block: number): void {
  const out = new Int32Array(KV_BLOCK);
  for (let j = 0; j < KV_BLOCK; j++) out[j] = tokens[block * KV_BLOCK + j];
  chain.push(out);
}
