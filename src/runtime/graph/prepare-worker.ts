/** Helper thread for prepare-pool.ts: prepares one weight per message and transfers the result back. */
import { parentPort } from 'node:worker_threads';
import { prepareLinear, preparedBuffers, type LinearWeight } from './linear.js';
import type { WeightFormat } from './quant.js';

parentPort!.on('message', (m: { weight: LinearWeight; format: WeightFormat }) => {
  try {
    const prepared = prepareLinear(m.weight, m.format);
    parentPort!.postMessage({ prepared }, preparedBuffers(prepared));
  } catch (err) {
    parentPort!.postMessage({ error: (err as Error).message });
  }
});
