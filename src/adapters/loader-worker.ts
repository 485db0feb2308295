/** The adapter loading thread (see loader.ts): factors go back transferred, not copied. */
import { workerData } from 'node:worker_threads';
import { serve, transferring } from '../util/worker-task.js';
import { loadAdapterHere, type LoaderOptions, type LoaderTasks } from './loader.js';

const opts = workerData as LoaderOptions;

serve<LoaderTasks>({
  load: async (spec) => {
    const weights = await loadAdapterHere(spec, opts);
    const transfer: ArrayBuffer[] = [];
    for (const f of weights.factors.values()) transfer.push(f.a.buffer as ArrayBuffer, f.b.buffer as ArrayBuffer, ...(f.doraScale ? [f.doraScale.buffer as ArrayBuffer] : []));
    return transferring(weights, transfer);
  },
});
