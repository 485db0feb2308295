/** What the engine reports about itself: queue, batch, KV cache, adapter residency, grammar thread. */
import type { CacheStats } from '../adapters/cache.js';
import type { GrammarHostStats } from './grammar-host.js';

export interface EngineStats {
  waiting: number;
  running: number;
  lastBatchRows: number;
  steps: number;
  /** Requests taken out of the batch to free KV cache (they resume by recomputation). */
  preemptions: number;
  /** Requests handed to the engine since start. */
  submitted: number;
  /** Requests cancelled while waiting / while running. */
  cancelledWaiting: number;
  cancelledRunning: number;
  /** Tokens sampled since start (all requests). */
  generatedTokens: number;
  forwardSeconds: number;
  loopSeconds: number;
  kvReservedTokens: number;
  /** Tokens held in the KV pool (blocks allocated to sequences). */
  kvUsedTokens: number;
  kvCapacity: number;
  /** Published KV blocks (held by requests or idle), and the idle ones among them. */
  kvCachedBlocks: number;
  kvIdleBlocks: number;
  /** Prompt tokens looked up in the prefix cache at admission, and those found there. */
  prefixCacheQueryTokens: number;
  prefixCacheHitTokens: number;
  cache: CacheStats;
  slotLoads: number;
  /** Swaps that moved a step's adapters into the lowest graph slots. */
  slotMoves: number;
  /** Adapter names with running rows / with waiting requests. */
  runningAdapters: string[];
  waitingAdapters: string[];
  /** Distinct adapters one batch can hold (the graph's adapter slots). */
  maxLora: number;
  /** Adapter names resident in the host cache, in graph slots, and in slots pinned by running rows. */
  cachedAdapters: string[];
  slotAdapters: string[];
  pinnedAdapters: string[];
  /** Tokens per KV block; kvCapacity / kvBlockSize blocks in all. */
  kvBlockSize: number;
  /** Grammar thread: replacements, rows failed for their grammar's cost, XGrammar memory, failed for good. */
  grammar: GrammarHostStats | null;
  /** Constrained rows that sat out a step because their mask was late. */
  grammarLateMasks: number;
}
