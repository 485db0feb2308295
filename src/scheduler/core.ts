/**
 * The serving loop: takes validated requests (token ids) and drives the scheduler state and the
 * runtime step by step — plan a step, place its adapters in slots, run the model, sample, emit the
 * events. It runs inside the engine worker (see worker.ts) and, for tests, in-process. Its parts
 * live beside it: adapter placement (adapter-placement.ts), prefix caching (prefix-book.ts), rows
 * under a grammar (constrained-rows.ts), events (event-encoder.ts), limits (limits.ts).
 *
 * A failure is confined to the requests it concerns: an adapter whose weights the slots refuse
 * fails that adapter's requests, a row whose logits are not finite fails that row; only an error
 * of the forward step itself fails the step's rows.
 */
import { LoraplexError } from '../errors.js';
import { Generation } from '../runtime/generation.js';
import { applyTokenMask, type GrammarSpec } from '../runtime/grammar/compiler.js';
import { KV_BLOCK } from '../runtime/kv-cache.js';
import type { LoraWeights } from '../runtime/lora-stacks.js';
import type { DecoderModel, StepRow } from '../runtime/model.js';
import { Sampler } from '../runtime/sampling.js';
import type { TextTokenizer } from '../runtime/tokenizer.js';
import { AdapterPlacement } from './adapter-placement.js';
import { ConstrainedRows, type PendingMask } from './constrained-rows.js';
import type { EngineStats } from './engine-stats.js';
import { errorEvent, EventEncoder } from './event-encoder.js';
import type { GrammarHost, MaskReply } from './grammar-host.js';
import { checkContext, checkPrompt, endOfSequenceIds } from './limits.js';
import type { LiveRequest } from './live-request.js';
import { PrefixBook } from './prefix-book.js';
import type { AdapterSpec, EngineEvent, ValidRequest } from './request.js';
import { StepTimeModel } from './step-time.js';
import { SchedulerState, type Dropped, type Job, type PlannedRow } from './state.js';

/** KV tokens reserved beyond a row's context; rows grow by this much at a time. */
const RESERVE_AHEAD = 64;
/** The fewest prompt tokens a step sized by time takes (so prompts progress on any machine). */
const MIN_PREFILL_CHUNK = 32;

