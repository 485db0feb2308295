/**
 * The engine's side of the grammar thread (grammar-worker.ts). Per constrained row: `open` when the
 * request arrives (its first mask is computed at once), `mask` before each of its tokens is sampled
 * (usually ready: it was computed during the forward pass), `accept` after, `close` when it ends.
 * `compile` checks a spec (and warms the cache) before the HTTP layer answers, so a spec the
 * decoder refuses is a 4xx, never an error mid-stream.
 *
 * A spec the grammar thread has not compiled before is first compiled by a checker thread
 * (grammar-check-worker.ts) within `compileTimeoutMs` of that thread's CPU time: a grammar that
 * needs more is refused there (400), and that thread replaced, so one request's grammar can delay
 * the other constrained rows' masks by at most that budget (the grammar thread compiles it again, as
 * fast as the checker did), never stall them. Time the checker spends waiting for a core on a busy
 * machine does not count; a compile the busy machine cannot finish within the wall-clock limit
 * fails with a retryable 503. Specs that passed are remembered, so repeats go straight to the
 * grammar thread.
 *
 * Both threads are started with the engine, and `ready()` resolves once each has built its
 * vocabulary tables and compiled a first grammar, so no user's request pays for that.
 */
import type { Worker } from 'node:worker_threads';
import { LRUCache } from 'lru-cache';
import { LoraplexError, type WireError } from '../errors.js';
import { GrammarError, grammarKey, type GrammarSpec } from '../runtime/grammar/compiler.js';
import { WARM_UP_SPECS } from '../runtime/grammar/warm-up.js';
import { WorkerPool } from '../util/worker-pool.js';
import { startWorker } from '../util/worker-url.js';

/** CPU time the checker may take to compile one spec (`--grammar-compile-timeout-ms`). */
export const DEFAULT_GRAMMAR_COMPILE_TIMEOUT_MS = 10_000;

/** The request field a spec's compile errors name. */
const specParam = (spec: GrammarSpec): string => (spec.type === 'json_schema' || spec.type === 'json_object' ? 'schema' : spec.type === 'tool_calls' ? 'tools' : spec.type === 'ebnf' ? 'grammar' : spec.type);

export interface GrammarWorkerInit {
  tokenizer: Record<string, unknown>;
  vocabSize: number;
  stopIds: number[];
}

export type ToGrammarWorker =
  | { t: 'compile'; qid: number; spec: GrammarSpec }
  | { t: 'open'; id: number; spec: GrammarSpec }
  | { t: 'accept'; id: number; token: number }
  | { t: 'close'; id: number };

export type FromGrammarWorker =
  | { t: 'ready' }
  | { t: 'fatal'; error: WireError }
  | { t: 'compiled'; qid: number; error?: WireError }
  /** A row's next mask; `terminated`: the grammar is complete (no further token); `error`: the row fails. */
  | { t: 'mask'; id: number; mask?: Int32Array; terminated?: boolean; error?: WireError };

export type MaskReply = { mask: Int32Array } | { terminated: true } | { error: LoraplexError };

interface Deferred<T> {
  promise: Promise<T>;
  resolve(v: T): void;
}

