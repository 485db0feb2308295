/**
 * Loading adapters off the serving thread: reading and transposing factors (and building
 * combinations) happens in a helper thread, so loads never stall other adapters' steps. The result
 * comes back with its buffers transferred, not copied.
 */
import type { Worker } from 'node:worker_threads';
import type { ModelSpec } from '../runtime/checkpoint/spec.js';
import type { LoraWeights } from '../runtime/lora-slots.js';
import type { AdapterSpec } from '../scheduler/request.js';
import { mergeLoraWeights } from './merge.js';
import { loadPeftAdapter } from './peft.js';
import { startWorker } from '../util/worker-url.js';

export interface LoaderOptions {
  spec: ModelSpec;
  maxRank: number;
  strictBase: string | null;
}

export type AdapterLoader = (spec: AdapterSpec) => Promise<LoraWeights>;

/** Loads on the calling thread (tests, CLI). */
export function loadAdapterSync(spec: AdapterSpec, opts: LoaderOptions): LoraWeights {
  const load = (dir: string): LoraWeights => loadPeftAdapter(dir, opts.spec, { maxRank: opts.maxRank, strictBase: opts.strictBase }).weights;
  if (spec.kind === 'single') return load(spec.dir);
  return mergeLoraWeights(spec.parts.map((p) => ({ weights: load(p.dir), weight: p.weight })), opts.maxRank);
}

export interface SerializedError {
  name: string;
  message: string;
  code?: string;
  statusCode?: number;
  param?: string | null;
}

/** A loader backed by one helper thread. */
export class ThreadLoader {
  private readonly worker: Worker;
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (w: LoraWeights) => void; reject: (e: Error) => void }>();

  constructor(opts: LoaderOptions) {
    this.worker = startWorker(import.meta.url, 'loader-worker', { workerData: opts });
    this.worker.unref();
    this.worker.on('message', (m: { id: number; weights?: LoraWeights; error?: SerializedError }) => {
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      if (m.weights) p.resolve(m.weights);
      else p.reject(reviveError(m.error!));
    });
    this.worker.on('error', (err) => {
      for (const p of this.pending.values()) p.reject(err);
      this.pending.clear();
    });
  }

  load: AdapterLoader = (spec) =>
    new Promise((resolve, reject) => {
      const id = this.nextId++;
      this.pending.set(id, { resolve, reject });
      this.worker.ref();
      this.worker.postMessage({ id, spec });
    }).finally(() => {
      if (this.pending.size === 0) this.worker.unref();
    }) as Promise<LoraWeights>;

  async close(): Promise<void> {
    await this.worker.terminate();
  }
}

export class LoadError extends Error {
  readonly code: string;
  readonly statusCode: number;
  readonly param: string | null;
  constructor(e: SerializedError) {
    super(e.message);
    this.name = e.name;
    this.code = e.code ?? 'adapter_load_failed';
    this.statusCode = e.statusCode ?? 424;
    this.param = e.param ?? null;
  }
}

export function serializeError(err: unknown): SerializedError {
  const e = err as { name?: string; message?: string; code?: string; statusCode?: number; param?: string | null };
  return { name: e?.name ?? 'Error', message: e?.message ?? String(err), code: e?.code, statusCode: e?.statusCode, param: e?.param ?? null };
}

function reviveError(e: SerializedError): Error {
  return new LoadError(e);
}