export interface EngineConfig {
  maxBatchSize: number;
  maxBatchPrefillTokens: number;
  /** Target step time: a step's prompt tokens are sized from the measured step times (0 or absent: maxBatchPrefillTokens alone). */
  maxStepMs?: number;
  /** Backstop: the server refuses beyond its own admission limit before anything reaches here. */
  maxQueuedRequests: number;
  adapterCycleMs: number;
  adapterCacheBytes: number;
  /** How long a failed adapter load is remembered, failing its queued requests fast (default 5000). */
  adapterFailureTtlMs?: number;
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

export class EngineCore {
  readonly model: DecoderModel;
  readonly tokenizer: TextTokenizer | null;
  readonly state: SchedulerState;
  readonly adapters: AdapterPlacement;
  readonly eosIds: ReadonlySet<number>;
  private readonly emit: (events: EngineEvent[]) => void;
  private readonly log: (msg: string) => void;
  private readonly sampler: Sampler;
  private readonly encode: EventEncoder;
  private readonly prefix: PrefixBook;
  private readonly constrained: ConstrainedRows;
  private readonly live = new Map<number, LiveRequest>();
  /** Measured step times, which size each step's prompt tokens when maxStepMs > 0. */
  private readonly stepTime = new StepTimeModel();
  private readonly maxStepMs: number;
  private readonly maxBatchPrefillTokens: number;
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
    this.tokenizer = opts.tokenizer;
    this.emit = opts.emit;
    this.log = opts.log ?? (() => {});
    this.sampler = new Sampler(opts.model.spec.vocabSize);
    this.encode = new EventEncoder(opts.tokenizer, this.sampler);
    this.maxStepMs = opts.config.maxStepMs ?? 0;
    this.maxBatchPrefillTokens = opts.config.maxBatchPrefillTokens;
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
    this.adapters = new AdapterPlacement({
      lora: opts.model.lora,
      cacheBytes: opts.config.adapterCacheBytes,
      failureTtlMs: opts.config.adapterFailureTtlMs,
      load: opts.load,
      inUse: () => this.adapterKeysInUse(),
      settled: () => this.wake(),
      log: this.log,
    });
    this.prefix = new PrefixBook(opts.model.kv, opts.config.prefixCache);
    this.constrained = new ConstrainedRows(opts.grammar && opts.tokenizer ? opts.grammar : null, this.state, () => this.wake());
    this.eosIds = endOfSequenceIds(opts.model, opts.tokenizer);
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
    const grammar = req.grammar ? this.constrained.grammar() : null;
    if (!this.state.append(job)) {
      throw new LoraplexError('overloaded', `the server is overloaded: ${this.state.waiting} requests are waiting; retry later`, { retryAfterSeconds: 1 });
    }
    const gen = new Generation(
      prompt,
      req.sampling,
      { maxNewTokens: maxNew, eosIds: this.eosIds, stopTokenIds: new Set(req.stop.stopTokenIds), stopStrings: req.stop.stopStrings, ignoreEos: req.stop.ignoreEos, minTokens: req.stop.minTokens },
      this.tokenizer,
    );
    this.live.set(req.id, { req, job, gen, seq: null, adapterKey, announced: false, chain: this.prefix.chainFor(req), published: 0, cachedTokens: null });
    if (grammar && req.grammar) grammar.open(req.id, req.grammar);
    if (req.adapter) this.adapters.want(req.adapter);
  }

  /** Compiles a grammar on the grammar thread (cached); rejects with `invalid_grammar` naming what it refuses. */
  compileGrammar(spec: GrammarSpec, owner: string | null = null): Promise<void> {
    return this.constrained.compile(spec, owner);
  }

  cancel(id: number): void {
    if (!this.live.has(id)) return;
    this.state.cancel(id);
    this.wake();
  }

  /** Loads an adapter into the host cache ahead of use (admin preload). */
  preload(spec: AdapterSpec): Promise<void> {
    return this.adapters.preload(spec);
  }

  /**
   * Drops an adapter from the slots and the host cache, with the KV blocks its version (alone or
   * in a merge) computed, unless running rows use it.
   */
  unload(key: string): boolean {
    if (!this.adapters.unload(key)) return false;
    this.model.kv.forget((weights) => weights === key || weights.includes(key));
    return true;
  }

