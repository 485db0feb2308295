/**
 * config.json → a typed, validated model spec. Only decoder architectures whose math loraplex
 * implements are accepted; everything else is refused with a message naming what is supported.
 */
import { CheckpointError } from '../../errors.js';

export const SUPPORTED_ARCHITECTURES = ['LlamaForCausalLM', 'MistralForCausalLM', 'Qwen2ForCausalLM', 'Qwen3ForCausalLM'] as const;
export type Architecture = (typeof SUPPORTED_ARCHITECTURES)[number];

export interface Llama3RopeScaling {
  ropeType: 'llama3';
  factor: number;
  lowFreqFactor: number;
  highFreqFactor: number;
  originalMaxPositionEmbeddings: number;
}

export interface ModelSpec {
  architecture: Architecture;
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  intermediateSize: number;
  vocabSize: number;
  ropeTheta: number;
  ropeScaling: Llama3RopeScaling | null;
  rmsNormEps: number;
  tieWordEmbeddings: boolean;
  /** q/k/v projections carry a bias (always for Qwen2, `attention_bias` for Llama and Qwen3). */
  attentionBias: boolean;
  /** Qwen3: each head of q and k is RMS-normalized (`q_norm`, `k_norm`, weight [headDim]) before RoPE. */
  qkNorm: boolean;
  maxPositionEmbeddings: number;
  /** Mistral's sliding window, when the checkpoint sets one; the usable context is capped to it. */
  slidingWindow: number | null;
  bosTokenId: number | null;
  eosTokenIds: number[];
}

/** The per-layer linear projections, in Hugging Face naming (also PEFT's `target_modules`). */
export const PROJECTIONS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] as const;
export type Projection = (typeof PROJECTIONS)[number];

/** [in, out] features of a projection. */
export function projectionShape(spec: ModelSpec, p: Projection): [number, number] {
  const q = spec.numHeads * spec.headDim;
  const kv = spec.numKvHeads * spec.headDim;
  switch (p) {
    case 'q_proj':
      return [spec.hiddenSize, q];
    case 'k_proj':
    case 'v_proj':
      return [spec.hiddenSize, kv];
    case 'o_proj':
      return [q, spec.hiddenSize];
    case 'gate_proj':
    case 'up_proj':
      return [spec.hiddenSize, spec.intermediateSize];
    case 'down_proj':
      return [spec.intermediateSize, spec.hiddenSize];
  }
}

/** The module path of a projection inside a layer (`self_attn.q_proj`, `mlp.up_proj`). */
export function projectionPath(p: Projection): string {
  return p === 'gate_proj' || p === 'up_proj' || p === 'down_proj' ? `mlp.${p}` : `self_attn.${p}`;
}

type Json = Record<string, unknown>;

function int(cfg: Json, key: string, file: string, fallback?: number): number {
  const v = cfg[key] ?? fallback;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) {
    throw new CheckpointError(`${file}: ${key} must be a positive integer, got ${JSON.stringify(cfg[key])}`);
  }
  return v;
}

function num(cfg: Json, key: string, file: string, fallback: number): number {
  const v = cfg[key] ?? fallback;
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) {
    throw new CheckpointError(`${file}: ${key} must be a positive number, got ${JSON.stringify(cfg[key])}`);
  }
  return v;
}

/** A token id field of config.json / generation_config.json: a number or a list of numbers. */
export function tokenIds(v: unknown): number[] {
  if (typeof v === 'number') return [v];
  if (Array.isArray(v)) return v.filter((x): x is number => typeof x === 'number');
  return [];
}

