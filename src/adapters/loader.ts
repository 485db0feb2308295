/**
 * Loading adapters off the serving thread: reading and transposing factors (and building
 * combinations) happens in a helper thread, so loads never stall other adapters' steps. The result
 * comes back with its buffers transferred, not copied. Every factor is checked finite in the slot
 * dtype before it leaves the loader; the slots check again as they take it.
 */
import type { Worker } from 'node:worker_threads';
import { LoraplexError, type WireError } from '../errors.js';
import type { ModelSpec } from '../runtime/checkpoint/spec.js';
import { checkLoraWeights, type LoraWeights, type SlotDtype } from '../runtime/lora-stacks.js';
import { startWorker } from '../util/worker-url.js';
import { mergeLoraWeights } from './merge.js';
import { loadPeftAdapter } from './peft.js';
import { adapterDigest } from './digest.js';
import type { AdapterSource, AdapterSpec } from './spec.js';

export interface LoaderOptions {
  spec: ModelSpec;
  maxRank: number;
  strictBase: string | null;
  /** The slots' element type: factors must be finite once stored in it. */
  slotDtype: SlotDtype;
}

export type AdapterLoader = (spec: AdapterSpec) => Promise<LoraWeights>;

/** Loads on the calling thread (tests, CLI, the loader thread itself). */
export function loadAdapterSync(spec: AdapterSpec, opts: LoaderOptions): LoraWeights {
  const load = (s: AdapterSource): LoraWeights => {
    const w = loadPeftAdapter(s.dir, opts.spec, { maxRank: opts.maxRank, strictBase: opts.strictBase, slotDtype: opts.slotDtype }).weights;
    // A directory that is not an immutable version must still hold the version it was named by.
    if (s.verify && adapterDigest(s.dir) !== s.key) {
      throw new LoraplexError('adapter_load_failed', `adapter ${s.name} changed on disk since it was registered; the new version is picked up shortly, retry`);
    }
    return w;
  };
  if (spec.kind === 'single') return load(spec);
  const merged = mergeLoraWeights(spec.parts.map((p) => ({ weights: load(p), weight: p.weight })), opts.maxRank);
  checkLoraWeights(merged, opts.slotDtype);
  return merged;
}

/** A loader backed by one helper thread. */
export class ThreadLoader {
  private readonly worker: Worker;
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (w: LoraWeights) => void; reject: (e: Error) => void }>();

  constructor(opts: LoaderOptions) {
    this.worker = startWorker(import.meta.url, 'loader-worker', { workerData: opts });
    this.worker.unref();
    this.worker.on('message', (m: { id: number; weights?: LoraWeights; error?: WireError }) => {
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      if (m.weights) p.resolve(m.weights);
      else p.reject(LoraplexError.fromWire(m.error!));
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
