/**
 * Random-weight checkpoints of a given shape, written in Hugging Face format. The demo model and the
 * benchmarks use them: speed does not depend on the weights' values, and nothing can be downloaded.
 */
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { symmetricPrng } from '../../util/prng.js';
import { writeSafetensors, type TensorToWrite } from './writer.js';

export interface CheckpointShape {
  architecture: 'LlamaForCausalLM' | 'MistralForCausalLM' | 'Qwen2ForCausalLM' | 'Qwen3ForCausalLM';
  hiddenSize: number;
  /** Per-head dimension (default hiddenSize / numHeads; Qwen3 sets its own). */
  headDim?: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  intermediateSize: number;
  vocabSize: number;
  tieWordEmbeddings: boolean;
  maxPositionEmbeddings: number;
  ropeTheta?: number;
  bosTokenId?: number | null;
  eosTokenId?: number | number[] | null;
}

/** Qwen2.5-0.5B's shape: the benchmarks' "real" model size. */
export const QWEN2_5_0_5B: CheckpointShape = {
  architecture: 'Qwen2ForCausalLM',
  hiddenSize: 896,
  numLayers: 24,
  numHeads: 14,
  numKvHeads: 2,
  intermediateSize: 4864,
  vocabSize: 151936,
  tieWordEmbeddings: true,
  maxPositionEmbeddings: 32768,
  ropeTheta: 1000000,
};

const uniform = symmetricPrng;

export function writeRandomCheckpoint(
  dir: string,
  shape: CheckpointShape,
  opts: { seed?: number; dtype?: 'F32' | 'BF16' | 'F16'; progress?: (done: number, total: number) => void } = {},
): void {
  mkdirSync(dir, { recursive: true });
  const next = uniform(opts.seed ?? 1);
  const dtype = opts.dtype ?? 'BF16';
  const H = shape.hiddenSize;
  const headDim = shape.headDim ?? H / shape.numHeads;
  const q = shape.numHeads * headDim;
  const kv = shape.numKvHeads * headDim;
  const I = shape.intermediateSize;
  const tensors: TensorToWrite[] = [];
  let done = 0;
  const qkNorm = shape.architecture === 'Qwen3ForCausalLM';
  /** Tensors to write (set once all are listed; progress is reported as each is generated). */
  let total = 0;
  // Uniform with the standard deviation of a Gaussian(0, std): amplitude std·√3.
  const add = (name: string, dims: number[], std: number, mean = 0): void => {
    tensors.push({
      name,
      shape: dims,
      dtype,
      data: () => {
        const n = dims.reduce((a, b) => a * b, 1);
        const out = new Float32Array(n);
        const amp = std * Math.sqrt(3);
        for (let i = 0; i < n; i++) out[i] = mean + amp * next();
        opts.progress?.(++done, total);
        return out;
      },
    });
  };
  add('model.embed_tokens.weight', [shape.vocabSize, H], 0.02);
  const bias = shape.architecture === 'Qwen2ForCausalLM';
  for (let l = 0; l < shape.numLayers; l++) {
    const p = `model.layers.${l}`;
    add(`${p}.input_layernorm.weight`, [H], 0.05, 1);
    add(`${p}.self_attn.q_proj.weight`, [q, H], 0.02);
    add(`${p}.self_attn.k_proj.weight`, [kv, H], 0.02);
    add(`${p}.self_attn.v_proj.weight`, [kv, H], 0.02);
    if (bias) {
      add(`${p}.self_attn.q_proj.bias`, [q], 0.02);
      add(`${p}.self_attn.k_proj.bias`, [kv], 0.02);
      add(`${p}.self_attn.v_proj.bias`, [kv], 0.02);
    }
    if (qkNorm) {
      add(`${p}.self_attn.q_norm.weight`, [headDim], 0.05, 1);
      add(`${p}.self_attn.k_norm.weight`, [headDim], 0.05, 1);
    }
    add(`${p}.self_attn.o_proj.weight`, [H, q], 0.02);
    add(`${p}.post_attention_layernorm.weight`, [H], 0.05, 1);
    add(`${p}.mlp.gate_proj.weight`, [I, H], 0.02);
    add(`${p}.mlp.up_proj.weight`, [I, H], 0.02);
    add(`${p}.mlp.down_proj.weight`, [H, I], 0.02);
  }
  add('model.norm.weight', [H], 0.05, 1);
  if (!shape.tieWordEmbeddings) add('lm_head.weight', [shape.vocabSize, H], 0.02);
  total = tensors.length;

  const model_type = { LlamaForCausalLM: 'llama', MistralForCausalLM: 'mistral', Qwen2ForCausalLM: 'qwen2', Qwen3ForCausalLM: 'qwen3' }[shape.architecture];
  writeFileSync(
    join(dir, 'config.json'),
    JSON.stringify(
      {
        architectures: [shape.architecture],
        model_type,
        hidden_size: H,
        intermediate_size: I,
        num_hidden_layers: shape.numLayers,
        num_attention_heads: shape.numHeads,
        num_key_value_heads: shape.numKvHeads,
        head_dim: headDim,
        vocab_size: shape.vocabSize,
        max_position_embeddings: shape.maxPositionEmbeddings,
        rope_theta: shape.ropeTheta ?? 10000,
        rms_norm_eps: 1e-6,
        tie_word_embeddings: shape.tieWordEmbeddings,
        hidden_act: 'silu',
        bos_token_id: shape.bosTokenId ?? null,
        eos_token_id: shape.eosTokenId ?? null,
        torch_dtype: { F32: 'float32', BF16: 'bfloat16', F16: 'float16' }[dtype],
      },
      null,
      2,
    ),
  );
  writeSafetensors(join(dir, 'model.safetensors'), tensors);
}

/** Writes the checkpoint unless `dir` already holds one (a marker file records completion). */
export function ensureRandomCheckpoint(dir: string, shape: CheckpointShape, opts: Parameters<typeof writeRandomCheckpoint>[2] = {}): boolean {
  const marker = join(dir, '.complete');
  if (existsSync(marker)) return false;
  writeRandomCheckpoint(dir, shape, opts);
  writeFileSync(marker, JSON.stringify({ shape, seed: opts.seed ?? 1 }));
  return true;
}