/** Parses a config.json object. `file` names the file in error messages. */
export function parseModelSpec(cfg: Json, file = 'config.json'): ModelSpec {
  const archs = cfg.architectures;
  const arch = Array.isArray(archs) && typeof archs[0] === 'string' ? archs[0] : undefined;
  if (!arch || !(SUPPORTED_ARCHITECTURES as readonly string[]).includes(arch)) {
    throw new CheckpointError(
      `${file}: architecture ${arch ?? '(none given)'} is not supported; supported: ${SUPPORTED_ARCHITECTURES.join(', ')}`,
    );
  }
  const architecture = arch as Architecture;
  const act = cfg.hidden_act ?? 'silu';
  if (act !== 'silu') throw new CheckpointError(`${file}: hidden_act ${JSON.stringify(act)} is not supported (expected "silu")`);
  if (cfg.mlp_bias === true) throw new CheckpointError(`${file}: mlp_bias=true is not supported`);

  const hiddenSize = int(cfg, 'hidden_size', file);
  const numHeads = int(cfg, 'num_attention_heads', file);
  const numKvHeads = int(cfg, 'num_key_value_heads', file, numHeads);
  if (numHeads % numKvHeads !== 0) {
    throw new CheckpointError(`${file}: num_attention_heads (${numHeads}) must be a multiple of num_key_value_heads (${numKvHeads})`);
  }
  const headDim = cfg.head_dim == null ? hiddenSize / numHeads : int(cfg, 'head_dim', file);
  if (!Number.isInteger(headDim) || headDim % 2 !== 0) {
    throw new CheckpointError(`${file}: head dimension ${headDim} must be an even integer (hidden_size / num_attention_heads or head_dim)`);
  }

  let ropeScaling: Llama3RopeScaling | null = null;
  const rs = cfg.rope_scaling as Json | null | undefined;
  if (rs != null) {
    const type = rs.rope_type ?? rs.type;
    if (type === 'default') {
      ropeScaling = null;
    } else if (type !== 'llama3') {
      throw new CheckpointError(`${file}: rope_scaling type ${JSON.stringify(type)} is not supported (supported: llama3)`);
    } else {
      ropeScaling = {
        ropeType: 'llama3',
        factor: num(rs, 'factor', `${file} rope_scaling`, 8),
        lowFreqFactor: num(rs, 'low_freq_factor', `${file} rope_scaling`, 1),
        highFreqFactor: num(rs, 'high_freq_factor', `${file} rope_scaling`, 4),
        originalMaxPositionEmbeddings: int(rs, 'original_max_position_embeddings', `${file} rope_scaling`, 8192),
      };
    }
  }
  const useSliding = architecture === 'MistralForCausalLM' || cfg.use_sliding_window === true;
  const sw = cfg.sliding_window;
  const slidingWindow = useSliding && typeof sw === 'number' && sw > 0 ? sw : null;

  return {
    architecture,
    hiddenSize,
    numLayers: int(cfg, 'num_hidden_layers', file),
    numHeads,
    numKvHeads,
    headDim,
    intermediateSize: int(cfg, 'intermediate_size', file),
    vocabSize: int(cfg, 'vocab_size', file),
    ropeTheta: num(cfg, 'rope_theta', file, 10000),
    ropeScaling,
    rmsNormEps: num(cfg, 'rms_norm_eps', file, 1e-6),
    tieWordEmbeddings: cfg.tie_word_embeddings === true,
    attentionBias: architecture === 'Qwen2ForCausalLM' || cfg.attention_bias === true,
    qkNorm: architecture === 'Qwen3ForCausalLM',
    maxPositionEmbeddings: int(cfg, 'max_position_embeddings', file, 4096),
    slidingWindow,
    bosTokenId: typeof cfg.bos_token_id === 'number' ? cfg.bos_token_id : null,
    eosTokenIds: tokenIds(cfg.eos_token_id),
  };
}

/** Rotary inverse frequencies [headDim/2], with Llama 3 scaling applied when configured. */
export function ropeInvFreq(spec: ModelSpec): Float64Array {
  const half = spec.headDim / 2;
  const inv = new Float64Array(half);
  for (let i = 0; i < half; i++) inv[i] = 1 / Math.pow(spec.ropeTheta, (2 * i) / spec.headDim);
  const s = spec.ropeScaling;
  if (s) {
    const lowWavelen = s.originalMaxPositionEmbeddings / s.lowFreqFactor;
    const highWavelen = s.originalMaxPositionEmbeddings / s.highFreqFactor;
    for (let i = 0; i < half; i++) {
      const wavelen = (2 * Math.PI) / inv[i];
      if (wavelen < highWavelen) continue;
      if (wavelen > lowWavelen) {
        inv[i] /= s.factor;
      } else {
        const smooth = (s.originalMaxPositionEmbeddings / wavelen - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor);
        inv[i] = ((1 - smooth) * inv[i]) / s.factor + smooth * inv[i];
      }
    }
  }
  return inv;
}
