/**
 * Weight preparation (quantization, transposes) on helper threads, one per core, so building a
 * large model's graph uses every core. Small models are prepared inline: starting threads would
 * cost more than it saves.
 */
import { availableParallelism } from 'node:os';
import type { Worker } from 'node:worker_threads';
import { startWorker } from '../../util/worker-url.js';
import { prepareLinear, type LinearWeight, type PreparedLinear } from './linear.js';
import type { WeightFormat } from './quant.js';

export interface Preparer {
  prepare(weight: LinearWeight, format: WeightFormat): Promise<PreparedLinear>;
  close(): Promise<void>;
}

export const inlinePreparer: Preparer = {
  prepare: async (weight, format) => prepareLinear(weight, format),
  close: async () => {},
};

/** A view that owns its whole buffer can be transferred; anything else is copied first. */
function owned(a: Float32Array): Float32Array {
  return a.byteOffset === 0 && a.buffer.byteLength === a.byteLength && a.buffer instanceof ArrayBuffer ? a : a.slice();
}

export class ThreadPreparer implements Preparer {
  private readonly workers: Worker[] = [];
  private readonly idle: Worker[] = [];
  private readonly waiting: (() => void)[] = [];

  constructor(threads = availableParallelism()) {
    for (let i = 0; i < Math.max(1, threads); i++) {
      const w = startWorker(import.meta.url, 'prepare-worker');
      this.workers.push(w);
      this.idle.push(w);
    }
  }

  async prepare(weight: LinearWeight, format: WeightFormat): Promise<PreparedLinear> {
    while (this.idle.length === 0) await new Promise<void>((r) => this.waiting.push(r));
    const worker = this.idle.pop()!;
    try {
      const w = owned(weight.w);
      const bias = weight.bias ? owned(weight.bias) : null;
      return await new Promise<PreparedLinear>((resolve, reject) => {
        const onMessage = (m: { prepared?: PreparedLinear; error?: string }): void => {
          worker.off('error', onError);
          if (m.prepared) resolve(m.prepared);
          else reject(new Error(m.error));
        };
        const onError = (err: Error): void => {
          worker.off('message', onMessage);
          reject(err);
        };
        worker.once('message', onMessage);
        worker.once('error', onError);
        const transfer = [w.buffer as ArrayBuffer, ...(bias && bias.buffer !== w.buffer ? [bias.buffer as ArrayBuffer] : [])];
        worker.postMessage({ weight: { ...weight, w, bias }, format }, transfer);
      });
    } finally {
      this.idle.push(worker);
      this.waiting.shift()?.();
    }
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}

