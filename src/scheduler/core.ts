/**
 * The serving loop: takes validated requests (token ids), and drives the scheduler state and the
 * runtime step by step — plan a step, make sure its adapters sit in slots, run the model, sample,
 * emit token events. It runs inside the engine worker (see worker.ts) and, for tests, in-process.
 *
 * A failure is confined to the requests it concerns: an adapter whose weights the slots refuse
 * fails that adapter's requests, a row whose logits are not finite fails that row; only an error
 * of the forward step itself fails the step's rows.
 *
 * Prefix caching: each request's tokens (prompt, then output) are hashed block by block into a
 * chain seeded with its weights key (prefix-chain.ts). At admission the request adopts the longest
 * cached chain of its prompt and prefills the rest; after each step the blocks its rows completed
 * are published for later requests. The last prompt token is always computed (its logits start
 * the answer), and a request that wants prompt logprobs computes its whole prompt.
 */
import { AdapterCache, type CacheStats } from '../adapters/cache.js';
import { AdapterSlots } from '../adapters/slots.js';
import { LoraplexError, toWireError } from '../errors.js';
import { Generation, type FinishReason } from '../runtime/generation.js';
import { applyTokenMask, type GrammarSpec } from '../runtime/grammar/compiler.js';
import { KV_BLOCK, KvPool, type KvSequence } from '../runtime/kv-cache.js';
import { BASE_WEIGHTS, PrefixChain } from '../runtime/prefix-chain.js';
import type { LoraWeights } from '../runtime/lora-stacks.js';
import type { DecoderModel, StepRow } from '../runtime/model.js';
import { Sampler } from '../runtime/sampling.js';
import type { TextTokenizer } from '../runtime/tokenizer.js';
import type { GrammarHost, GrammarHostStats, MaskReply } from './grammar-host.js';
import type { AdapterSpec, EngineEvent, ValidRequest } from './request.js';
import { SchedulerState, type Dropped, type Job, type PlannedRow } from './state.js';

/** KV tokens reserved beyond a row's context; rows grow by this much at a time. */
const RESERVE_AHEAD = 64;

export interface EngineConfig {
  maxBatchSize: number;
  maxBatchPrefillTokens: number;
  /** Backstop: the server refuses beyond its own admission limit before anything reaches here. */
  maxQueuedRequests: number;
  adapterCycleMs: number;
  adapterCacheBytes: number;
  /** Reuse the KV of cached prompt prefixes (same weights, same tokens). */
  prefixCache: boolean;
  /** CPU-time budget for compiling one new grammar (default DEFAULT_GRAMMAR_COMPILE_TIMEOUT_MS). */
  grammarCompileTimeoutMs?: number;
  /** Wall-clock limit of that compile, queueing included (the server passes the request deadline): beyond it, 503 busy. */
  grammarCompileWallLimitMs?: number;
  /** CPU-time budget for one constrained row's next mask (default DEFAULT_GRAMMAR_MASK_TIMEOUT_MS). */
  grammarMaskTimeoutMs?: number;
  /** XGrammar memory of the grammar thread beyond which it is replaced (default DEFAULT_GRAMMAR_MEMORY_MB). */
  grammarMemoryMb?: number;
}

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

/** A constrained row whose mask was late: its logits wait for the mask, and the row sits out the plan. */
interface Parked {
  row: PlannedRow;
  logits: Float32Array;
  reply: MaskReply | null;
}

/** How long a step waits for masks still being computed when its forward pass ends: a quarter of the pass, within bounds. */
const maskGraceMs = (forwardMs: number): number => Math.min(50, Math.max(2, forwardMs / 4));

