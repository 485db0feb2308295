/**
 * Loading adapters off the serving thread: reading and transposing factors (and building
 * combinations) happens in a helper thread, so loads never stall other adapters' steps. The result
 * comes back with its buffers transferred, not copied. Every factor is checked finite in the slot
 * dtype before it leaves the loader; the slots check again as they take it.
 */
import { AdapterInvalidError, LoraplexError } from '../errors.js';
import { CheckpointProjections } from '../runtime/checkpoint/projection-weights.js';
import { RowNorms } from '../runtime/row-norms.js';
import type { ModelSpec } from '../runtime/checkpoint/spec.js';
import { checkLoraWeights, type LoraWeights, type SlotDtype } from '../runtime/lora-stacks.js';
import { WorkerPool } from '../util/worker-pool.js';
import { mergeByTaskArithmetic, mergeLoraWeights } from './merge.js';
import { loadPeftAdapter, type DoraBase } from './peft.js';
import { adapterDigest } from './digest.js';
import type { AdapterSource, AdapterSpec } from './spec.js';

export interface LoaderOptions {
  spec: ModelSpec;
  maxRank: number;
  strictBase: string | null;
  /** The slots' element type: factors must be finite once stored in it. */
  slotDtype: SlotDtype;
  /** The base model's checkpoint directory: DoRA adapters' scales are computed from its weights (null: DoRA adapters fail to load). */
  checkpointDir?: string | null;
}

export type AdapterLoader = (spec: AdapterSpec) => Promise<LoraWeights>;

/** This thread's row-norm kernel for DoRA scales (its onnxruntime session starts with the first DoRA load). */
const rowNorms = new RowNorms();

/** Loads on the calling thread (tests, CLI, the loader thread itself). */
export async function loadAdapterHere(spec: AdapterSpec, opts: LoaderOptions): Promise<LoraWeights> {
  const weights = opts.checkpointDir ? new CheckpointProjections(opts.checkpointDir) : null;
  try {
    return await loadWith(spec, opts, weights && { weights, norms: rowNorms });
  } finally {
    weights?.release();
  }
}

async function loadWith(spec: AdapterSpec, opts: LoaderOptions, base: DoraBase | null): Promise<LoraWeights> {
  const load = async (s: AdapterSource): Promise<LoraWeights> => {
    const w = (await loadPeftAdapter(s.dir, opts.spec, { maxRank: opts.maxRank, strictBase: opts.strictBase, slotDtype: opts.slotDtype, base })).weights;
    // A directory that is not an immutable version must still hold the version it was named by.
    if (s.verify && adapterDigest(s.dir) !== s.key) {
      throw new LoraplexError('adapter_load_failed', `adapter ${s.name} changed on disk since it was registered; the new version is picked up shortly, retry`);
    }
    return w;
  };
  if (spec.kind === 'single') return load(spec);
  const parts: { weights: LoraWeights; weight: number }[] = [];
  for (const p of spec.parts) parts.push({ weights: await load(p), weight: p.weight });
  const dora = spec.parts.find((_, i) => [...parts[i].weights.factors.values()].some((f) => f.doraScale));
  // A DoRA module's weight is normalized per row: a sum of DoRA (or DoRA and LoRA) modules is
  // not a DoRA module of the summed factors (PEFT does not combine them either).
  if (dora) throw new AdapterInvalidError(`adapter ${dora.name} is a DoRA adapter; merged_adapters combines LoRA adapters only`, 'merged_adapters');
  const merged = spec.method ? mergeByTaskArithmetic(parts, { ...spec.method, recipe: spec.key }) : mergeLoraWeights(parts, opts.maxRank);
  checkLoraWeights(merged, opts.slotDtype);
  return merged;
}

/** The loader thread's task map (see worker-protocol.ts). */
export interface LoaderTasks {
  load: { arg: AdapterSpec; result: LoraWeights };
}

/** CPU time one load may take (reading and transposing a large adapter, or merging several). */
const LOAD_BUDGET_MS = 300_000;
/** Wall-clock limit of one load, queueing and a slow disk included: beyond it, a retryable 503 busy. */
const LOAD_WALL_LIMIT_MS = 900_000;

/**
 * A loader backed by one helper thread (a WorkerPool of one): loads run one at a time; one that
 * overruns its budget, or kills its thread, fails with `adapter_load_failed` and the thread is
 * replaced; the loader's own errors (adapter_invalid, adapter_load_failed) keep their codes.
 */
export class ThreadLoader {
  private readonly pool: WorkerPool<LoaderTasks>;

  constructor(opts: LoaderOptions) {
    this.pool = new WorkerPool<LoaderTasks>({ from: import.meta.url, entry: 'loader-worker', size: 1, workerData: opts });
  }

  load: AdapterLoader = (spec) =>
    this.pool.run('load', spec, {
      budgetMs: LOAD_BUDGET_MS,
      wallLimitMs: LOAD_WALL_LIMIT_MS,
      what: `loading adapter ${spec.name}`,
      onTimeout: () => new LoraplexError('adapter_load_failed', `loading adapter ${spec.name} took longer than ${LOAD_BUDGET_MS / 1000} s of CPU time`),
      onCrash: (why) => new LoraplexError('adapter_load_failed', `loading adapter ${spec.name} failed: the loader thread died (${why})`),
    });

  close(): Promise<void> {
    return this.pool.close();
  }
}
