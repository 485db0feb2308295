/**
 * Random PEFT LoRA adapters for a model shape, written as real PEFT files. The demo's adapters and
 * the benchmarks use them; nothing can be downloaded.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PROJECTIONS, projectionPath, projectionShape, type ModelSpec, type Projection } from '../runtime/checkpoint/spec.js';
import { writeSafetensors, type TensorToWrite } from '../runtime/checkpoint/writer.js';
import { symmetricPrng } from '../util/prng.js';
import { ADAPTER_CONFIG, ADAPTER_WEIGHTS } from './peft.js';

export interface RandomAdapterOptions {
  rank: number;
  alpha?: number;
  targets?: readonly Projection[];
  seed?: number;
  /** Standard deviation of lora_B entries (lora_A uses 1/sqrt(in)). */
  bStd?: number;
  baseModel?: string;
  /**
   * Write a DoRA adapter (use_dora) whose magnitude entries are this value times a random factor in
   * [0.9, 1.1] (a real adapter's start at the base weight's row norms).
   */
  doraMagnitude?: number;
}

export function writeRandomPeftAdapter(dir: string, spec: ModelSpec, opts: RandomAdapterOptions): void {
  const next = symmetricPrng(opts.seed ?? 1);
  const targets = opts.targets ?? PROJECTIONS;
  const tensors: TensorToWrite[] = [];
  const random = (n: number, std: number): Float32Array => {
    const out = new Float32Array(n);
    const amp = std * Math.sqrt(3);
    for (let i = 0; i < n; i++) out[i] = amp * next();
    return out;
  };
  for (let l = 0; l < spec.numLayers; l++) {
    for (const p of targets) {
      const [din, dout] = projectionShape(spec, p);
      const prefix = `base_model.model.model.layers.${l}.${projectionPath(p)}`;
      tensors.push({ name: `${prefix}.lora_A.weight`, shape: [opts.rank, din], dtype: 'F32', data: () => random(opts.rank * din, 1 / Math.sqrt(din)) });
      tensors.push({ name: `${prefix}.lora_B.weight`, shape: [dout, opts.rank], dtype: 'F32', data: () => random(dout * opts.rank, opts.bStd ?? 0.01) });
      const m = opts.doraMagnitude;
      if (m !== undefined) tensors.push({ name: `${prefix}.lora_magnitude_vector`, shape: [dout], dtype: 'F32', data: () => random(dout, m * 0.1 / Math.sqrt(3)).map((x) => m + x) });
    }
  }
  mkdirSync(dir, { recursive: true });
  writeSafetensors(join(dir, ADAPTER_WEIGHTS), tensors);
  writeFileSync(
    join(dir, ADAPTER_CONFIG),
    JSON.stringify(
      {
        peft_type: 'LORA',
        task_type: 'CAUSAL_LM',
        base_model_name_or_path: opts.baseModel ?? null,
        r: opts.rank,
        lora_alpha: opts.alpha ?? 2 * opts.rank,
        lora_dropout: 0,
        target_modules: targets,
        use_rslora: false,
        use_dora: opts.doraMagnitude !== undefined,
        bias: 'none',
        modules_to_save: null,
      },
      null,
      2,
    ),
  );
}
