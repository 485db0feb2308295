/**
 * The main thread's handle on the engine worker: submit requests and receive their events, cancel,
 * read stats, preload and unload adapters, shut down gracefully. The main event loop stays free
 * while the model computes.
 */
import type { GrammarSpec } from '../runtime/grammar/compiler.js';
import type { Worker } from 'node:worker_threads';
import { LoraplexError, toWireError, type WireError } from '../errors.js';
import { startWorker } from '../util/worker-url.js';
import type { EngineStats } from './engine-stats.js';
import type { AdapterSpec, EngineEvent, ValidRequest } from './request.js';
import type { EngineInfo, FromWorker, ToWorker, WorkerInit } from './worker.js';

export type { EngineInfo } from './worker.js';

export interface SubmitHandle {
  cancel(): void;
}

export class Engine {
  readonly info: EngineInfo;
  private readonly worker: Worker;
  private readonly listeners = new Map<number, (e: EngineEvent) => void>();
  private readonly replies = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private nextId = 1;
  private nextQid = 1;
  private closing: Promise<void> | null = null;
  private exited = false;
  private recent: { at: number; stats: Promise<EngineStats> } | null = null;

  private constructor(worker: Worker, info: EngineInfo) {
    this.worker = worker;
    this.info = info;
  }

  static start(
    init: WorkerInit,
    opts: { onProgress?: (done: number, total: number, label: string) => void; log?: (msg: string) => void } = {},
  ): Promise<Engine> {
    const worker = startWorker(import.meta.url, 'worker', { workerData: init });
    return new Promise((resolve, reject) => {
      let engine: Engine | null = null;
      worker.on('message', (m: FromWorker) => {
        switch (m.t) {
          case 'progress':
            opts.onProgress?.(m.done, m.total, m.label);
            break;
          case 'log':
            opts.log?.(m.msg);
            break;
          case 'ready':
            engine = new Engine(worker, m.info);
            resolve(engine);
            break;
          case 'events':
            engine?.dispatch(m.events);
            break;
          case 'reply':
            engine?.reply(m.qid, m.result, m.error);
            break;
          case 'fatal': {
            const err = LoraplexError.fromWire(m.error);
            if (engine) engine.fail(err);
            else reject(err);
            break;
          }
        }
      });
      worker.on('error', (err) => {
        if (engine) engine.fail(err);
        else reject(err);
      });
      worker.on('exit', (code) => {
        if (engine) {
          engine.exited = true;
          engine.fail(new Error(`engine worker exited (code ${code})`));
        } else reject(new Error(`engine worker exited before it was ready (code ${code})`));
      });
    });
  }

  /**
   * Submits a request; `onEvent` receives its events until an 'end' or 'error'. Throws (and
   * registers nothing) when the request cannot be handed to the worker.
   */
  submit(req: Omit<ValidRequest, 'id'>, onEvent: (e: EngineEvent) => void): SubmitHandle {
    const id = this.nextId++;
    if (this.closing || this.exited) throw new LoraplexError('shutting_down', 'the server is shutting down');
    this.post({ t: 'submit', req: { ...req, id } });
    this.listeners.set(id, onEvent);
    return {
      cancel: () => {
        if (this.listeners.delete(id)) this.post({ t: 'cancel', id });
      },
    };
  }

  /** False once the worker has stopped (shutdown or a crash). */
  get alive(): boolean {
    return !this.exited && this.closing === null;
  }


  stats(): Promise<EngineStats> {
    return this.ask({ t: 'stats', qid: 0 }) as Promise<EngineStats>;
  }

  /**
   * Stats at most `maxAgeMs` old, one ask shared by every caller meanwhile: for callers anyone can
   * reach as often as they like (health checks), so they cannot keep the engine thread answering.
   */
  recentStats(maxAgeMs: number): Promise<EngineStats> {
    const now = performance.now();
    if (this.recent === null || now - this.recent.at > maxAgeMs) this.recent = { at: now, stats: this.stats() };
    return this.recent.stats;
  }

  /**
   * Compiles a grammar on the engine's grammar thread; rejects with `invalid_grammar` naming what it
   * refuses. `owner`: who asks (the request's tenant), so one owner's new grammars are checked one at
   * a time.
   */
  compileGrammar(spec: GrammarSpec, owner: string | null = null): Promise<void> {
    return this.ask({ t: 'grammar', qid: 0, spec, owner }) as Promise<void>;
  }

  preload(spec: AdapterSpec): Promise<void> {
    return this.ask({ t: 'preload', qid: 0, spec }) as Promise<void>;
  }

  unload(key: string): Promise<boolean> {
    return this.ask({ t: 'unload', qid: 0, key }) as Promise<boolean>;
  }

  /** Stops taking requests, lets live ones finish (up to `graceMs`), then stops the worker. */
  close(graceMs = 30000): Promise<void> {
    if (!this.closing) {
      this.closing = (async () => {
        const until = Date.now() + graceMs;
        while (this.listeners.size > 0 && Date.now() < until && !this.exited) await new Promise((r) => setTimeout(r, 20));
        for (const id of [...this.listeners.keys()]) this.post({ t: 'cancel', id });
        if (!this.exited) {
          const exited = new Promise((r) => this.worker.once('exit', r));
          this.post({ t: 'shutdown' });
          await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
          if (!this.exited) await this.worker.terminate();
        }
      })();
    }
    return this.closing;
  }

  private post(m: ToWorker): void {
    if (!this.exited) this.worker.postMessage(m);
  }

  private ask(m: Extract<ToWorker, { qid: number }>): Promise<unknown> {
    const qid = this.nextQid++;
    return new Promise((resolve, reject) => {
      if (this.exited) return reject(new Error('the engine has stopped'));
      this.replies.set(qid, { resolve, reject });
      this.post({ ...m, qid });
    });
  }

  private dispatch(events: EngineEvent[]): void {
    for (const e of events) {
      const fn = this.listeners.get(e.id);
      if (!fn) continue;
      if (e.t === 'end' || e.t === 'error') this.listeners.delete(e.id);
      fn(e);
    }
  }

  private reply(qid: number, result: unknown, error?: WireError): void {
    const r = this.replies.get(qid);
    if (!r) return;
    this.replies.delete(qid);
    if (error) r.reject(LoraplexError.fromWire(error));
    else r.resolve(result);
  }

  private fail(err: Error): void {
    const error = toWireError(new LoraplexError('engine_failed', `the engine failed: ${err.message}`));
    for (const [id, fn] of this.listeners) fn({ t: 'error', id, error });
    this.listeners.clear();
    for (const r of this.replies.values()) r.reject(err);
    this.replies.clear();
  }
}
