/**
 * The KV pool's prefix cache, block by block: reference counts, publication, adoption checked
 * against weights and tokens (not only the hash), idle blocks counted as free and reclaimed least
 * recently used first (the chain's tail before its head), and forgetting an adapter's blocks.
 */
import { describe, expect, it } from 'vitest';
import { KV_BLOCK, KvPool, KvSequence } from '../../src/runtime/kv-cache.js';
import { BASE_WEIGHTS, PrefixChain } from '../../src/runtime/prefix-chain.js';

const block = (start: number): number[] => Array.from({ length: KV_BLOCK }, (_, j) => start + j);
const chainOf = (weights: string, blocks: number, offset = 0): PrefixChain => {
  const c = new PrefixChain(weights);
  for (let i = 0; i < blocks; i++) c.push(block(offset + i * KV_BLOCK));
  return c;
};

/** A sequence that computed `chain`'s blocks (as a step would) and published them. */
function computed(pool: KvPool, chain: PrefixChain, blocks: number, extra = 0): KvSequence {
  const seq = new KvSequence();
  pool.reserve(seq, blocks * KV_BLOCK + extra);
  seq.length = blocks * KV_BLOCK + extra;
  for (let i = 0; i < blocks; i++) pool.publish(seq, i, chain);
  return seq;
}

describe('PrefixChain', () => {
  it('hashes depend on the weights, on every earlier token and on the block itself', () => {
    const a = chainOf('digest-a', 3);
    expect(chainOf('digest-a', 3).hash(2)).toBe(a.hash(2));
    expect(chainOf('digest-b', 3).hash(0)).not.toBe(a.hash(0));
    expect(chainOf(BASE_WEIGHTS, 3).hash(0)).not.toBe(a.hash(0));
    // Same block 1, different block 0: different hash for block 1.
    const other = new PrefixChain('digest-a');
    other.push(block(1000));
    other.push(block(KV_BLOCK));
    expect(other.hash(1)).not.toBe(a.hash(1));
    expect(() => a.push([1, 2, 3])).toThrow(/16 tokens/);
    const ext = new PrefixChain('digest-a');
    ext.extend(Array.from({ length: 3 * KV_BLOCK + 5 }, (_, i) => i));
    expect(ext.length).toBe(3);
    expect(ext.hash(2)).toBe(a.hash(2));
  });
});

