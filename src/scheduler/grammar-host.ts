/**
 * The engine's side of the grammar thread (grammar-worker.ts). Per constrained row: `open` when the
 * request arrives (its first mask is computed at once), `next` to take the reply for its next token
 * (usually computed during the forward pass), `accept` after sampling, `close` when it ends.
 * `compile` checks a spec (and warms the cache) before the HTTP layer answers, so a spec the
 * decoder refuses is a 4xx, never an error mid-stream.
 *
 * A spec the grammar thread has not compiled before is first compiled by a checker thread
 * (grammar-check-worker.ts) within `compileTimeoutMs` of that thread's CPU time, and a few of its
 * masks are computed there too, each within `maskTimeoutMs`: a grammar that needs more is refused
 * (400) and that thread replaced. Time spent waiting for a core on a busy machine does not count; a
 * check the busy machine cannot finish within the wall-clock limit fails with a retryable 503.
 * Specs that passed are remembered, so repeats go straight to the grammar thread; specs that were
 * refused are remembered too, so a repeat is refused at once instead of holding a checker again.
 * Each owner (an API key) has at most one spec in the checkers at a time, so one tenant sending
 * expensive schemas holds one checker, not all of them.
 *
 * The grammar thread is watched the same way: the message it is working on (the head of `work`)
 * may use `maskTimeoutMs` of its CPU time per token (plus `compileTimeoutMs` when it compiles). A
 * row over its budget, or one whose grammar crashes XGrammar, fails alone with its own error; the
 * thread is replaced by a fresh one, and every other open row is moved there — its grammar opened
 * again and the tokens it had accepted replayed — so the other rows only wait. The thread is also
 * replaced, the same way, when XGrammar's memory grows past `memoryLimitBytes` (WebAssembly memory
 * never shrinks). Only a thread that cannot even start fails the host for good; then every
 * constrained request is refused and `failed` says so (the server's /health reports it).
 *
 * Both threads are started with the engine, and `ready()` resolves once each has built its
 * vocabulary tables and compiled a first grammar, so no user's request pays for that.
 */
import type { Worker } from 'node:worker_threads';
import { LRUCache } from 'lru-cache';
import { LoraplexError, type WireError } from '../errors.js';
import { GrammarError, grammarKey, type GrammarSpec } from '../runtime/grammar/compiler.js';
import { WARM_UP_SPECS } from '../runtime/grammar/warm-up.js';
import { threadCpuMs } from '../util/thread-cpu.js';
import { WorkerPool } from '../util/worker-pool.js';
import { startWorker } from '../util/worker-url.js';

/** CPU time the checker may take to compile one spec (`--grammar-compile-timeout-ms`). */
export const DEFAULT_GRAMMAR_COMPILE_TIMEOUT_MS = 10_000;
/** CPU time the grammar thread may take for one row's next mask (`--grammar-mask-timeout-ms`). */
export const DEFAULT_GRAMMAR_MASK_TIMEOUT_MS = 200;
/** XGrammar memory after which the grammar thread is replaced (`--grammar-memory-mb`). */
export const DEFAULT_GRAMMAR_MEMORY_MB = 1024;
/** Masks the checker computes (along a pseudo-random path through the grammar) for a new spec. */
export const GRAMMAR_PROBE_STEPS = 12;
/** Checker threads (each owner uses at most one at a time). */
const CHECKERS = 2;

/** The request field a spec's errors name. */
export const specParam = (spec: GrammarSpec): string => (spec.type === 'json_schema' || spec.type === 'json_object' ? 'schema' : spec.type === 'tool_calls' ? 'tools' : spec.type === 'ebnf' ? 'grammar' : spec.type);

/** The checker threads' task map (see worker-protocol.ts): a spec passes (true) or its refusal is thrown. */
export interface GrammarCheckTasks {
  check: { arg: { spec: GrammarSpec }; result: boolean };
}

export interface GrammarWorkerInit {
  tokenizer: Record<string, unknown>;
  vocabSize: number;
  stopIds: number[];
  /** For the checker: CPU time one probed mask may take. */
  maskTimeoutMs?: number;
}

