/**
 * A pool of worker threads for work that must not run on the HTTP event loop or the engine thread
 * (tokenizing, rendering chat templates, compiling grammars, validating uploads). Each task has two
 * limits, for two different failures:
 *
 * - a **work budget**, counted in the CPU time of the worker thread running it (read from procfs,
 *   see thread-cpu.ts): a task that uses more is too expensive, whatever else the machine is doing,
 *   and fails with the caller's error (a 4xx naming the budget). Time spent waiting for a core, as
 *   on a machine whose cores are saturated by other work, does not count. Where no thread clock can
 *   be read the budget is counted in wall time, as a plain timeout.
 * - a **wall-clock limit**, from submission (queueing included): a task not done by then fails with
 *   `busy` (503 with Retry-After), retryable, never blaming the input; the machine is too busy.
 *
 * Either way the worker is terminated (V8 stops it wherever it is, even in an endless loop) and
 * replaced. A worker that dies (out of memory, process.exit, an uncaught error) fails only its own
 * task; tasks queued behind it run on its replacement. A worker whose memory grew past
 * `recycleHeapBytes` after a task is replaced, so one huge request does not keep its memory for good.
 *
 * Tasks are typed by a task map (worker-protocol.ts): `run(kind, arg)` takes that kind's argument
 * and resolves to its result; the worker serves the same map with `serve` (worker-task.ts). Errors
 * cross as WireError and come back as LoraplexError with their code.
 */
import type { Worker, WorkerOptions } from 'node:worker_threads';
import { LoraplexError } from '../errors.js';
import { threadCpuMs } from './thread-cpu.js';
import type { TaskKind, TaskMap, TaskMessage, WorkerMessage } from './worker-protocol.js';
import { startWorker } from './worker-url.js';

/** Seconds a client is told to wait before retrying a task the busy machine could not finish. */
const BUSY_RETRY_AFTER_SECONDS = 5;

/** The default wall-clock limit of a task with work budget `budgetMs`: a helper thread that gets a tenth of a core still finishes a task within budget. */
const defaultWallLimitMs = (budgetMs: number): number => Math.max(60_000, 30 * budgetMs);

export interface WorkerPoolOptions {
  /** Module URL next to which the worker entry file sits, and its base name. */
  from: string;
  entry: string;
  size: number;
  workerData?: unknown;
  resourceLimits?: WorkerOptions['resourceLimits'];
  /** Replace a worker whose memory (V8 heap and what its worker reports outside it) exceeds this after a task (default 256 MiB). */
  recycleHeapBytes?: number;
}

export interface TaskOptions {
  /** CPU time of its worker thread the task may use (wall time where the thread's clock cannot be read). */
  budgetMs: number;
  /** The error a task that overran its budget fails with (the input is too expensive). */
  onTimeout: () => LoraplexError;
  /** Wall-clock time from submission, queueing included, before the task fails with `busy` (default defaultWallLimitMs(budgetMs)). */
  wallLimitMs?: number;
  /** What the task does, for the `busy` error ("tokenizing the prompt"). */
  what?: string;
  /** The error a task whose worker died fails with (out of memory, typically); default internal_error naming the task and why. */
  onCrash?: (why: string) => LoraplexError;
  transfer?: ArrayBuffer[];
}

interface Pending {
  id: number;
  kind: string;
  arg: unknown;
  opts: TaskOptions;
  /** performance.now() at submission, and the wall-clock deadline. */
  submitted: number;
  deadline: number;
  /** performance.now() when a worker started it. */
  started: number;
  /** CPU clock of the worker running it when it started (ms); null without a clock. */
  cpuStart: number | null;
  /** CPU time it has used, as last read (ms). */
  cpuUsed: number;
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
}

interface Slot {
  worker: Worker;
  busy: Pending | null;
  timer: NodeJS.Timeout | null;
  ready: boolean;
  /** The worker's kernel thread id, when it has one (Linux): its CPU clock is read through it. */
  tid: number | null;
}

/** A pool of workers that serve the task map `Tasks` (see worker-protocol.ts). */
export class WorkerPool<Tasks extends TaskMap<Tasks>> {
  private readonly opts: WorkerPoolOptions;
  private readonly slots: Slot[] = [];
  private readonly queue: Pending[] = [];
  private nextId = 1;
  private closed = false;
  /** Why a worker could not even start (then none will): every task fails with it. */
  private broken: string | null = null;
  /** Workers replaced after a timeout, a crash or heap growth (for tests and metrics). */
  replaced = 0;
  /** Tasks failed for being too expensive (work budget) and for the machine being too busy (wall limit). */
  overBudget = 0;
  tooBusy = 0;
  /** Settles once every first worker has said it is ready (rejects if one cannot start). */
  private readonly started: Promise<void>;
  private onStarted: { resolve(): void; reject(e: Error): void } | null = null;
  /** One timer for the queued tasks' wall limits, set for the earliest of them (at `queueTimerAt`). */
  private queueTimer: NodeJS.Timeout | null = null;
  private queueTimerAt = Infinity;

