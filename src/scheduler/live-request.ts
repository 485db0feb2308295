/** A request inside the engine: what it asked for, where the scheduler has it, and what it has produced. */
import type { Generation } from '../runtime/generation.js';
import type { KvSequence } from '../runtime/kv-cache.js';
import type { PrefixChain } from '../runtime/prefix-chain.js';
import type { ValidRequest } from './request.js';
import type { Job } from './state.js';

export interface LiveRequest {
  req: ValidRequest;
  /** The scheduler's view; replaced by the resumed job after a preemption. */
  job: Job;
  gen: Generation;
  seq: KvSequence | null;
  adapterKey: string | null;
  /** The 'running' event was sent. */
  announced: boolean;
  /** Block hashes of the request's tokens (null: prefix caching is off). */
  chain: PrefixChain | null;
  /** Blocks of `seq` adopted from the cache or published by it. */
  published: number;
  /** Prompt tokens found in the cache at the first admission. */
  cachedTokens: number | null;
}

/** Token `p` of the request's sequence: its prompt, then its output. */
export function tokenAt(live: LiveRequest, p: number): number {
  const prompt = live.req.promptIds;
  return p < prompt.length ? prompt[p] : live.gen.output[p - prompt.length];
}
