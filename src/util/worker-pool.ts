/**
 * A pool of worker threads for work that must not run on the HTTP event loop or the engine thread
 * (tokenizing, rendering chat templates, validating uploads). Each task has a time budget: a worker
 * that overruns it is terminated (V8 stops it wherever it is, even in an endless loop) and replaced,
 * and the task fails with the caller's error. A worker that dies (out of memory, a crash) fails only
 * its own task. A worker whose heap grew past `recycleHeapBytes` after a task is replaced, so one
 * huge request does not keep its memory for good.
 *
 * Protocol (see worker-task.ts): the pool posts {id, task}; the worker answers {id, result} or
 * {id, error: WireError}, plus its heap size.
 */
import type { Worker, WorkerOptions } from 'node:worker_threads';
import { LoraplexError, type WireError } from '../errors.js';
import { startWorker } from './worker-url.js';

export interface WorkerPoolOptions {
  /** Module URL next to which the worker entry file sits, and its base name. */
  from: string;
  entry: string;
  size: number;
  workerData?: unknown;
  resourceLimits?: WorkerOptions['resourceLimits'];
  /** Replace a worker whose V8 heap exceeds this after a task (default 256 MiB). */
  recycleHeapBytes?: number;
}

export interface TaskOptions {
  /** Time the task may take once a worker has started it. */
  timeoutMs: number;
  /** The error a task that overran its budget fails with. */
  onTimeout: () => LoraplexError;
  /** The error a task whose worker died fails with (out of memory, typically). */
  onCrash?: (why: string) => LoraplexError;
  transfer?: ArrayBuffer[];
}

interface Pending {
  id: number;
  task: unknown;
  opts: TaskOptions;
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
}

interface Slot {
  worker: Worker;
  busy: Pending | null;
  timer: NodeJS.Timeout | null;
  ready: boolean;
}

interface Reply {
  /** Sent once, when the worker has loaded what it needs and takes tasks. */
  ready?: boolean;
  id: number;
  result?: unknown;
  error?: WireError;
  heapBytes?: number;
}

export class WorkerPool {
  private readonly opts: WorkerPoolOptions;
  private readonly slots: Slot[] = [];
  private readonly queue: Pending[] = [];
  private nextId = 1;
  private closed = false;
  /** Why a worker could not even start (then none will): every task fails with it. */
  private broken: string | null = null;
  /** Workers replaced after a timeout, a crash or heap growth (for tests and metrics). */
  replaced = 0;

  constructor(opts: WorkerPoolOptions) {
    this.opts = opts;
    for (let i = 0; i < Math.max(1, opts.size); i++) this.slots.push(this.spawn());
  }

  get size(): number {
    return this.slots.length;
  }

  /** Tasks waiting for a free worker. */
  get queued(): number {
    return this.queue.length;
  }

  run<T>(task: unknown, opts: TaskOptions): Promise<T> {
    if (this.closed) return Promise.reject(new LoraplexError('shutting_down', 'the server is shutting down'));
    if (this.broken) return Promise.reject(new LoraplexError('internal_error', `a helper thread cannot start: ${this.broken}`));
    return new Promise<T>((resolve, reject) => {
      this.queue.push({ id: this.nextId++, task, opts, resolve: resolve as (v: unknown) => void, reject });
      this.dispatch();
    });
  }

  async close(): Promise<void> {
    this.closed = true;
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
    const slot: Slot = { worker, busy: null, timer: null, ready: false };
    worker.on('message', (m: Reply) => this.onReply(slot, m));
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
      slot.timer = setTimeout(() => this.onTimeout(slot), p.opts.timeoutMs);
      try {
        slot.worker.postMessage({ id: p.id, task: p.task }, p.opts.transfer ?? []);
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

  private onReply(slot: Slot, m: Reply): void {
    if (m.ready) {
      slot.ready = true;
      this.dispatch();
      return;
    }
    if (!slot.busy || slot.busy.id !== m.id) return;
    const p = this.settle(slot)!;
    if (m.error) p.reject(LoraplexError.fromWire(m.error));
    else p.resolve(m.result);
    if ((m.heapBytes ?? 0) > (this.opts.recycleHeapBytes ?? 256 * 1024 * 1024)) this.replace(slot);
    this.dispatch();
  }

  private onTimeout(slot: Slot): void {
    const p = this.settle(slot);
    this.replace(slot);
    p?.reject(p.opts.onTimeout());
    this.dispatch();
  }

  private onExit(slot: Slot, why: string): void {
    if (this.closed || this.broken || !this.slots.includes(slot)) return;
    if (!slot.ready) {
      // It died while starting: a replacement would die the same way.
      this.broken = why;
      for (const q of this.queue.splice(0)) q.reject(new LoraplexError('internal_error', `a helper thread cannot start: ${why}`));
      return;
    }
    const p = this.settle(slot);
    this.replace(slot);
    p?.reject(p.opts.onCrash?.(why) ?? new LoraplexError('internal_error', `a helper thread failed: ${why}`));
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
