/** Shared helpers for runtime tests: build + load a tiny model, compare logits. */
import { loadPeftAdapter } from '../../src/adapters/peft.js';
import { CheckpointProjections } from '../../src/runtime/checkpoint/projection-weights.js';
import { RowNorms } from '../../src/runtime/row-norms.js';
import { buildModel, type BuildOptions } from '../../src/runtime/graph/build.js';
import { DecoderModel, type StepOutput } from '../../src/runtime/model.js';
import { tempDir, type TinyAdapter, type TinyModel } from './tiny-model.js';

export async function loadTiny(
  model: TinyModel,
  build: Partial<BuildOptions> = {},
  opts: { kvCacheTokens?: number; adapterSlots?: number; maxLoraRank?: number; cacheDir?: string; threads?: number } = {},
): Promise<DecoderModel> {
  const built = await buildModel(model.dir, { weights: 'fp32', activations: 'fp32', ...build }, { cacheDir: opts.cacheDir ?? tempDir() });
  return DecoderModel.load(built, {
    device: 'cpu',
    allowCpuFallback: false,
    threads: opts.threads ?? 1,
    kvCacheTokens: opts.kvCacheTokens ?? 1024,
    adapterSlots: opts.adapterSlots ?? 4,
    maxLoraRank: opts.maxLoraRank ?? 64,
  });
}

const rowNorms = new RowNorms();

/** Loads a PEFT adapter (DoRA included, against its base model's weights) into the model's next slot and returns the slot. */
export async function loadAdapter(model: DecoderModel, adapter: TinyAdapter): Promise<number> {
  const weights = new CheckpointProjections(adapter.baseDir);
  try {
    return model.lora.load((await loadPeftAdapter(adapter.dir, model.spec, { maxRank: model.lora.maxRank, base: { weights, norms: rowNorms } })).weights);
  } finally {
    weights.release();
  }
}

/** Loads adapters one after the other (slots in order) and returns their slots. */
export async function loadAdapters(model: DecoderModel, adapters: readonly TinyAdapter[]): Promise<number[]> {
  const slots: number[] = [];
  for (const a of adapters) slots.push(await loadAdapter(model, a));
  return slots;
}

/** Logits row `i` of a step output. */
export function logitsOf(out: StepOutput, row: number): Float32Array {
  const at = out.logitsRow[row];
  if (at < 0) throw new Error(`row ${row} has no logits`);
  return out.logits.subarray(at * out.vocabSize, (at + 1) * out.vocabSize);
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

export { argmax } from '../../src/runtime/sampling.js';
