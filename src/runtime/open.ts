/**
 * From configuration to a running decoder: build (or reuse) the cached graph, then load it.
 */
import { existsSync } from 'node:fs';
import { RuntimeConfigError } from '../errors.js';
import { buildModel, type BuiltModel } from './graph/build.js';
import type { WeightFormat } from './graph/quant.js';
import type { LinearCompute } from './graph/linear.js';
import { DecoderModel } from './model.js';
import type { Device } from './session.js';
import { TextTokenizer } from './tokenizer.js';
import type { Progress } from '../util/progress.js';

export interface RuntimeSettings {
  model: string;
  quant: WeightFormat;
  activations: 'fp32' | 'fp16';
  /** The lm_head's compute precision with int4/int8 weights. */
  lmHeadAccuracy?: LinearCompute;
  device: Device;
  allowCpuFallback: boolean;
  threads: number;
  /** onnxruntime profiling file prefix (unset: off). */
  ortProfile?: string;
  cacheDir: string;
  /** 0 = the model's own limit */
  maxContext: number;
  kvCacheTokens: number;
  maxLoraRank: number;
  maxActiveAdapters: number;
}

export interface OpenedRuntime {
  built: BuiltModel;
  model: DecoderModel;
  tokenizer: TextTokenizer | null;
}

export async function buildFromSettings(s: RuntimeSettings, progress?: Progress, log?: (m: string) => void): Promise<BuiltModel> {
  if (!existsSync(s.model)) throw new RuntimeConfigError(`model directory ${s.model} does not exist`);
  return buildModel(
    s.model,
    { weights: s.quant, activations: s.activations, maxPositions: s.maxContext > 0 ? s.maxContext : undefined, lmHeadAccuracy: s.lmHeadAccuracy },
    { cacheDir: s.cacheDir, progress, log },
  );
}

export async function openRuntime(s: RuntimeSettings, progress?: Progress, log?: (m: string) => void): Promise<OpenedRuntime> {
  const built = await buildFromSettings(s, progress, log);
  const tokenizer = TextTokenizer.load(s.model);
  const model = await DecoderModel.load(built, {
    device: s.device,
    allowCpuFallback: s.allowCpuFallback,
    threads: s.threads,
    profilePrefix: s.ortProfile ?? null,
    kvCacheTokens: s.kvCacheTokens,
    adapterSlots: s.maxActiveAdapters,
    maxLoraRank: s.maxLoraRank,
    log,
  });
  return { built, model, tokenizer };
}
