/**
 * The engine's side of prefix caching. Each request's tokens (prompt, then output) are hashed block
 * by block into a chain seeded with its weights key and cache partition (prefix-chain.ts). At
 * admission the request adopts the longest cached chain of its prompt and prefills the rest; after
 * each step the blocks its rows completed are published for later requests. The last prompt token
 * is always computed (its logits start the answer), and a request that wants prompt logprobs
 * computes its whole prompt.
 *
 * A prompt whose next block another running prefill is computing waits a step instead of computing
 * it twice (`pending`, rebuilt every step).
 */
import { KV_BLOCK, type KvPool, type KvSequence } from '../runtime/kv-cache.js';
import { BASE_WEIGHTS, PrefixChain } from '../runtime/prefix-chain.js';
import { tokenAt, type LiveRequest } from './live-request.js';
import type { ValidRequest } from './request.js';
import type { Job } from './state.js';

export class PrefixBook {
  private readonly kv: KvPool;
  readonly enabled: boolean;
  private readonly pending = new Set<string>();
  /** Prompt tokens looked up at admission, and those found cached. */
  queryTokens = 0;
  hitTokens = 0;

  constructor(kv: KvPool, enabled: boolean) {
    this.kv = kv;
    this.enabled = enabled;
  }

  /** The request's block chain, or null when prefix caching is off. */
  chainFor(req: ValidRequest): PrefixChain | null {
    return this.enabled ? new PrefixChain(req.adapter?.key ?? BASE_WEIGHTS, req.cachePartition) : null;
  }

  /** The scheduler's probe: cached prompt tokens of a job about to be admitted, or null (wait a step). */
  probe(live: LiveRequest, job: Job): number | null {
    const chain = live.chain;
    if (!chain || live.req.promptLogprobs !== null) return 0;
    const full = Math.floor(job.promptLen / KV_BLOCK);
    extendChain(live, full);
    const usable = Math.floor((job.promptLen - 1) / KV_BLOCK);
    const hit = this.kv.matchPrefix(chain, usable);
    if (hit < usable && this.pending.has(chain.hash(hit))) return null;
    for (let i = hit; i < full; i++) this.pending.add(chain.hash(i));
    return hit * KV_BLOCK;
  }

  /** Rebuilds the set of prompt blocks the running prefills have still to compute. */
  collectPending(requests: Iterable<LiveRequest>): void {
    this.pending.clear();
    if (!this.enabled) return;
    for (const live of requests) {
      if (!live.seq || !live.chain) continue;
      const full = Math.min(live.chain.length, Math.floor(live.job.promptLen / KV_BLOCK));
      for (let i = live.published; i < full; i++) this.pending.add(live.chain.hash(i));
    }
  }

  /**
   * Adopts the first `cachedTokens` of the request's prompt into its new sequence. The probe
   * matched those blocks in this same step and nothing reclaims blocks before the forward step, so
   * false (the prefix is gone) would be a bug.
   */
  adopt(live: LiveRequest, seq: KvSequence, cachedTokens: number): boolean {
    const blocks = cachedTokens / KV_BLOCK;
    if (blocks > 0 && this.kv.adoptPrefix(seq, live.chain!, blocks) !== blocks) return false;
    live.published = blocks;
    if (live.chain) {
      this.queryTokens += live.job.promptLen;
      this.hitTokens += cachedTokens;
    }
    live.cachedTokens ??= cachedTokens;
    return true;
  }

  /** Publishes the blocks the request's sequence has completed. */
  publish(live: LiveRequest): void {
    const seq = live.seq;
    if (!live.chain || !seq) return;
    const full = Math.floor(seq.length / KV_BLOCK);
    extendChain(live, full);
    for (let i = live.published; i < full; i++) this.kv.publish(seq, i, live.chain);
    live.published = full;
  }
}

/** Hashes the request's blocks up to `blocks`. */
function extendChain(live: LiveRequest, blocks: number): void {
  const chain = live.chain!;
  for (let i = chain.length; i < blocks; i++) chain.push(Int32Array.from({ length: KV_BLOCK }, (_, j) => tokenAt(live, i * KV_BLOCK + j)));
}
