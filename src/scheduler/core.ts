/**
 * The serving loop: takes validated requests, tokenizes them, and drives the scheduler state and the
 * runtime step by step — plan a step, make sure its adapters sit in slots, run the model, sample,
 * emit token events. It runs inside the engine worker (see worker.ts) and, for tests, in-process.
 */
import { readAdapterChatTemplate } from '../adapters/peft.js';
import { AdapterCache } from '../adapters/cache.js';
import { SlotTable } from '../adapters/slots.js';
import { LoraplexError } from '../errors.js';
import type { ChatTemplate } from '../runtime/chat-template.js';
import { Generation } from '../runtime/generation.js';
import type { KvSequence } from '../runtime/kv-cache.js';
import { KV_BLOCK } from '../runtime/kv-cache.js';
import type { LoraWeights } from '../runtime/lora-slots.js';
import type { DecoderModel, StepRow } from '../runtime/model.js';
import { Sampler } from '../runtime/sampling.js';
import type { TextTokenizer } from '../runtime/tokenizer.js';
import type { AdapterSpec, EngineEvent, EngineRequest } from './request.js';
import { SchedulerState, type Dropped, type Job, type PlannedRow } from './state.js';

/** KV tokens reserved beyond a row's context; rows grow by this much at a time. */
const RESERVE_AHEAD = 64;

export interface EngineConfig {
  maxBatchSize: number;
  maxBatchPrefillTokens: number;
  maxQueuedRequests: number;
  adapterCycleMs: number;
  adapterCacheBytes: number;
}

export interface EngineStats {
  waiting: number;
  running: number;
  lastBatchRows: number;
  steps: number;
  /** Requests taken out of the batch to free KV cache (they resume by recomputation). */
  preemptions: number;
  forwardSeconds: number;
  loopSeconds: number;
  kvReservedTokens: number;
  /** Tokens held in the KV pool (blocks allocated to sequences). */
  kvUsedTokens: number;
  kvCapacity: number;
  cache: AdapterCache<AdapterSpec>['stats'];
  slotLoads: number;
  /** Adapter names with running rows / with waiting requests. */
  runningAdapters: string[];
  waitingAdapters: string[];
  maxLora: number;
}

interface Live {
  req: EngineRequest;
  /** The scheduler's view; replaced by the resumed job after a preemption. */
  job: Job;
  prompt: number[];
  gen: Generation;
  seq: KvSequence | null;
  adapterKey: string | null;
}

function errorEvent(id: number, err: unknown): EngineEvent {
  if (err instanceof LoraplexError) return { t: 'error', id, code: err.code, status: err.statusCode, type: err.type, message: err.message, param: err.param };
  const e = err as { code?: string; statusCode?: number; message?: string; param?: string | null };
  if (typeof e?.statusCode === 'number' && typeof e.code === 'string') {
    return { t: 'error', id, code: e.code, status: e.statusCode, type: e.statusCode < 500 ? 'invalid_request_error' : 'server_error', message: e.message ?? 'error', param: e.param ?? null };
  }
  return { t: 'error', id, code: 'internal_error', status: 500, type: 'server_error', message: `internal error: ${(err as Error)?.message ?? String(err)}`, param: null };
}

const reqError = (id: number, status: number, code: string, message: string, param: string | null = null, type = 'invalid_request_error'): EngineEvent => ({
  t: 'error',
  id,
  code,
  status,
  type,
  message,
  param,
});