export type ToGrammarWorker =
  | { t: 'compile'; qid: number; spec: GrammarSpec }
  /** Opens a row; `tokens`: tokens it accepted on a replaced thread, replayed before its next mask. */
  | { t: 'open'; id: number; spec: GrammarSpec; tokens?: number[] }
  | { t: 'accept'; id: number; token: number }
  | { t: 'close'; id: number };

export type FromGrammarWorker =
  | { t: 'ready'; tid: number | null; memoryBytes: number }
  | { t: 'fatal'; error: WireError }
  | { t: 'compiled'; qid: number; error?: WireError; memoryBytes: number }
  /** A row's next mask; `terminated`: the grammar is complete (no further token); `error`: the row fails. */
  | { t: 'mask'; id: number; mask?: Int32Array; terminated?: boolean; error?: WireError; memoryBytes: number };

export type MaskReply = { mask: Int32Array } | { terminated: true } | { error: LoraplexError };

export interface GrammarHostOptions {
  compileTimeoutMs?: number;
  maskTimeoutMs?: number;
  /** Wall-clock limit of a check, queueing included (a busy machine's 503). */
  wallLimitMs?: number;
  memoryLimitBytes?: number;
  /** Called (for the log) when the grammar thread is replaced. */
  onReplace?: (why: string) => void;
}

export interface GrammarHostStats {
  /** Grammar threads replaced (over budget, crashed, or grown). */
  replacements: number;
  /** Rows failed because their grammar needed too much CPU per token or crashed XGrammar. */
  rowsFailed: number;
  /** XGrammar memory of the grammar thread, bytes. */
  memoryBytes: number;
  /** New specs sent to the checker. */
  checks: number;
  failed: boolean;
}

interface Deferred<T> {
  promise: Promise<T>;
  resolve(v: T): void;
}