interface Live {
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

const errorEvent = (id: number, err: unknown): EngineEvent => ({ t: 'error', id, error: toWireError(err) });

export class EngineCore {
  readonly model: DecoderModel;
  readonly tokenizer: TextTokenizer | null;
  readonly state: SchedulerState;
  readonly cache: AdapterCache<AdapterSpec>;
  readonly slots: AdapterSlots;
  private readonly emit: (events: EngineEvent[]) => void;
  private readonly log: (msg: string) => void;
  private readonly sampler: Sampler;
  private readonly live = new Map<number, Live>();
  private readonly specs = new Map<string, AdapterSpec>();
  private readonly prefixCache: boolean;
  private readonly startGrammar: (() => GrammarHost) | null;
  private grammarHost: GrammarHost | null = null;
  private readonly parked = new Map<number, Parked>();
  private grammarLateMasks = 0;
  /** Hashes of prompt blocks that running prefills are computing (rebuilt every step). */
  private readonly pending = new Set<string>();
  private prefixQueryTokens = 0;
  private prefixHitTokens = 0;
  readonly eosIds: ReadonlySet<number>;
  private wakeUp: (() => void) | null = null;
  private stopped = false;
  private lastBatchRows = 0;
  private steps = 0;
  private preemptions = 0;
  private submitted = 0;
  private cancelledWaiting = 0;
  private cancelledRunning = 0;
  private generatedTokens = 0;
  /** Seconds spent in the model's forward steps and in the rest of the loop (sampling, events). */
  private forwardSeconds = 0;
  private loopSeconds = 0;

  constructor(opts: {
    model: DecoderModel;
    tokenizer: TextTokenizer | null;
    config: EngineConfig;
    load: (spec: AdapterSpec) => Promise<LoraWeights>;
    emit: (events: EngineEvent[]) => void;
    log?: (msg: string) => void;
    /** Starts the grammar thread (on the first constrained request); absent: constrained decoding is refused. */
    grammar?: () => GrammarHost;
  }) {
    this.model = opts.model;
    this.startGrammar = opts.grammar ?? null;
    this.tokenizer = opts.tokenizer;
    this.emit = opts.emit;
    this.log = opts.log ?? (() => {});
    this.sampler = new Sampler(opts.model.spec.vocabSize);
    this.state = new SchedulerState({
      maxBatchSize: opts.config.maxBatchSize,
      maxBatchPrefillTokens: opts.config.maxBatchPrefillTokens,
      maxActiveAdapters: opts.model.lora.capacity,
      maxQueued: opts.config.maxQueuedRequests,
      adapterCycleMs: opts.config.adapterCycleMs,
      kvCapacity: opts.model.kv.capacity,
      kvBlock: KV_BLOCK,
      reserveAhead: RESERVE_AHEAD,
    });
    this.cache = new AdapterCache<AdapterSpec>(opts.config.adapterCacheBytes, (spec) => opts.load(spec));
    this.slots = new AdapterSlots(opts.model.lora);
    this.eosIds = endOfSequenceIds(opts.model, opts.tokenizer);
    this.prefixCache = opts.config.prefixCache;
  }

  // ---- requests

  /** Queues a validated request; a request that breaks the engine's own limits gets an error event. */
  submit(req: ValidRequest): void {
    this.submitted++;
    try {
      this.admit(req);
    } catch (err) {
      this.emit([errorEvent(req.id, err)]);
    }
    this.wake();
  }

