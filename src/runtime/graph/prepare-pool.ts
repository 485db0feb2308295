/**
 * Weight preparation (quantization, transposes) on helper threads, one per core, so building a
 * large model's graph uses every core. Small models are prepared inline: starting threads would
 * cost more than it saves.
 */
import { availableParallelism } from 'node:os';
import { LoraplexError } from '../../errors.js';
import { WorkerPool } from '../../util/worker-pool.js';
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

/** The preparing threads' task map (see worker-protocol.ts). */
export interface PrepareTasks {
  prepare: { arg: { weight: LinearWeight; format: WeightFormat }; result: PreparedLinear };
}

/** CPU time one weight may take to prepare (the largest take seconds): beyond it, something is wrong. */
const PREPARE_BUDGET_MS = 600_000;
/** Wall-clock limit of one weight, queueing behind the others included (a build on a busy machine is slow, not wrong). */
const PREPARE_WALL_LIMIT_MS = 4 * 3_600_000;

/**
 * Prepares weights on a WorkerPool, one thread per core: a thread that dies fails its weight (the
 * build fails) and is replaced; errors keep their codes.
 */
export class ThreadPreparer implements Preparer {
  private readonly pool: WorkerPool<PrepareTasks>;

  constructor(threads = availableParallelism()) {
    this.pool = new WorkerPool<PrepareTasks>({ from: import.meta.url, entry: 'prepare-worker', size: Math.max(1, threads) });
  }

  prepare(weight: LinearWeight, format: WeightFormat): Promise<PreparedLinear> {
    const w = owned(weight.w);
    const bias = weight.bias ? owned(weight.bias) : null;
    const transfer = [w.buffer as ArrayBuffer, ...(bias && bias.buffer !== w.buffer ? [bias.buffer as ArrayBuffer] : [])];
    const what = `preparing a [${weight.n} x ${weight.k}] weight as ${format}`;
    return this.pool.run('prepare', { weight: { ...weight, w, bias }, format }, {
      budgetMs: PREPARE_BUDGET_MS,
      wallLimitMs: PREPARE_WALL_LIMIT_MS,
      what,
      transfer,
      onTimeout: () => new LoraplexError('internal_error', `${what} took longer than ${PREPARE_BUDGET_MS / 1000} s of CPU time`),
    });
  }

  close(): Promise<void> {
    return this.pool.close();
  }
}