  private *adapterKeysInUse(): Iterable<string> {
    for (const live of this.live.values()) if (live.adapterKey) yield live.adapterKey;
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

  /** One scheduling step (plan → place → step → sample → emit); false when there was nothing to run. */
  async tick(): Promise<boolean> {
    const events: EngineEvent[] = [];
    const unparked = this.sampleArrived(events);
    const planned = this.plan(events);
    const rows = this.place(planned, events);
    if (rows.length === 0) {
      if (events.length > 0) this.emit(events);
      return planned.length > 0 || unparked > 0;
    }
    this.announce(rows, events);
    const t0 = performance.now();
    let t1 = t0;
    try {
      const out = await this.model.step(this.stepRows(rows));
      t1 = performance.now();
      this.stepTime.observe(rows.filter((r) => r.kind === 'decode').length, rows.reduce((n, r) => n + (r.kind === 'prefill' ? r.count : 0), 0), t1 - t0);
      this.forwardSeconds += (t1 - t0) / 1000;
      for (const row of rows) this.prefix.publish(this.live.get(row.job.id)!);
      await this.sampleStep(rows, out, t1 - t0, events);
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

  /** The scheduler's plan for this step; requests it dropped are retired, those it preempted suspended. */
  private plan(events: EngineEvent[]): PlannedRow[] {
    this.adapters.kickAbsent(this.state.wantedAdapters());
    this.prefix.collectPending(this.live.values());
    const { rows, dropped, preempted } = this.state.step(
      Date.now(),
      (key) => this.adapters.readiness(key),
      (job) => this.prefix.probe(this.live.get(job.id)!, job),
      (decodeRows) => (this.maxStepMs > 0 ? this.stepTime.prefillBudget(decodeRows, this.maxStepMs, MIN_PREFILL_CHUNK, this.maxBatchPrefillTokens) : Infinity),
    );
    for (const d of dropped) events.push(this.retire(d));
    for (const p of preempted) this.suspend(p.resumed);
    return rows;
  }

  /**
   * Starts the planned rows' sequences and makes sure their adapters sit in slots. Rows whose
   * adapter the slots refuse are failed (with every other request of that adapter, through the
   * cache's failure memory) and left out of the step; returns the rows that run.
   */
  private place(planned: PlannedRow[], events: EngineEvent[]): PlannedRow[] {
    const keys = new Set<string>();
    const started: PlannedRow[] = [];
    for (const row of planned) {
      const live = this.live.get(row.job.id)!;
      if (!live.seq && !this.startSequence(live, row)) {
        events.push(errorEvent(row.job.id, new Error(`request ${row.job.id}: its cached prefix went missing before its first step`)));
        this.release(live);
        continue;
      }
      started.push(row);
      if (live.adapterKey) keys.add(live.adapterKey);
    }
    const refused = this.adapters.place(keys);
    if (refused.size === 0) return started;
    const kept: PlannedRow[] = [];
    for (const row of started) {
      const live = this.live.get(row.job.id)!;
      const why = live.adapterKey ? refused.get(live.adapterKey) : undefined;
      if (why) {
        events.push(errorEvent(row.job.id, new LoraplexError('adapter_load_failed', `adapter ${live.req.adapter?.name} cannot be served: ${why.message}`, { param: 'model' })));
        this.release(live);
      } else kept.push(row);
    }
    return kept;
  }

  /** A request's first row (or first after a preemption): a new sequence with its cached prefix adopted. */
  private startSequence(live: LiveRequest, row: PlannedRow): boolean {
    const seq = this.model.newSequence();
    live.seq = seq;
    if (live.adapterKey) this.adapters.slots.pin(live.adapterKey);
    return this.prefix.adopt(live, seq, row.start);
  }

  private announce(rows: PlannedRow[], events: EngineEvent[]): void {
    this.lastBatchRows = rows.length;
    this.steps++;
    for (const row of rows) {
      const live = this.live.get(row.job.id)!;
      if (!live.announced) {
        live.announced = true;
        events.push({ t: 'running', id: row.job.id });
      }
    }
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
      return { seq: live.seq!, tokens, slot: live.adapterKey ? this.adapters.slots.slotOf(live.adapterKey)! : -1, logits: wantsPromptLogits(live, row) ? 'all' : row.sample ? 'last' : 'none' };
    });
  }

  // ---- sampling

  /**
   * Samples the step's rows. Unconstrained rows go first and never wait for masks; constrained
   * rows wait a short grace for theirs, and those still without one are parked.
   */
  private async sampleStep(rows: PlannedRow[], out: Awaited<ReturnType<DecoderModel['step']>>, forwardMs: number, events: EngineEvent[]): Promise<void> {
    const masks = this.constrained.ask(rows);
    const constrained: [PlannedRow, Float32Array][] = [];
    let r = 0;
    for (const row of rows) {
      const live = this.live.get(row.job.id)!;
      // A row that asked for prompt logprobs got logits for every token of its prefill chunk.
      const all = wantsPromptLogits(live, row);
      if (all) {
        const e = this.encode.promptLogprobs(live, row, out.logits, out.logitsRow[r], out.vocabSize);
        if (e) events.push(e);
      }
      const at = out.logitsRow[r] + (all ? row.count - 1 : 0);
      const logits = out.logits.subarray(at * out.vocabSize, (at + 1) * out.vocabSize);
      if (row.sample && masks.has(row.job.id)) constrained.push([row, logits]);
      else if (row.sample) this.sampleRow(row, logits, events);
      r++;
    }
    if (constrained.length === 0) return;
    if (events.length > 0) this.emit(events.splice(0));
    await this.constrained.grace(masks.values(), forwardMs);
    for (const [row, logits] of constrained) {
      const pending: PendingMask = masks.get(row.job.id)!;
      if (pending.reply) this.sampleRow(row, logits, events, pending.reply);
      else this.constrained.park(row, logits, pending.promise);
    }
  }

  /** Samples the parked rows whose masks have arrived. */
  private sampleArrived(events: EngineEvent[]): number {
    const arrived = this.constrained.arrived();
    for (const p of arrived) if (this.live.has(p.row.job.id)) this.sampleRow(p.row, p.logits, events, p.reply);
    return arrived.length;
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
          events.push(this.encode.end(live, 'stop'));
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
    if (grammar && !e.finishReason) this.constrained.accept(row.job.id, e.id);
    events.push(this.encode.token(row.job.id, e));
    if (e.finishReason) {
      events.push(this.encode.end(live, e.finishReason));
      this.release(live);
    }
  }

  // ---- leaving the batch

  /** A preempted request: its KV cache is freed; it resumes later by recomputing prompt + output. */
  private suspend(resumed: Job): void {
    const live = this.live.get(resumed.id);
    if (!live) return;
    live.job = resumed;
    if (live.seq) {
      this.model.freeSequence(live.seq);
      live.seq = null;
      if (live.adapterKey) this.adapters.slots.unpin(live.adapterKey);
    }
    this.preemptions++;
  }

  private release(live: LiveRequest): void {
    this.live.delete(live.job.id);
    this.constrained.close(live.job.id);
    this.state.finish(live.job.id);
    if (live.seq) {
      this.model.freeSequence(live.seq);
      if (live.adapterKey) this.adapters.slots.unpin(live.adapterKey);
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
        const why = d.job.adapter ? (this.adapters.cache.failure(d.job.adapter)?.message ?? 'unknown error') : 'unknown error';
        return errorEvent(id, new LoraplexError('adapter_load_failed', `adapter ${name} failed to load: ${why}`, { param: 'model' }));
      }
    }
  }

