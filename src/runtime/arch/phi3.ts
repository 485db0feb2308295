/**
 * Phi-3 / Phi-3.5 / Phi-4-mini (Phi3ForCausalLM): the Llama layer with fused checkpoint tensors
 * (`self_attn.qkv_proj`, `mlp.gate_up_proj`), LongRoPE scaling (`longrope`, formerly `su`), partial
 * rotary embeddings (`partial_rotary_factor`) and a sliding window on every layer when the config
 * sets one. The layer's ops are the Llama family's (arch/llama.ts), which already runs q|k|v and
 * gate|up fused; only the config, the tensor table and the weights' reading are Phi-3's own.
 *
 * LongRoPE: positions within original_max_position_embeddings rotate with the short factors, later
 * ones with the long factors (transformers switches a whole sequence to the long factors once it is
 * longer; a prompt within the original context gets the same answer either way).
 */
import { CheckpointError } from '../../errors.js';
import { tokenIds, type ModelSpec } from '../checkpoint/spec.js';
import type { LinearWeight } from '../graph/linear.js';
import { attentionShape, int, num, type Json } from './config-fields.js';
import type { ExpectedTensor, Family, TensorReader } from './family.js';
import { llamaLayers } from './llama.js';
import type { LongRopeScaling } from './rope.js';

export const PHI3_ARCHITECTURES = ['Phi3ForCausalLM'] as const;

/** Phi-3's fields are the shared ones; its own is the LongRoPE scaling. */
export interface Phi3Spec extends ModelSpec {
  family: 'phi3';
  architecture: (typeof PHI3_ARCHITECTURES)[number];
  ropeScaling: LongRopeScaling | null;
}

const layer = (l: number) => `model.layers.${l}`;

function factors(rs: Json, key: string, half: number, file: string): number[] {
  const v = rs[key];
  if (!Array.isArray(v) || v.length !== half || !v.every((x) => typeof x === 'number' && Number.isFinite(x) && x > 0)) {
    throw new CheckpointError(`${file}: rope_scaling.${key} must be ${half} positive numbers (rotary dimension / 2)`);
  }
  return v as number[];
}

function parseConfig(cfg: Json, architecture: Phi3Spec['architecture'], file: string): Phi3Spec {
  const act = cfg.hidden_act ?? 'silu';
  if (act !== 'silu') throw new CheckpointError(`${file}: hidden_act ${JSON.stringify(act)} is not supported (expected "silu")`);
  if (cfg.attention_bias === true) throw new CheckpointError(`${file}: attention_bias=true is not supported for ${architecture}`);
  const shape = attentionShape(cfg, file);
  const { numLayers, headDim } = shape;
  const partial = cfg.partial_rotary_factor == null ? 1 : num(cfg, 'partial_rotary_factor', file, 1);
  const rotaryDim = Math.floor(headDim * partial);
  if (rotaryDim % 2 !== 0 || partial > 1) throw new CheckpointError(`${file}: the rotary dimension (head_dim ${headDim} × partial_rotary_factor ${partial}) must be an even integer`);
  const maxPositionEmbeddings = int(cfg, 'max_position_embeddings', file, 4096);
  const original = int(cfg, 'original_max_position_embeddings', file, maxPositionEmbeddings);

  let ropeScaling: LongRopeScaling | null = null;
  const rs = cfg.rope_scaling as Json | null | undefined;
  if (rs != null) {
    const type = rs.rope_type ?? rs.type;
    if (type !== 'longrope' && type !== 'su') throw new CheckpointError(`${file}: rope_scaling type ${JSON.stringify(type)} is not supported for ${architecture} (supported: longrope, su)`);
    const factor = maxPositionEmbeddings / original;
    const attentionFactor = typeof rs.attention_factor === 'number' ? rs.attention_factor : factor <= 1 ? 1 : Math.sqrt(1 + Math.log(factor) / Math.log(original));
    ropeScaling = { ropeType: 'longrope', shortFactor: factors(rs, 'short_factor', rotaryDim / 2, file), longFactor: factors(rs, 'long_factor', rotaryDim / 2, file), originalMaxPositionEmbeddings: original, attentionFactor };
  }
  const slidingWindow = cfg.sliding_window == null ? null : int(cfg, 'sliding_window', file);

  return {
    family: 'phi3',
    architecture,
    ...shape,
    rotaryDim,
    intermediateSize: int(cfg, 'intermediate_size', file),
    vocabSize: int(cfg, 'vocab_size', file),
    ropeTheta: num(cfg, 'rope_theta', file, 10000),
    ropeScaling,
    rmsNormEps: num(cfg, 'rms_norm_eps', file, 1e-5),
    tieWordEmbeddings: cfg.tie_word_embeddings === true,
    maxPositionEmbeddings,
    slidingWindow,
    slidingLayers: Array.from({ length: numLayers }, () => slidingWindow !== null),
    bosTokenId: typeof cfg.bos_token_id === 'number' ? cfg.bos_token_id : null,
    eosTokenIds: tokenIds(cfg.eos_token_id),
  };
}

function tensors(spec: Phi3Spec): ExpectedTensor[] {
  const H = spec.hiddenSize;
  const qkv = (spec.numHeads + 2 * spec.numKvHeads) * spec.headDim;
  const out: ExpectedTensor[] = [{ name: 'model.embed_tokens.weight', shape: [spec.vocabSize, H] }];
  for (let l = 0; l < spec.numLayers; l++) {
    const p = layer(l);
    out.push(
      { name: `${p}.input_layernorm.weight`, shape: [H] },
      { name: `${p}.post_attention_layernorm.weight`, shape: [H] },
      { name: `${p}.self_attn.qkv_proj.weight`, shape: [qkv, H] },
      { name: `${p}.self_attn.o_proj.weight`, shape: [H, spec.numHeads * spec.headDim] },
      { name: `${p}.mlp.gate_up_proj.weight`, shape: [2 * spec.intermediateSize, H] },
      { name: `${p}.mlp.down_proj.weight`, shape: [H, spec.intermediateSize] },
    );
  }
  out.push({ name: 'model.norm.weight', shape: [H] });
  if (!spec.tieWordEmbeddings) out.push({ name: 'lm_head.weight', shape: [spec.vocabSize, H] });
  return out;
}

function layerWeights(ckpt: TensorReader, spec: Phi3Spec, l: number): LinearWeight[] {
  const p = layer(l);
  const qDim = spec.numHeads * spec.headDim;
  return [
    { w: ckpt.read(`${p}.self_attn.qkv_proj.weight`), n: qDim + 2 * spec.numKvHeads * spec.headDim, k: spec.hiddenSize },
    { w: ckpt.read(`${p}.self_attn.o_proj.weight`), n: spec.hiddenSize, k: qDim },
    { w: ckpt.read(`${p}.mlp.gate_up_proj.weight`), n: 2 * spec.intermediateSize, k: spec.hiddenSize },
    { w: ckpt.read(`${p}.mlp.down_proj.weight`), n: spec.hiddenSize, k: spec.intermediateSize },
  ];
}

export const PHI3_FAMILY: Family<Phi3Spec> = {
  architectures: PHI3_ARCHITECTURES,
  parseConfig,
  tensors,
  layerWeights,
  ...llamaLayers<Phi3Spec>(() => false),
};