describe('KvPool prefix cache', () => {
  it('publishes, adopts with reference counts, and keeps released blocks cached and free', () => {
    const pool = new KvPool(1, 4, 8 * KV_BLOCK, false);
    const chain = chainOf('a', 3);
    const first = computed(pool, chain, 3, 5);
    expect(pool.cachedBlocks).toBe(3);
    expect(pool.freeTokens).toBe(4 * KV_BLOCK);
    // A second sequence adopts the three blocks: same pool slots, nothing new taken.
    const second = new KvSequence();
    expect(pool.matchPrefix(chain, 10)).toBe(3);
    expect(pool.adoptPrefix(second, chain, 2)).toBe(2);
    expect(second.length).toBe(2 * KV_BLOCK);
    expect(Array.from(second.indices.subarray(0, 2 * KV_BLOCK))).toEqual(Array.from(first.indices.subarray(0, 2 * KV_BLOCK)));
    expect(pool.freeTokens).toBe(4 * KV_BLOCK);
    pool.free(first);
    // Block 2 (held by nobody now) is idle: cached and free; blocks 0-1 are still held by `second`;
    // the partial fourth block went back to the free list.
    expect(pool.idleBlocks).toBe(1);
    expect(pool.freeTokens).toBe(6 * KV_BLOCK);
    pool.free(second);
    expect(pool.idleBlocks).toBe(3);
    expect(pool.freeTokens).toBe(pool.capacity);
    expect(pool.matchPrefix(chain, 3)).toBe(3);
    // Publishing a second copy of a chain position is a no-op.
    const dup = computed(pool, chain, 1);
    expect(pool.cachedBlocks).toBe(3);
    pool.free(dup);
    expect(() => pool.adoptPrefix(dup, chain, 1)).toThrow(/empty/);
  });

  it('a block matches only its own weights and tokens, whatever its hash says', () => {
    const pool = new KvPool(1, 4, 4 * KV_BLOCK, false);
    const chain = chainOf('a', 2);
    pool.free(computed(pool, chain, 2));
    expect(pool.matchPrefix(chainOf('b', 2), 2)).toBe(0);
    expect(pool.matchPrefix(chainOf('a', 2, 1), 2)).toBe(0);
    /** A chain whose hashes collide with `chain`'s but whose tokens differ from block 1 on. */
    class Colliding extends PrefixChain {
      override hash(i: number): string {
        return chain.hash(i);
      }
    }
    const forged = new Colliding('a');
    forged.push(block(0));
    forged.push(block(999));
    expect(pool.matchPrefix(forged, 2)).toBe(1);
    const seq = new KvSequence();
    expect(pool.adoptPrefix(seq, forged, 2)).toBe(1);
  });

  it('reclaims idle blocks when the pool needs room, least recently used and tail first', () => {
    const pool = new KvPool(1, 4, 4 * KV_BLOCK, false);
    const a = chainOf('a', 2);
    const b = chainOf('b', 2);
    pool.free(computed(pool, a, 2));
    pool.free(computed(pool, b, 2));
    expect(pool.idleBlocks).toBe(4);
    expect(pool.freeTokens).toBe(pool.capacity);
    // Touch a (adopt and release): b is now the least recently used.
    const t = new KvSequence();
    pool.adoptPrefix(t, a, 2);
    pool.free(t);
    const s = new KvSequence();
    pool.reserve(s, KV_BLOCK);
    // b's tail block went first; its head is still cached, a is whole.
    expect(pool.matchPrefix(b, 2)).toBe(1);
    expect(pool.matchPrefix(a, 2)).toBe(2);
    pool.reserve(s, 4 * KV_BLOCK);
    expect(pool.cachedBlocks).toBe(0);
    expect(pool.freeTokens).toBe(0);
    expect(() => pool.reserve(s, 5 * KV_BLOCK)).toThrow(/KV cache is full/);
  });

  it('forget unpublishes an adapter version: idle blocks become free, held ones are not cached again', () => {
    const pool = new KvPool(1, 4, 6 * KV_BLOCK, false);
    const a = chainOf('digest-a', 2);
    const merged = chainOf('merge(digest-a*0.5+digest-c*1)', 1);
    const b = chainOf('digest-b', 2);
    pool.free(computed(pool, a, 2));
    pool.free(computed(pool, merged, 1));
    const held = computed(pool, b, 2);
    expect(pool.forget((w) => w === 'digest-a' || w.includes('digest-a'))).toBe(3);
    expect(pool.matchPrefix(a, 2)).toBe(0);
    expect(pool.matchPrefix(merged, 1)).toBe(0);
    expect(pool.idleBlocks).toBe(0);
    expect(pool.forget((w) => w === 'digest-b')).toBe(2);
    expect(pool.matchPrefix(b, 2)).toBe(0);
    pool.free(held);
    expect(pool.idleBlocks).toBe(0);
    expect(pool.freeTokens).toBe(pool.capacity);
  });

  it('never hands out or publishes the null block', () => {
    const pool = new KvPool(1, 4, 3 * KV_BLOCK, false);
    const seqs = [0, 1, 2].map((i) => computed(pool, chainOf(`w${i}`, 1), 1));
    expect(seqs.flatMap((s) => s.blocks).sort()).toEqual([1, 2, 3]);
    for (const s of seqs) pool.free(s);
    const big = new KvSequence();
    pool.reserve(big, 3 * KV_BLOCK);
    expect([...big.blocks].sort()).toEqual([1, 2, 3]);
  });
});