  stats(names: (key: string) => string = (k) => this.adapters.name(k)): EngineStats {
    const running = new Set<string>();
    const waiting = new Set<string>();
    for (const live of this.live.values()) {
      if (!live.adapterKey) continue;
      (this.state.isRunning(live.job.id) ? running : waiting).add(names(live.adapterKey));
    }
    const { cache, slots } = this.adapters;
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
      prefixCacheQueryTokens: this.prefix.queryTokens,
      prefixCacheHitTokens: this.prefix.hitTokens,
      cache: { ...cache.stats },
      slotLoads: slots.loads,
      slotMoves: slots.moves,
      runningAdapters: [...running].sort(),
      waitingAdapters: [...waiting].sort(),
      maxLora: this.model.lora.capacity,
      cachedAdapters: [...new Set(cache.cachedKeys().map(names))].sort(),
      slotAdapters: [...new Set(slots.occupants().map(names))].sort(),
      pinnedAdapters: [...new Set(slots.occupants().filter((k) => slots.isPinned(k)).map(names))].sort(),
      kvBlockSize: KV_BLOCK,
      grammar: this.constrained.stats(),
      grammarLateMasks: this.constrained.lateMasks,
    };
  }
}

/** A prefill chunk of a request that asked for prompt logprobs gets logits for each of its tokens. */
const wantsPromptLogits = (live: LiveRequest, row: PlannedRow): boolean =>
  row.kind === 'prefill' && live.req.promptLogprobs !== null && row.start + row.count <= live.req.promptIds.length;