function deferred<T>(): Deferred<T> {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

interface Row {
  spec: GrammarSpec;
  /** Tokens accepted so far (replayed when the row moves to a new thread). */
  tokens: number[];
  /** Replies the engine has still to take, in order. */
  untaken: Promise<MaskReply>[];
}

/** A message the thread owes a reply to; `reply` null: the reply is not wanted (a replayed row whose mask was taken already). */
type Work =
  | { kind: 'row'; id: number; reply: Deferred<MaskReply> | null; budgetMs: number }
  | { kind: 'compile'; qid: number; spec: GrammarSpec; reply: Deferred<WireError | null>; budgetMs: number };

interface Thread {
  worker: Worker;
  tid: number | null;
  ready: boolean;
  dead: boolean;
  work: Work[];
  /** The thread's CPU clock (ms) when it started on the head of `work`; null: not started (not ready yet). */
  headSince: number | null;
  /** Wall clock at the same moment (where no thread clock can be read). */
  headSinceWall: number;
  /** XGrammar's memory once the thread was ready (its vocabulary tables and warm-up grammars). */
  baselineBytes: number;
}

export class GrammarHost {
  private readonly init: GrammarWorkerInit;
  private thread!: Thread;
  private readonly checker: WorkerPool<GrammarCheckTasks>;
  private readonly compileTimeoutMs: number;
  private readonly maskTimeoutMs: number;
  private readonly wallLimitMs: number | undefined;
  private readonly memoryLimitBytes: number;
  private readonly onReplace: (why: string) => void;
  /** Specs the checker passed (their keys). */
  private readonly checked = new LRUCache<string, true>({ max: 1024 });
  /** Specs refused by the checker or the grammar thread: a repeat is refused at once. */
  private readonly refused = new LRUCache<string, LoraplexError>({ max: 1024 });
  /** Per owner: the end of its check in progress (owners check one spec at a time). */
  private readonly checking = new Map<string, Promise<unknown>>();
  private readonly rows = new Map<number, Row>();
  private nextQid = 1;
  private failure: LoraplexError | null = null;
  private readonly started: Deferred<void> = deferred();
  private watchdog: NodeJS.Timeout | null = null;
  private memoryBytes = 0;
  private replacements = 0;
  private rowsFailed = 0;
  private checks = 0;

  constructor(init: GrammarWorkerInit, opts: GrammarHostOptions = {}) {
    this.init = init;
    this.compileTimeoutMs = opts.compileTimeoutMs ?? DEFAULT_GRAMMAR_COMPILE_TIMEOUT_MS;
    this.maskTimeoutMs = opts.maskTimeoutMs ?? DEFAULT_GRAMMAR_MASK_TIMEOUT_MS;
    this.wallLimitMs = opts.wallLimitMs;
    this.memoryLimitBytes = opts.memoryLimitBytes ?? DEFAULT_GRAMMAR_MEMORY_MB * 2 ** 20;
    this.onReplace = opts.onReplace ?? (() => {});
    this.checker = new WorkerPool<GrammarCheckTasks>({
      from: import.meta.url,
      entry: 'grammar-check-worker',
      size: CHECKERS,
      workerData: { ...init, maskTimeoutMs: this.maskTimeoutMs },
      recycleHeapBytes: Math.min(this.memoryLimitBytes, 512 * 2 ** 20),
    });
    this.thread = this.startThread();
  }

  // ---- the grammar thread

  private startThread(): Thread {
    const worker = startWorker(import.meta.url, 'grammar-worker', { workerData: this.init });
    worker.unref();
    const thread: Thread = { worker, tid: null, ready: false, dead: false, work: [], headSince: null, headSinceWall: 0, baselineBytes: 0 };
    worker.on('message', (m: FromGrammarWorker) => this.onMessage(thread, m));
    worker.on('error', (err) => this.onCrash(thread, LoraplexError.from(err).message));
    worker.on('exit', (code) => this.onCrash(thread, `it exited (code ${code})`));
    return thread;
  }

  private onMessage(thread: Thread, m: FromGrammarWorker): void {
    if (thread.dead) return;
    switch (m.t) {
      case 'ready':
        thread.ready = true;
        thread.tid = m.tid;
        thread.baselineBytes = m.memoryBytes;
        this.memoryBytes = m.memoryBytes;
        this.started.resolve();
        this.startHead(thread);
        return;
      case 'fatal':
        this.onCrash(thread, m.error.message);
        return;
      case 'compiled': {
        const head = thread.work.shift();
        if (head?.kind !== 'compile' || head.qid !== m.qid) return this.onCrash(thread, `it answered compile ${m.qid} out of order`);
        head.reply.resolve(m.error ?? null);
        return this.afterReply(thread, m.memoryBytes);
      }
      case 'mask': {
        const head = thread.work.shift();
        if (head?.kind !== 'row' || head.id !== m.id) return this.onCrash(thread, `it answered row ${m.id} out of order`);
        head.reply?.resolve(m.error ? { error: LoraplexError.fromWire(m.error) } : m.terminated ? { terminated: true } : { mask: m.mask! });
        return this.afterReply(thread, m.memoryBytes);
      }
    }
  }

  private afterReply(thread: Thread, memoryBytes: number): void {
    this.memoryBytes = memoryBytes;
    // A limit near what a fresh thread needs would replace it over and over: it is never taken
    // below 128 MiB more than that.
    if (memoryBytes > Math.max(this.memoryLimitBytes, thread.baselineBytes + 128 * 2 ** 20)) {
      this.replace(thread, `its XGrammar memory reached ${Math.round(memoryBytes / 2 ** 20)} MiB (--grammar-memory-mb ${Math.round(this.memoryLimitBytes / 2 ** 20)})`, null);
      return;
    }
    this.startHead(thread);
  }

  /** The thread starts on the head of its work now: its budget counts from here. */
  private startHead(thread: Thread): void {
    if (!thread.ready || thread.work.length === 0) {
      thread.headSince = null;
      return;
    }
    thread.headSince = thread.tid === null ? null : threadCpuMs(thread.tid);
    thread.headSinceWall = performance.now();
    // The new head's budget may end before the timer set for the last one.
    if (this.watchdog) clearTimeout(this.watchdog);
    this.watchdog = null;
    this.armWatchdog();
  }

  /** CPU time (ms) the thread has spent on its head so far (wall time where no thread clock can be read). */
  private headUsed(thread: Thread): number {
    const now = thread.tid === null || thread.headSince === null ? null : threadCpuMs(thread.tid);
    return now === null || thread.headSince === null ? performance.now() - thread.headSinceWall : now - thread.headSince;
  }

  /** Checks the head's budget when it could first run out (a thread accrues at most 1 ms of CPU per ms). */
  private armWatchdog(): void {
    if (this.watchdog) return;
    const thread = this.thread;
    const head = thread.work[0];
    if (!thread.ready || !head) return;
    const left = head.budgetMs - this.headUsed(thread);
    if (left <= 0) {
      const what = head.kind === 'row' ? `a constrained row's next token needed more than ${this.maskTimeoutMs} ms of CPU time` : 'compiling a grammar took longer than its budget';
      this.replace(thread, what, head);
      return;
    }
    this.watchdog = setTimeout(() => {
      this.watchdog = null;
      this.armWatchdog();
    }, Math.ceil(left) + 1);
    this.watchdog.unref();
  }

  private onCrash(thread: Thread, why: string): void {
    if (thread.dead) return;
    if (!thread.ready) {
      thread.dead = true;
      void thread.worker.terminate();
      this.fail(new LoraplexError('engine_failed', `the grammar thread could not start: ${why}`));
      return;
    }
    this.replace(thread, `it failed: ${why}`, thread.work[0] ?? null);
  }

  /**
   * Replaces the thread. `culprit`: the work it was doing when it went over budget or crashed; its
   * row or compile fails alone (and its spec is refused from now on). Every other open row and
   * pending compile moves to the new thread.
   */
  private replace(thread: Thread, why: string, culprit: Work | null): void {
    if (thread.dead || thread !== this.thread) return;
    thread.dead = true;
    void thread.worker.terminate();
    if (this.watchdog) clearTimeout(this.watchdog);
    this.watchdog = null;
    this.replacements++;
    this.onReplace(why);
    const culpritRow = culprit?.kind === 'row' ? culprit.id : null;
    if (culprit) this.refuseCulprit(culprit, why);
    const next = this.startThread();
    this.thread = next;
    const owed = new Map<number, Deferred<MaskReply> | null>();
    for (const w of thread.work) {
      if (w === culprit) continue;
      if (w.kind === 'row') owed.set(w.id, w.reply);
      else this.post({ t: 'compile', qid: w.qid, spec: w.spec }, w);
    }
    for (const [id, row] of this.rows) {
      if (id === culpritRow) continue;
      this.post({ t: 'open', id, spec: row.spec, tokens: row.tokens }, { kind: 'row', id, reply: owed.get(id) ?? null, budgetMs: this.rowBudget(true, row.tokens.length) });
    }
  }

  private refuseCulprit(culprit: Work, why: string): void {
    const spec = culprit.kind === 'row' ? this.rows.get(culprit.id)?.spec : culprit.spec;
    if (!spec) return;
    const param = specParam(spec);
    const aborted = /Aborted\(\): (.*)$/s.exec(why);
    const error = new GrammarError(
      aborted
        ? `${param}: ${aborted[1]} (on this constraint); simplify it`
        : culprit.kind === 'row'
          ? `${param}: this constraint needed more than ${this.maskTimeoutMs} ms of CPU time to compute one token's mask (--grammar-mask-timeout-ms); simplify it`
          : `${param}: ${why}`,
      param,
    );
    this.refused.set(grammarKey(spec), error);
    if (culprit.kind === 'row') {
      this.rowsFailed++;
      culprit.reply?.resolve({ error });
    } else {
      culprit.reply.resolve(error.toWire());
    }
  }

  /** CPU budget of a row's message: a mask, plus a compile for an open, plus the replayed tokens. */
  private rowBudget(open: boolean, replayed = 0): number {
    return this.maskTimeoutMs * (1 + replayed) + (open ? this.compileTimeoutMs : 0);
  }

  private post(m: ToGrammarWorker, work?: Work): void {
    const thread = this.thread;
    if (work) {
      thread.work.push(work);
      if (thread.work.length === 1) this.startHead(thread);
    }
    thread.worker.postMessage(m);
  }

  private fail(err: LoraplexError): void {
    this.failure = err;
    this.started.resolve();
    for (const w of this.thread.work) {
      if (w.kind === 'compile') w.reply.resolve(err.toWire());
      else w.reply?.resolve({ error: err });
    }
    this.thread.work = [];
  }

  // ---- the engine's calls

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

  /** The grammar thread could not be started: constrained decoding is unavailable. */
  get failed(): boolean {
    return this.failure !== null;
  }

  stats(): GrammarHostStats {
    return { replacements: this.replacements, rowsFailed: this.rowsFailed, memoryBytes: this.memoryBytes, checks: this.checks, failed: this.failed };
  }

  /**
   * Compiles `spec` on the grammar thread (checked first if new); throws the error that refuses it.
   * `owner`: who asks (an API key's digest; null: anonymous), for the one-check-at-a-time rule.
   */
  async compile(spec: GrammarSpec, owner: string | null = null): Promise<void> {
    if (this.failure) throw this.failure;
    const key = grammarKey(spec);
    const refused = this.refused.get(key);
    if (refused) throw refused;
    if (!this.checked.has(key)) await this.check(spec, key, owner ?? '');
    const reply = deferred<WireError | null>();
    this.post({ t: 'compile', qid: this.nextQid++, spec }, { kind: 'compile', qid: this.nextQid - 1, spec, reply, budgetMs: this.compileTimeoutMs });
    const error = await reply.promise;
    if (error) throw LoraplexError.fromWire(error);
  }

  /** Runs the checker on a new spec, after the owner's check in progress; a refusal is remembered. */
  private async check(spec: GrammarSpec, key: string, owner: string): Promise<void> {
    const before = this.checking.get(owner);
    const run = (async () => {
      if (before) await before.catch(() => {});
      const again = this.refused.get(key);
      if (again) throw again;
      if (this.checked.has(key)) return;
      const param = specParam(spec);
      this.checks++;
      try {
        await this.checker.run('check', { spec }, {
          budgetMs: this.compileTimeoutMs,
          wallLimitMs: this.wallLimitMs,
          what: `compiling the ${param} constraint`,
          onTimeout: () => new GrammarError(`${param}: compiling this constraint and computing its first masks took longer than ${this.compileTimeoutMs} ms of CPU time (--grammar-compile-timeout-ms); simplify it`, param),
          onCrash: (why) => new GrammarError(`${param}: compiling this constraint failed (${why}); simplify it`, param),
        });
      } catch (err) {
        // A refusal of the spec itself is remembered; a busy machine's 503 is not.
        if (err instanceof LoraplexError && err.code === 'invalid_grammar') this.refused.set(key, err);
        throw err;
      }
      this.checked.set(key, true);
    })();
    this.checking.set(owner, run);
    try {
      await run;
    } finally {
      if (this.checking.get(owner) === run) this.checking.delete(owner);
    }
  }

  open(id: number, spec: GrammarSpec): void {
    const row: Row = { spec, tokens: [], untaken: [] };
    this.rows.set(id, row);
    this.expect(row, { t: 'open', id, spec }, this.rowBudget(true));
  }

  private expect(row: Row, m: ToGrammarWorker & { id: number }, budgetMs: number): void {
    const reply = deferred<MaskReply>();
    row.untaken.push(reply.promise);
    if (this.failure) reply.resolve({ error: this.failure });
    else this.post(m, { kind: 'row', id: m.id, reply, budgetMs });
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
    const row = this.rows.get(id);
    if (!row) return;
    row.tokens.push(token);
    this.expect(row, { t: 'accept', id, token }, this.rowBudget(false));
  }

  close(id: number): void {
    if (!this.rows.delete(id)) return;
    if (!this.failure) this.thread.worker.postMessage({ t: 'close', id } satisfies ToGrammarWorker);
  }

  async terminate(): Promise<void> {
    if (this.watchdog) clearTimeout(this.watchdog);
    this.thread.dead = true;
    await this.checker.close();
    await this.thread.worker.terminate();
  }
}