  private admit(req: ValidRequest): void {
    if (this.live.has(req.id)) throw new Error(`request id ${req.id} is already live`);
    const prompt = req.promptIds;
    // The server validated all of this; these checks keep a caller's bug from reaching the runtime.
    checkPrompt(prompt, this.model.spec.vocabSize);
    const maxNew = req.stop.maxNewTokens;
    checkContext(prompt.length, maxNew, this.model.maxPositions, this.model.kv.capacity);
    const now = Date.now();
    const adapterKey = req.adapter?.key ?? null;
    const job: Job = { id: req.id, adapter: adapterKey, promptLen: prompt.length, maxNewTokens: maxNew, arrival: now, deadline: now + req.timeoutMs, tenant: req.tenant ?? null };
    // (Before the job is queued: a grammar that cannot run refuses the request with nothing left behind.)
    const grammar = req.grammar ? this.grammar() : null;
    if (!this.state.append(job)) {
      throw new LoraplexError('overloaded', `the server is overloaded: ${this.state.waiting} requests are waiting; retry later`, { retryAfterSeconds: 1 });
    }
    const gen = new Generation(
      prompt,
      req.sampling,
      { maxNewTokens: maxNew, eosIds: this.eosIds, stopTokenIds: new Set(req.stop.stopTokenIds), stopStrings: req.stop.stopStrings, ignoreEos: req.stop.ignoreEos, minTokens: req.stop.minTokens },
      this.tokenizer,
    );
    const chain = this.prefixCache ? new PrefixChain(adapterKey ?? BASE_WEIGHTS, req.cachePartition) : null;
    this.live.set(req.id, { req, job, gen, seq: null, adapterKey, announced: false, chain, published: 0, cachedTokens: null });
    if (grammar && req.grammar) grammar.open(req.id, req.grammar);
    if (req.adapter) {
      this.specs.set(req.adapter.key, req.adapter);
      this.cache.lookup(req.adapter.key);
      this.kickLoad(req.adapter.key);
    }
  }

  private grammar(): GrammarHost {
    if (!this.grammarHost) {
      if (!this.startGrammar || !this.tokenizer) throw new LoraplexError('invalid_grammar', 'constrained decoding needs the model\'s tokenizer.json', { param: 'response_format' });
      this.grammarHost = this.startGrammar();
    }
    return this.grammarHost;
  }