function deferred<T>(): Deferred<T> {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

export class GrammarHost {
  private readonly worker: Worker;
  private readonly checker: WorkerPool;
  private readonly compileTimeoutMs: number;
  private readonly wallLimitMs: number | undefined;
  /** Specs the checker compiled in time (their keys). */
  private readonly checked = new LRUCache<string, true>({ max: 1024 });
  private readonly compiles = new Map<number, Deferred<WireError | null>>();
  /** Per open row: replies the worker has still to send, and replies the engine has still to take, in order. */
  private readonly rows = new Map<number, { unsent: Deferred<MaskReply>[]; untaken: Promise<MaskReply>[] }>();
  private nextQid = 1;
  private failure: LoraplexError | null = null;
  private readonly started: Deferred<void> = deferred();

  constructor(init: GrammarWorkerInit, opts: { compileTimeoutMs?: number; wallLimitMs?: number } = {}) {
    this.compileTimeoutMs = opts.compileTimeoutMs ?? DEFAULT_GRAMMAR_COMPILE_TIMEOUT_MS;
    this.wallLimitMs = opts.wallLimitMs;
    this.checker = new WorkerPool({ from: import.meta.url, entry: 'grammar-check-worker', size: 1, workerData: init });
    this.worker = startWorker(import.meta.url, 'grammar-worker', { workerData: init });
    this.worker.unref();
    this.worker.on('message', (m: FromGrammarWorker) => this.onMessage(m));
    this.worker.on('error', (err) => this.fail(LoraplexError.from(err)));
  }

  private onMessage(m: FromGrammarWorker): void {
    switch (m.t) {
      case 'ready':
        this.started.resolve();
        return;
      case 'fatal':
        this.fail(LoraplexError.fromWire(m.error));
        return;
      case 'compiled': {
        const d = this.compiles.get(m.qid);
        this.compiles.delete(m.qid);
        d?.resolve(m.error ?? null);
        return;
      }
      case 'mask': {
        const d = this.rows.get(m.id)?.unsent.shift();
        if (!d) return;
        d.resolve(m.error ? { error: LoraplexError.fromWire(m.error) } : m.terminated ? { terminated: true } : { mask: m.mask! });
        return;
      }
    }
  }

  private fail(err: LoraplexError): void {
    this.failure = new LoraplexError('engine_failed', `the grammar thread failed: ${err.message}`);
    this.started.resolve();
    for (const d of this.compiles.values()) d.resolve(this.failure.toWire());
    this.compiles.clear();
    for (const row of this.rows.values()) for (const d of row.unsent.splice(0)) d.resolve({ error: this.failure });
  }

  /**
   * Resolves once both threads are ready: each has built its tables and compiled the warm-up specs
   * (which need no check). Rejects when either cannot start.
   */
  async ready(): Promise<void> {
    await this.started.promise;
    if (this.failure) throw this.failure;
    await this.checker.ready();
    for (const spec of WARM_UP_SPECS) this.checked.set(grammarKey(spec), true);
  }

  /** Compiles `spec` on the grammar thread; throws the error that refuses it. */
  async compile(spec: GrammarSpec): Promise<void> {
    if (this.failure) throw this.failure;
    const key = grammarKey(spec);
    if (!this.checked.has(key)) {
      const param = specParam(spec);
      await this.checker.run<boolean>({ spec }, {
        budgetMs: this.compileTimeoutMs,
        wallLimitMs: this.wallLimitMs,
        what: `compiling the ${param} constraint`,
        onTimeout: () => new GrammarError(`${param}: compiling this constraint took longer than ${this.compileTimeoutMs} ms of CPU time (--grammar-compile-timeout-ms); simplify it`, param),
        onCrash: (why) => new GrammarError(`${param}: compiling this constraint failed (${why})`, param),
      });
      this.checked.set(key, true);
    }
    const qid = this.nextQid++;
    const d = deferred<WireError | null>();
    this.compiles.set(qid, d);
    this.worker.postMessage({ t: 'compile', qid, spec } satisfies ToGrammarWorker);
    const error = await d.promise;
    if (error) throw LoraplexError.fromWire(error);
  }

  open(id: number, spec: GrammarSpec): void {
    this.rows.set(id, { unsent: [], untaken: [] });
    this.expect(id);
    this.worker.postMessage({ t: 'open', id, spec } satisfies ToGrammarWorker);
  }

  private expect(id: number): void {
    const row = this.rows.get(id)!;
    const d = deferred<MaskReply>();
    row.untaken.push(d.promise);
    if (this.failure) d.resolve({ error: this.failure });
    else row.unsent.push(d);
  }

  /** Whether `id` is a constrained row. */
  has(id: number): boolean {
    return this.rows.has(id);
  }

  /** The reply for the row's next token (once per open/accept, in order). */
  next(id: number): Promise<MaskReply> {
    const reply = this.rows.get(id)?.untaken.shift();
    if (!reply) throw new Error(`grammar row ${id} has no reply pending`);
    return reply;
  }

  accept(id: number, token: number): void {
    if (!this.rows.has(id)) return;
    this.expect(id);
    this.worker.postMessage({ t: 'accept', id, token } satisfies ToGrammarWorker);
  }

  close(id: number): void {
    if (!this.rows.delete(id)) return;
    this.worker.postMessage({ t: 'close', id } satisfies ToGrammarWorker);
  }

  async terminate(): Promise<void> {
    await this.checker.close();
    await this.worker.terminate();
  }
}