export class EngineCore {
  readonly model: DecoderModel;
  readonly tokenizer: TextTokenizer | null;
  readonly state: SchedulerState;
  readonly cache: AdapterCache<AdapterSpec>;
  readonly slots: SlotTable;
  private readonly emit: (events: EngineEvent[]) => void;
  private readonly log: (msg: string) => void;
  private readonly sampler: Sampler;
  private readonly live = new Map<number, Live>();
  private readonly specs = new Map<string, AdapterSpec>();
  private readonly templates = new Map<string, ChatTemplate | null>();
  private readonly eosIds: Set<number>;
  private wakeUp: (() => void) | null = null;
  private stopped = false;
  private lastBatchRows = 0;
  private steps = 0;
  private preemptions = 0;
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
  }) {
    this.model = opts.model;
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
    this.slots = new SlotTable(opts.model.lora);
    this.eosIds = new Set(opts.model.spec.eosTokenIds);
    if (opts.tokenizer?.eosId != null) this.eosIds.add(opts.tokenizer.eosId);
  }

  // ---- requests

  /** Validates, tokenizes and queues a request; problems come back as an error event. */
  submit(req: EngineRequest): void {
    try {
      this.admit(req);
    } catch (err) {
      this.emit([errorEvent(req.id, err)]);
    }
    this.wake();
  }

  private admit(req: EngineRequest): void {
    if (this.live.has(req.id)) throw new Error(`request id ${req.id} is already live`);
    const prompt = this.tokenize(req);
    const V = this.model.spec.vocabSize;
    if (prompt.length === 0) {
      this.emit([reqError(req.id, 400, 'empty_prompt', 'the prompt is empty (no tokens)', 'prompt')]);
      return;
    }
    const bad = prompt.find((id) => !Number.isInteger(id) || id < 0 || id >= V);
    if (bad !== undefined) {
      this.emit([reqError(req.id, 400, 'invalid_token', `prompt token id ${bad} is outside the vocabulary (0..${V - 1})`, 'prompt')]);
      return;
    }
    const ctx = this.model.maxPositions;
    const maxNew = req.maxNewTokens ?? ctx - prompt.length;
    if (maxNew < 1 || prompt.length + maxNew > ctx) {
      this.emit([
        reqError(
          req.id,
          400,
          'context_length_exceeded',
          `max_tokens + prompt tokens must be <= ${ctx} (the context length); given ${prompt.length} prompt tokens and ${req.maxNewTokens ?? 'no'} max_tokens`,
          'max_tokens',
        ),
      ]);
      return;
    }
    const need = this.state.reservation({ promptLen: prompt.length, maxNewTokens: maxNew });
    if (need > this.model.kv.capacity) {
      this.emit([
        reqError(req.id, 400, 'context_length_exceeded', `max_tokens + prompt tokens must fit the KV cache of ${this.model.kv.capacity} tokens; given ${prompt.length} prompt tokens and ${maxNew} max_tokens`, 'max_tokens'),
      ]);
      return;
    }
    const now = Date.now();
    const adapterKey = req.adapter?.key ?? null;
    const job: Job = { id: req.id, adapter: adapterKey, promptLen: prompt.length, maxNewTokens: maxNew, arrival: now, deadline: now + req.timeoutMs };
    if (!this.state.append(job)) {
      this.emit([reqError(req.id, 429, 'overloaded', `the server is overloaded: ${this.state.waiting} requests are waiting (--max-queued-requests); retry later`, null, 'rate_limit_error')]);
      return;
    }
    const gen = new Generation(
      prompt,
      req.sampling,
      { maxNewTokens: maxNew, eosIds: this.eosIds, stopTokenIds: new Set(req.stopTokenIds), stopStrings: req.stopStrings, ignoreEos: req.ignoreEos },
      this.tokenizer,
    );
    this.live.set(req.id, { req, job, prompt, gen, seq: null, adapterKey });
    if (req.adapter) {
      this.specs.set(req.adapter.key, req.adapter);
      this.cache.lookup(req.adapter.key);
      this.kickLoad(req.adapter.key);
    }
    this.emit([{ t: 'start', id: req.id, promptTokens: prompt.length, promptIds: req.returnPromptIds ? prompt : undefined }]);
  }

  private tokenize(req: EngineRequest): number[] {
    const p = req.prompt;
    if (p.kind === 'ids') return p.ids;
    if (!this.tokenizer) throw new LoraplexError('this model has no tokenizer.json: send token ids', { code: 'no_tokenizer', statusCode: 400, type: 'invalid_request_error', param: 'prompt' });
    if (p.kind === 'text') return this.tokenizer.encode(p.text);
    const template = this.templateFor(req.adapter) ?? this.tokenizer.chatTemplate;
    if (!template) {
      throw new LoraplexError('this model has no chat template (tokenizer_config.json chat_template); use the completions API', {
        code: 'no_chat_template',
        statusCode: 400,
        type: 'invalid_request_error',
        param: 'messages',
      });
    }
    return this.tokenizer.encode(template.render(p.messages, { addGenerationPrompt: p.addGenerationPrompt, tools: p.tools }), false);
  }

  /** An adapter's own chat template wins over the base model's (LoRAX behaviour). */
  private templateFor(adapter: AdapterSpec | null): ChatTemplate | null {
    if (!adapter || adapter.kind !== 'single') return null;
    if (!this.templates.has(adapter.key)) this.templates.set(adapter.key, readAdapterChatTemplate(adapter.dir));
    return this.templates.get(adapter.key)!;
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
    if (!p) throw this.cache.failure(spec.key) ?? new Error('adapter load failed recently');
    await p;
  }

  /** Drops an adapter from the slots and the host cache, unless running rows use it. */
  unload(key: string): boolean {
    if (this.slots.isPinned(key)) return false;
    this.slots.remove(key);
    this.cache.delete(key);
    this.templates.delete(key);
    return true;
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
    const { rows, dropped, preempted } = this.state.step(Date.now(), (key) => {
      const r = this.cache.readiness(key);
      return r === 'absent' ? 'loading' : r;
    });
    if (dropped.length > 0) this.emit(dropped.map((d) => this.retire(d)));
    for (const p of preempted) this.suspend(p.resumed);
    if (rows.length === 0) return false;
    this.lastBatchRows = rows.length;
    this.steps++;
    const events: EngineEvent[] = [];
    const t0 = performance.now();
    let t1 = t0;
    try {
      const stepRows = this.prepare(rows);
      const out = await this.model.step(stepRows);
      t1 = performance.now();
      this.forwardSeconds += (t1 - t0) / 1000;
      let r = 0;
      for (const row of rows) {
        const live = this.live.get(row.job.id)!;
        if (row.sample) {
          const at = out.logitsRow[r];
          const logits = out.logits.subarray(at * out.vocabSize, (at + 1) * out.vocabSize);
          const e = live.gen.next(logits, this.sampler);
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
            events.push({ t: 'end', id: row.job.id, finishReason: e.finishReason, completionTokens: live.gen.output.length, promptTokens: live.prompt.length });
            this.release(live);
          }
        }
        r++;
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

  /** One token's text on its own (logprobs responses). */
  private piece(id: number): string {
    return this.tokenizer ? this.tokenizer.decode([id], false) : String(id);
  }

  /** Turns planned rows into runtime rows: sequences, token slices, adapter slots. */
  private prepare(rows: PlannedRow[]): StepRow[] {
    const keys = new Set<string>();
    for (const row of rows) {
      const live = this.live.get(row.job.id)!;
      if (!live.seq) {
        live.seq = this.model.newSequence();
        if (live.adapterKey) this.slots.pin(live.adapterKey);
      }
      if (live.adapterKey) keys.add(live.adapterKey);
    }
    this.slots.acquire(keys, (key) => this.cache.get(key));
    return rows.map((row) => {
      const live = this.live.get(row.job.id)!;
      // A resumed request re-reads its prompt followed by the tokens it had generated.
      const source = row.start + row.count <= live.prompt.length ? live.prompt : live.prompt.concat(live.gen.output);
      const tokens = row.kind === 'prefill' ? source.slice(row.start, row.start + row.count) : [live.gen.output[live.gen.output.length - 1]];
      return { seq: live.seq!, tokens, slot: live.adapterKey ? this.slots.slotOf(live.adapterKey)! : -1, logits: row.sample ? 'last' : 'none' };
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
        return reqError(id, 499, 'cancelled', 'the request was cancelled');
      case 'timeout':
        return reqError(id, 504, 'timeout', `the request did not finish within its deadline of ${live?.req.timeoutMs ?? '?'} ms`, null, 'server_error');
      case 'adapter_failed': {
        const name = live?.req.adapter?.name ?? 'the adapter';
        const why = d.job.adapter ? (this.cache.failure(d.job.adapter)?.message ?? 'unknown error') : 'unknown error';
        return reqError(id, 424, 'adapter_load_failed', `adapter ${name} failed to load: ${why}`, 'model', 'server_error');
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
      forwardSeconds: this.forwardSeconds,
      loopSeconds: this.loopSeconds,
      kvReservedTokens: this.state.reservedTokens,
      kvUsedTokens: this.model.kv.capacity - this.model.kv.freeTokens,
      kvCapacity: this.model.kv.capacity,
      cache: { ...this.cache.stats },
      slotLoads: this.slots.loads,
      runningAdapters: [...running].sort(),
      waitingAdapters: [...waiting].sort(),
      maxLora: this.model.lora.capacity,
    };
  }

}
