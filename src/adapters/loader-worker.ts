/** The adapter loading thread (see loader.ts). */
import { parentPort, workerData } from 'node:worker_threads';
import { toWireError } from '../errors.js';
import { loadAdapterSync, type LoaderOptions } from './loader.js';
import type { AdapterSpec } from './spec.js';

const opts = workerData as LoaderOptions;

parentPort!.on('message', (m: { id: number; spec: AdapterSpec }) => {
  try {
    const weights = loadAdapterSync(m.spec, opts);
    const transfer: ArrayBuffer[] = [];
    for (const f of weights.factors.values()) transfer.push(f.a.buffer as ArrayBuffer, f.b.buffer as ArrayBuffer);
    parentPort!.postMessage({ id: m.id, weights }, transfer);
  } catch (err) {
    parentPort!.postMessage({ id: m.id, error: toWireError(err) });
  }
});