  constructor(opts: WorkerPoolOptions) {
    this.opts = opts;
    this.started = new Promise<void>((resolve, reject) => (this.onStarted = { resolve, reject }));
    this.started.catch(() => {});
    for (let i = 0; i < Math.max(1, opts.size); i++) this.slots.push(this.spawn());
  }

  /** Resolves once every worker has started (loaded what it needs); rejects when one cannot. */
  ready(): Promise<void> {
    return this.started;
  }

  get size(): number {
    return this.slots.length;
  }

  /** Tasks waiting for a free worker. */
  get queued(): number {
    return this.queue.length;
  }

  /** Runs task `kind` with `arg` on the first free worker; resolves to its result, rejects with a LoraplexError. */
  run<K extends TaskKind<Tasks>>(kind: K, arg: Tasks[K]['arg'], opts: TaskOptions): Promise<Tasks[K]['result']> {
    if (this.closed) return Promise.reject(new LoraplexError('shutting_down', 'the server is shutting down'));
    if (this.broken) return Promise.reject(new LoraplexError('internal_error', `a helper thread cannot start: ${this.broken}`));
    return new Promise<Tasks[K]['result']>((resolve, reject) => {
      const submitted = performance.now();
      const deadline = submitted + (opts.wallLimitMs ?? defaultWallLimitMs(opts.budgetMs));
      this.queue.push({ id: this.nextId++, kind, arg, opts, submitted, deadline, started: 0, cpuStart: null, cpuUsed: 0, resolve: resolve as (v: unknown) => void, reject });
      this.dispatch();
      if (this.queue.length > 0) this.watchQueue(deadline);
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.queueTimer) clearTimeout(this.queueTimer);
    for (const p of this.queue.splice(0)) p.reject(new LoraplexError('shutting_down', 'the server is shutting down'));
    await Promise.all(
      this.slots.map(async (s) => {
        if (s.timer) clearTimeout(s.timer);
        s.busy?.reject(new LoraplexError('shutting_down', 'the server is shutting down'));
        s.busy = null;
        await s.worker.terminate();
      }),
    );
  }

  private spawn(): Slot {
    const worker = startWorker(this.opts.from, this.opts.entry, { workerData: this.opts.workerData, resourceLimits: this.opts.resourceLimits });
    worker.unref();
    // A fresh worker loads its data first (a tokenizer can take seconds): no task, and so no
    // task budget, starts before it says it is ready.
    const slot: Slot = { worker, busy: null, timer: null, ready: false, tid: null };
    worker.on('message', (m: WorkerMessage) => this.onReply(slot, m));
    worker.on('error', (err) => this.onExit(slot, err.message));
    worker.on('exit', (code) => this.onExit(slot, `the worker exited (code ${code})`));
    return slot;
  }

  private dispatch(): void {
    for (const slot of this.slots) {
      if (this.queue.length === 0) return;
      if (slot.busy || !slot.ready) continue;
      const p = this.queue.shift()!;
      slot.busy = p;
      slot.worker.ref();
      p.started = performance.now();
      p.cpuStart = slot.tid === null ? null : threadCpuMs(slot.tid);
      this.watch(slot, p);
      try {
        slot.worker.postMessage({ id: p.id, kind: p.kind, arg: p.arg } satisfies TaskMessage, p.opts.transfer ?? []);
      } catch (err) {
        // The task could not be handed over (it cannot be cloned): only this task fails.
        this.settle(slot);
        p.reject(new LoraplexError('invalid_parameter', `the request could not be processed: ${(err as Error).message}`));
      }
    }
  }

  private settle(slot: Slot): Pending | null {
    const p = slot.busy;
    if (slot.timer) clearTimeout(slot.timer);
    slot.timer = null;
    slot.busy = null;
    slot.worker.unref();
    return p;
  }

  /**
   * Checks the running task's limits when the first of them could next be reached: a thread accrues
   * at most one millisecond of CPU time per millisecond, so the remaining budget is the earliest
   * wall-clock time it can be used up.
   */
  private watch(slot: Slot, p: Pending): void {
    const now = performance.now();
    // Without a thread clock (not Linux) the budget is counted in wall time. A clock that stops
    // answering mid-task (the thread is exiting: its exit fails the task) keeps its last reading.
    if (p.cpuStart === null) p.cpuUsed = now - p.started;
    else {
      const cpu = threadCpuMs(slot.tid!);
      if (cpu !== null) p.cpuUsed = cpu - p.cpuStart;
    }
    const used = p.cpuUsed;
    if (used >= p.opts.budgetMs) return this.onTimeout(slot);
    if (now >= p.deadline) return this.onBusy(slot, used);
    slot.timer = setTimeout(() => {
      if (slot.busy === p) this.watch(slot, p);
    }, Math.max(5, Math.min(p.opts.budgetMs - used, p.deadline - now)));
  }

  /** Fails queued tasks whose wall limit passed before a worker was free; `next`: the earliest deadline to watch (default: found in the queue). */
  private watchQueue(next = this.queue.reduce((m, p) => Math.min(m, p.deadline), Infinity)): void {
    if (next >= this.queueTimerAt) return;
    if (this.queueTimer) clearTimeout(this.queueTimer);
    this.queueTimerAt = next;
    this.queueTimer = setTimeout(() => {
      this.queueTimer = null;
      this.queueTimerAt = Infinity;
      const now = performance.now();
      for (const p of this.queue.filter((q) => q.deadline <= now)) {
        this.queue.splice(this.queue.indexOf(p), 1);
        this.tooBusy++;
        p.reject(busyError(p, 0));
      }
      this.watchQueue();
    }, Math.max(5, next - performance.now()));
    this.queueTimer.unref();
  }

  private onReply(slot: Slot, m: WorkerMessage): void {
    if ('ready' in m) {
      slot.ready = true;
      slot.tid = m.tid;
      if (this.slots.every((s) => s.ready)) this.onStarted?.resolve();
      this.dispatch();
      return;
    }
    if (!slot.busy || slot.busy.id !== m.id) return;
    const p = this.settle(slot)!;
    if ('error' in m) p.reject(LoraplexError.fromWire(m.error));
    else p.resolve(m.result);
    if (m.memoryBytes > (this.opts.recycleHeapBytes ?? 256 * 1024 * 1024)) this.replace(slot);
    this.dispatch();
  }

  private onTimeout(slot: Slot): void {
    const p = this.settle(slot);
    this.replace(slot);
    this.overBudget++;
    p?.reject(p.opts.onTimeout());
    this.dispatch();
  }

  private onBusy(slot: Slot, used: number): void {
    const p = this.settle(slot);
    this.replace(slot);
    this.tooBusy++;
    if (p) p.reject(busyError(p, used));
    this.dispatch();
  }

  private onExit(slot: Slot, why: string): void {
    if (this.closed || this.broken || !this.slots.includes(slot)) return;
    if (!slot.ready) {
      // It died while starting: a replacement would die the same way.
      this.broken = why;
      this.onStarted?.reject(new LoraplexError('internal_error', `a helper thread cannot start: ${why}`));
      for (const q of this.queue.splice(0)) q.reject(new LoraplexError('internal_error', `a helper thread cannot start: ${why}`));
      return;
    }
    const p = this.settle(slot);
    this.replace(slot);
    p?.reject(p.opts.onCrash?.(why) ?? new LoraplexError('internal_error', `a helper thread died while ${p.opts.what ?? `running task "${p.kind}"`}: ${why}`));
    this.dispatch();
  }

  /** Swaps a worker for a fresh one (the old one is terminated and its memory returned). */
  private replace(slot: Slot): void {
    const i = this.slots.indexOf(slot);
    if (i < 0 || this.closed) return;
    this.replaced++;
    const fresh = this.spawn();
    this.slots[i] = fresh;
    slot.worker.removeAllListeners('message');
    slot.worker.removeAllListeners('exit');
    slot.worker.removeAllListeners('error');
    slot.worker.on('error', () => {});
    void slot.worker.terminate();
  }
}

function busyError(p: Pending, usedMs: number): LoraplexError {
  const waited = ((performance.now() - p.submitted) / 1000).toFixed(1);
  const what = p.opts.what ?? 'the task';
  return new LoraplexError(
    'busy',
    `the server is too busy to finish ${what} in time: ${waited} s passed and it used ${Math.round(usedMs)} ms of its ${p.opts.budgetMs} ms budget of CPU time; retry later`,
    { retryAfterSeconds: BUSY_RETRY_AFTER_SECONDS },
  );
}
