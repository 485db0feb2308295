/** Shared helpers for runtime tests: build + load a tiny model, compare logits. */
import { loadPeftAdapter } from '../../src/adapters/peft.js';
import { CheckpointProjections } from '../../src/runtime/checkpoint/projection-weights.js';
import { buildModel, type BuildOptions } from '../../src/runtime/graph/build.js';
import { DecoderModel, type StepOutput } from '../../src/runtime/model.js';
import { tempDir, type TinyAdapter, type TinyModel } from './tiny-model.js';

export async function loadTiny(
  model: TinyModel,
  build: Partial<BuildOptions> = {},
  opts: { kvCacheTokens?: number; adapterSlots?: number; maxLoraRank?: number; cacheDir?: string } = {},
): Promise<DecoderModel> {
  const built = await buildModel(model.dir, { weights: 'fp32', activations: 'fp32', ...build }, { cacheDir: opts.cacheDir ?? tempDir() });
  return DecoderModel.load(built, {
    device: 'cpu',
    allowCpuFallback: false,
    threads: 1,
    kvCacheTokens: opts.kvCacheTokens ?? 1024,
    adapterSlots: opts.adapterSlots ?? 4,
    maxLoraRank: opts.maxLoraRank ?? 64,
  });
}

/** Loads a PEFT adapter into the model's next slot and returns the slot. */
export function loadAdapter(model: DecoderModel, adapter: TinyAdapter): number {
  const base = new CheckpointProjections(adapter.baseDir);
  try {
    return model.lora.load(loadPeftAdapter(adapter.dir, model.spec, { maxRank: model.lora.maxRank, base }).weights);
  } finally {
    base.release();
  }
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