  /** Compiles a grammar on the grammar thread (cached); throws `invalid_grammar` naming what it refuses. */
  compileGrammar(spec: GrammarSpec, owner: string | null = null): Promise<void> {
    try {
      return this.grammar().compile(spec, owner);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  cancel(id: number): void {
    if (!this.live.has(id)) return;
    this.state.cancel(id);
    this.wake();
  }

  // ---- adapters

  private kickLoad(key: string): void {
    const spec = this.specs.get(key);
    if (!spec) return;
    const p = this.cache.ensure(key, spec);
    if (p && this.cache.readiness(key) === 'loading') {
      p.then(
        () => this.wake(),
        (err: Error) => {
          this.log(`adapter ${spec.name} failed to load: ${err.message}`);
          this.wake();
        },
      );
    }
  }

  /** Loads an adapter into the host cache ahead of use (admin preload). */
  async preload(spec: AdapterSpec): Promise<void> {
    this.specs.set(spec.key, spec);
    const p = this.cache.ensure(spec.key, spec);
    if (!p) throw this.cache.failure(spec.key) ?? new LoraplexError('adapter_load_failed', `adapter ${spec.name} failed to load recently; retry shortly`);
    await p;
  }

  /**
   * Drops an adapter from the slots and the host cache, with the KV blocks its version (alone or
   * in a merge) computed, unless running rows use it.
   */
  unload(key: string): boolean {
    if (this.slots.isPinned(key)) return false;
    this.slots.remove(key);
    this.cache.delete(key);
    this.model.kv.forget((weights) => weights === key || weights.includes(key));
    return true;
  }

  // ---- prefix cache

  /** Token `p` of the request's sequence: its prompt, then its output. */
  private tokenAt(live: Live, p: number): number {
    const prompt = live.req.promptIds;
    return p < prompt.length ? prompt[p] : live.gen.output[p - prompt.length];
  }

  /** Hashes the request's blocks up to `blocks`. */
  private extendChain(live: Live, blocks: number): void {
    const chain = live.chain!;
    for (let i = chain.length; i < blocks; i++) chain.push(Int32Array.from({ length: KV_BLOCK }, (_, j) => this.tokenAt(live, i * KV_BLOCK + j)));
  }

  /** The scheduler's prefix probe: cached prompt tokens of a job about to be admitted, or null (wait a step). */
  private probePrefix(job: Job): number | null {
    const live = this.live.get(job.id)!;
    const chain = live.chain;
    if (!chain || live.req.promptLogprobs !== null) return 0;
    const full = Math.floor(job.promptLen / KV_BLOCK);
    this.extendChain(live, full);
    const usable = Math.floor((job.promptLen - 1) / KV_BLOCK);
    const hit = this.model.kv.matchPrefix(chain, usable);
    if (hit < usable && this.pending.has(chain.hash(hit))) return null;
    for (let i = hit; i < full; i++) this.pending.add(chain.hash(i));
    return hit * KV_BLOCK;
  }

  /** Prompt blocks the running prefills have still to compute. */
  private collectPending(): void {
    this.pending.clear();
    if (!this.prefixCache) return;
    for (const live of this.live.values()) {
      if (!live.seq || !live.chain) continue;
      const full = Math.min(live.chain.length, Math.floor(live.job.promptLen / KV_BLOCK));
      for (let i = live.published; i < full; i++) this.pending.add(live.chain.hash(i));
    }
  }

  /** Publishes the blocks the request's sequence has completed. */
  private publishBlocks(live: Live): void {
    const seq = live.seq;
    if (!live.chain || !seq) return;
    const full = Math.floor(seq.length / KV_BLOCK);
    this.extendChain(live, full);
    for (let i = live.published; i < full; i++) this.model.kv.publish(seq, i, live.chain);
    live.published = full;
  }

  // ---- the loop

  wake(): void {
    const w = this.wakeUp;
    this.wakeUp = null;
    w?.();
  }

  private sleep(ms: number | null): Promise<void> {
    return new Promise((resolve) => {
      const timer = ms === null ? null : setTimeout(() => this.wake(), ms);
      this.wakeUp = () => {
        if (timer) clearTimeout(timer);
        resolve();
      };
    });
  }

  stop(): void {
    this.stopped = true;
    this.wake();
  }

  /** Runs until stop(). */
  async run(): Promise<void> {
    while (!this.stopped) {
      const ran = await this.tick();
      if (!ran && !this.stopped) {
        // Nothing to run: sleep until a request, a cancel or a load arrives; poll while requests
        // wait (deadlines, adapter rotation).
        await this.sleep(this.state.waiting > 0 || this.state.runningCount > 0 ? 20 : null);
      }
    }
  }

  /** One scheduling step; false when there was nothing to run. */
  async tick(): Promise<boolean> {
    for (const key of this.state.wantedAdapters()) if (this.cache.readiness(key) === 'absent') this.kickLoad(key);
    const events: EngineEvent[] = [];
    const unparked = this.sampleParked(events);
    this.collectPending();
    const { rows: planned, dropped, preempted } = this.state.step(
      Date.now(),
      (key) => {
        const r = this.cache.readiness(key);
        return r === 'absent' ? 'loading' : r;
      },
      (job) => this.probePrefix(job),
    );
    for (const d of dropped) events.push(this.retire(d));
    for (const p of preempted) this.suspend(p.resumed);
    const rows = this.placeAdapters(planned, events);
    if (rows.length === 0) {
      if (events.length > 0) this.emit(events);
      return planned.length > 0 || unparked > 0;
    }
    this.lastBatchRows = rows.length;
    this.steps++;
    for (const row of rows) {
      const live = this.live.get(row.job.id)!;
      if (!live.announced) {
        live.announced = true;
        events.push({ t: 'running', id: row.job.id });
      }
    }
    const t0 = performance.now();
    let t1 = t0;
    try {
      const out = await this.model.step(this.stepRows(rows));
      t1 = performance.now();
      this.forwardSeconds += (t1 - t0) / 1000;
      for (const row of rows) this.publishBlocks(this.live.get(row.job.id)!);
      const replies = this.takeReplies(rows);
      const constrained: [PlannedRow, Float32Array][] = [];
      let r = 0;
      for (const row of rows) {
        const live = this.live.get(row.job.id)!;
        // A row that asked for prompt logprobs got logits for every token of its prefill chunk.
        const all = row.kind === 'prefill' && live.req.promptLogprobs !== null && row.start + row.count <= live.req.promptIds.length;
        if (all) this.promptLogprobs(live, row, out.logits, out.logitsRow[r], out.vocabSize, events);
        const at = out.logitsRow[r] + (all ? row.count - 1 : 0);
        const logits = out.logits.subarray(at * out.vocabSize, (at + 1) * out.vocabSize);
        if (row.sample && replies.has(row.job.id)) constrained.push([row, logits]);
        else if (row.sample) this.sampleRow(row, logits, events);
        r++;
      }
      if (constrained.length > 0) {
        // Unconstrained rows never wait for masks: their tokens go out first.
        if (events.length > 0) this.emit(events.splice(0));
        await this.maskGrace([...replies.values()], t1 - t0);
        for (const [row, logits] of constrained) {
          const pending = replies.get(row.job.id)!;
          if (pending.reply) this.sampleRow(row, logits, events, pending.reply);
          else this.park(row, logits, pending.promise);
        }
      }
    } catch (err) {
      this.log(`step failed: ${(err as Error).stack ?? String(err)}`);
      for (const row of rows) {
        const live = this.live.get(row.job.id);
        if (!live) continue;
        events.push(errorEvent(row.job.id, err));
        this.release(live);
      }
    }
    if (events.length > 0) this.emit(events);
    this.loopSeconds += (performance.now() - t1) / 1000;
    return true;
  }

  // ---- constrained rows' masks

  /** The mask replies of the constrained rows that sample in this step (usually computed during the forward pass), by row. */
  private takeReplies(rows: PlannedRow[]): Map<number, { promise: Promise<MaskReply>; reply: MaskReply | null }> {
    const out = new Map<number, { promise: Promise<MaskReply>; reply: MaskReply | null }>();
    const host = this.grammarHost;
    if (!host) return out;
    for (const row of rows) {
      if (!row.sample || !host.has(row.job.id)) continue;
      const pending = { promise: host.next(row.job.id), reply: null as MaskReply | null };
      void pending.promise.then((reply) => (pending.reply = reply));
      out.set(row.job.id, pending);
    }
    return out;
  }

  /** Waits for the masks still being computed, at most a short grace after the forward pass. */
  private async maskGrace(pending: { promise: Promise<MaskReply> }[], forwardMs: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const grace = new Promise<void>((resolve) => (timer = setTimeout(resolve, maskGraceMs(forwardMs))));
    await Promise.race([Promise.all(pending.map((p) => p.promise)), grace]);
    clearTimeout(timer);
  }

  /**
   * A constrained row whose mask is late sits out the next steps (so its grammar never holds back
   * the other rows) and samples from these logits when the mask arrives. A mask that never comes in
   * time fails the row: the grammar host bounds each mask's CPU time.
   */
  private park(row: PlannedRow, logits: Float32Array, reply: Promise<MaskReply>): void {
    const id = row.job.id;
    const parked: Parked = { row, logits: logits.slice(), reply: null };
    this.parked.set(id, parked);
    this.state.hold(id);
    this.grammarLateMasks++;
    void reply.then((r) => {
      parked.reply = r;
      this.wake();
    });
  }

  /** Samples the parked rows whose masks have arrived; they rejoin the plan. */
  private sampleParked(events: EngineEvent[]): number {
    let n = 0;
    for (const [id, parked] of this.parked) {
      if (!parked.reply) continue;
      this.parked.delete(id);
      this.state.unhold(id);
      if (this.live.has(id)) this.sampleRow(parked.row, parked.logits, events, parked.reply);
      n++;
    }
    return n;
  }

  /** Samples one row's next token; a row whose logits are not finite fails alone. */
  private sampleRow(row: PlannedRow, logits: Float32Array, events: EngineEvent[], grammar?: MaskReply): void {
    const live = this.live.get(row.job.id)!;
    let e;
    try {
      if (grammar) {
        if ('error' in grammar) throw grammar.error;
        if ('terminated' in grammar) {
          // The grammar ended on a token the row does not stop on (a stop id of the grammar's own): the answer is complete.
          events.push(this.endEvent(live, 'stop'));
          this.release(live);
          return;
        }
        if (applyTokenMask(logits, grammar.mask) === 0) throw new LoraplexError('internal_error', 'the grammar allows no token here');
      }
      e = live.gen.next(logits, this.sampler);
    } catch (err) {
      events.push(errorEvent(row.job.id, err));
      this.release(live);
      return;
    }
    this.generatedTokens++;
    if (grammar && !e.finishReason) this.grammarHost!.accept(row.job.id, e.id);
    const withLogprobs = e.logprob !== undefined;
    events.push({
      t: 'token',
      id: row.job.id,
      token: e.id,
      text: e.text,
      tokenText: withLogprobs ? this.piece(e.id) : undefined,
      logprob: e.logprob,
      top: e.top?.map((t) => ({ id: t.id, logprob: t.logprob, text: this.piece(t.id) })),
      special: e.special,
    });
    if (e.finishReason) {
      events.push(this.endEvent(live, e.finishReason));
      this.release(live);
    }
  }

  private endEvent(live: Live, finishReason: FinishReason): EngineEvent {
    return { t: 'end', id: live.req.id, finishReason, completionTokens: live.gen.output.length, promptTokens: live.req.promptIds.length, cachedTokens: live.cachedTokens ?? 0 };
  }

  /** Logprobs of the prompt tokens this chunk predicts (position p's logits predict token p + 1). */
  private promptLogprobs(live: Live, row: PlannedRow, logits: Float32Array, first: number, V: number, events: EngineEvent[]): void {
    const prompt = live.req.promptIds;
    const tokens: Extract<EngineEvent, { t: 'prompt_logprobs' }>['tokens'] = [];
    if (row.start === 0) tokens.push({ token: prompt[0], text: this.piece(prompt[0]), logprob: null, top: [] });
    for (let j = 0; j < row.count && row.start + j + 1 < prompt.length; j++) {
      const next = prompt[row.start + j + 1];
      const lp = this.sampler.logprobOf(logits.subarray((first + j) * V, (first + j + 1) * V), next, live.req.promptLogprobs!);
      tokens.push({ token: next, text: this.piece(next), logprob: lp.logprob, top: lp.top.map((t) => ({ id: t.id, logprob: t.logprob, text: this.piece(t.id) })) });
    }
    if (tokens.length > 0) events.push({ t: 'prompt_logprobs', id: live.req.id, from: row.start === 0 ? 0 : row.start + 1, tokens });
  }

  /** One token's text on its own (logprobs responses). */
  private piece(id: number): string {
    return this.tokenizer ? this.tokenizer.decode([id], false) : String(id);
  }

  /**
   * Makes sure the planned rows' adapters sit in slots. Rows whose adapter the slots refuse are
   * failed (with every other request of that adapter, through the cache's failure memory) and left
   * out of the step; returns the rows that run.
   */
  private placeAdapters(rows: PlannedRow[], events: EngineEvent[]): PlannedRow[] {
    const keys = new Set<string>();
    const started: PlannedRow[] = [];
    for (const row of rows) {
      const live = this.live.get(row.job.id)!;
      if (!live.seq && !this.startSequence(live, row)) {
        events.push(errorEvent(row.job.id, new Error(`request ${row.job.id}: its cached prefix went missing before its first step`)));
        this.release(live);
        continue;
      }
      started.push(row);
      if (live.adapterKey) keys.add(live.adapterKey);
    }
    rows = started;
    const refused = this.slots.acquire(keys, (key) => this.cache.get(key));
    if (refused.size === 0) return rows;
    for (const [key, err] of refused) {
      this.log(`adapter ${this.specs.get(key)?.name ?? key} was refused by the slots: ${err.message}`);
      this.cache.markFailed(key, err);
    }
    const kept: PlannedRow[] = [];
    for (const row of rows) {
      const live = this.live.get(row.job.id)!;
      if (live.adapterKey && refused.has(live.adapterKey)) {
        events.push(errorEvent(row.job.id, new LoraplexError('adapter_load_failed', `adapter ${live.req.adapter?.name} cannot be served: ${refused.get(live.adapterKey)!.message}`, { param: 'model' })));
        this.release(live);
      } else kept.push(row);
    }
    return kept;
  }

  /**
   * A request's first row (or first after a preemption): a new sequence with its cached prefix
   * adopted. The probe matched those blocks in this same step and nothing reclaims blocks before
   * the forward step, so false (the prefix is gone) would be a bug: the request fails alone.
   */
  private startSequence(live: Live, row: PlannedRow): boolean {
    const seq = this.model.newSequence();
    live.seq = seq;
    if (live.adapterKey) this.slots.pin(live.adapterKey);
    const cached = row.start / KV_BLOCK;
    if (cached > 0 && this.model.kv.adoptPrefix(seq, live.chain!, cached) !== cached) return false;
    live.published = cached;
    if (live.chain) {
      this.prefixQueryTokens += live.job.promptLen;
      this.prefixHitTokens += row.start;
    }
    live.cachedTokens ??= row.start;
    return true;
  }

  /** Turns planned rows into runtime rows: sequences, token slices, adapter slots. */
  private stepRows(rows: PlannedRow[]): StepRow[] {
    return rows.map((row) => {
      const live = this.live.get(row.job.id)!;
      const prompt = live.req.promptIds;
      let tokens: ArrayLike<number>;
      if (row.kind === 'decode') tokens = [live.gen.output[live.gen.output.length - 1]];
      else if (row.start + row.count <= prompt.length) tokens = prompt.subarray(row.start, row.start + row.count);
      else {
        // A resumed request re-reads its prompt followed by the tokens it had generated.
        const source = Int32Array.from([...prompt, ...live.gen.output]);
        tokens = source.subarray(row.start, row.start + row.count);
      }
      const all = row.kind === 'prefill' && live.req.promptLogprobs !== null && row.start + row.count <= prompt.length;
      return { seq: live.seq!, tokens, slot: live.adapterKey ? this.slots.slotOf(live.adapterKey)! : -1, logits: all ? 'all' : row.sample ? 'last' : 'none' };
    });
  }

  /** A preempted request: its KV cache is freed; it resumes later by recomputing prompt + output. */
  private suspend(resumed: Job): void {
    const live = this.live.get(resumed.id);
    if (!live) return;
    live.job = resumed;
    if (live.seq) {
      this.model.freeSequence(live.seq);
      live.seq = null;
      if (live.adapterKey) this.slots.unpin(live.adapterKey);
    }
    this.preemptions++;
  }

  private release(live: Live): void {
    this.live.delete(live.job.id);
    this.parked.delete(live.job.id);
    this.grammarHost?.close(live.job.id);
    this.state.finish(live.job.id);
    if (live.seq) {
      this.model.freeSequence(live.seq);
      if (live.adapterKey) this.slots.unpin(live.adapterKey);
    }
  }

  private retire(d: Dropped): EngineEvent {
    const live = this.live.get(d.job.id);
    if (live) this.release(live);
    const id = d.job.id;
    switch (d.reason) {
      case 'cancelled':
        if (d.wasRunning) this.cancelledRunning++;
        else this.cancelledWaiting++;
        return errorEvent(id, new LoraplexError('cancelled', 'the request was cancelled'));
      case 'timeout':
        return errorEvent(id, new LoraplexError('timeout', `the request did not finish within its deadline of ${live?.req.timeoutMs ?? '?'} ms`));
      case 'adapter_failed': {
        const name = live?.req.adapter?.name ?? 'the adapter';
        const why = d.job.adapter ? (this.cache.failure(d.job.adapter)?.message ?? 'unknown error') : 'unknown error';
        return errorEvent(id, new LoraplexError('adapter_load_failed', `adapter ${name} failed to load: ${why}`, { param: 'model' }));
      }
    }
  }

  stats(names: (key: string) => string = (k) => this.specs.get(k)?.name ?? k): EngineStats {
    const running = new Set<string>();
    const waiting = new Set<string>();
    for (const live of this.live.values()) {
      if (!live.adapterKey) continue;
      (this.state.isRunning(live.job.id) ? running : waiting).add(names(live.adapterKey));
    }
    return {
      waiting: this.state.waiting,
      running: this.state.runningCount,
      lastBatchRows: this.lastBatchRows,
      steps: this.steps,
      preemptions: this.preemptions,
      submitted: this.submitted,
      cancelledWaiting: this.cancelledWaiting,
      cancelledRunning: this.cancelledRunning,
      generatedTokens: this.generatedTokens,
      forwardSeconds: this.forwardSeconds,
      loopSeconds: this.loopSeconds,
      kvReservedTokens: this.state.reservedTokens,
      kvUsedTokens: this.model.kv.capacity - this.model.kv.freeTokens,
      kvCapacity: this.model.kv.capacity,
      kvCachedBlocks: this.model.kv.cachedBlocks,
      kvIdleBlocks: this.model.kv.idleBlocks,
      prefixCacheQueryTokens: this.prefixQueryTokens,
      prefixCacheHitTokens: this.prefixHitTokens,
      cache: { ...this.cache.stats },
      slotLoads: this.slots.loads,
      runningAdapters: [...running].sort(),
      waitingAdapters: [...waiting].sort(),
      maxLora: this.model.lora.capacity,
      cachedAdapters: [...new Set(this.cache.cachedKeys().map(names))].sort(),
      slotAdapters: [...new Set(this.slots.occupants().map(names))].sort(),
      pinnedAdapters: [...new Set(this.slots.occupants().filter((k) => this.slots.isPinned(k)).map(names))].sort(),
      kvBlockSize: KV_BLOCK,
      grammar: this.grammarHost?.stats() ?? null,
      grammarLateMasks: this.grammarLateMasks,
    };
  }
}

/** Every id that ends a sequence: generation_config's (possibly several) and the tokenizer's own. */
export function endOfSequenceIds(model: Pick<DecoderModel, 'spec'>, tokenizer: Pick<TextTokenizer, 'eosId'> | null): Set<number> {
  const ids = new Set(model.spec.eosTokenIds);
  if (tokenizer?.eosId != null) ids.add(tokenizer.eosId);
  return ids;
}

/** Prompt ids must be non-empty and inside the vocabulary. */
export function checkPrompt(prompt: ArrayLike<number>, vocabSize: number): void {
  if (prompt.length === 0) throw new LoraplexError('empty_prompt', 'the prompt is empty (no tokens)', { param: 'prompt' });
  for (let i = 0; i < prompt.length; i++) {
    const id = prompt[i];
    if (!Number.isInteger(id) || id < 0 || id >= vocabSize) {
      throw new LoraplexError('invalid_token', `prompt token id ${id} is outside the vocabulary (0..${vocabSize - 1})`, { param: 'prompt' });
    }
  }
}

/** The prompt plus the tokens to generate must fit the context and the KV cache (in whole blocks). */
export function checkContext(promptLen: number, maxNewTokens: number, maxPositions: number, kvCapacity: number): void {
  if (!Number.isSafeInteger(maxNewTokens) || maxNewTokens < 1 || promptLen + maxNewTokens > maxPositions) {
    throw new LoraplexError(
      'context_length_exceeded',
      `max_tokens + prompt tokens must be <= ${maxPositions} (the context length); given ${promptLen} prompt tokens and ${maxNewTokens} max_tokens`,
      { param: 'max_tokens' },
    );
  }
  if (KvPool.tokensFor(promptLen + maxNewTokens) > kvCapacity) {
    throw new LoraplexError(
      'context_length_exceeded',
      `max_tokens + prompt tokens must fit the KV cache of ${kvCapacity} tokens; given ${promptLen} prompt tokens and ${maxNewTokens} max_tokens`,
      { param: 'max_tokens' },
    );
  }
}
