/**
 * The typed model spec every layer reads (config.json parsed by the model's family, see
 * arch/families.ts), the supported architectures, and the projections' shapes and module paths.
 */

export const SUPPORTED_ARCHITECTURES = ['LlamaForCausalLM', 'MistralForCausalLM', 'Qwen2ForCausalLM', 'Qwen3ForCausalLM', 'Gemma2ForCausalLM', 'Gemma3ForCausalLM', 'Phi3ForCausalLM'] as const;
export type Architecture = (typeof SUPPORTED_ARCHITECTURES)[number];

export interface Llama3RopeScaling {
  ropeType: 'llama3';
  factor: number;
  lowFreqFactor: number;
  highFreqFactor: number;
  originalMaxPositionEmbeddings: number;
}

/** Position indices divided by `factor` (Gemma 3's global layers). */
export interface LinearRopeScaling {
  ropeType: 'linear';
  factor: number;
}

/**
 * Phi-3's LongRoPE (`longrope`, formerly `su`): per-frequency divisors, `shortFactor` for positions
 * within the original context and `longFactor` beyond it, and cos/sin scaled by `attentionFactor`.
 */
export interface LongRopeScaling {
  ropeType: 'longrope';
  shortFactor: number[];
  longFactor: number[];
  originalMaxPositionEmbeddings: number;
  attentionFactor: number;
}

export type RopeScaling = Llama3RopeScaling | LinearRopeScaling | LongRopeScaling;

export interface ModelSpec {
  architecture: Architecture;
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  /** Dimensions of each head that RoPE rotates (the first ones; Phi-4-mini's partial_rotary_factor). */
  rotaryDim: number;
  intermediateSize: number;
  vocabSize: number;
  ropeTheta: number;
  ropeScaling: RopeScaling | null;
  /** Gemma 3: the RoPE base of the sliding-window layers, which use no scaling (null: ropeTheta everywhere). */
  localRopeTheta: number | null;
  rmsNormEps: number;
  tieWordEmbeddings: boolean;
  /** q/k/v projections carry a bias (always for Qwen2, `attention_bias` for Llama and Qwen3). */
  attentionBias: boolean;
  /** Qwen3: each head of q and k is RMS-normalized (`q_norm`, `k_norm`, weight [headDim]) before RoPE. */
  qkNorm: boolean;
  maxPositionEmbeddings: number;
  /** Sliding-window attention: a query sees itself and the `slidingWindow - 1` keys before it, on the layers marked in `slidingLayers`. */
  slidingWindow: number | null;
  slidingLayers: boolean[];
  /** Multiplier of q·k (null: 1/√headDim; Gemma: query_pre_attn_scalar^-0.5). */
  attentionScale: number | null;
  /** Gemma 2: scores = cap·tanh(scores / cap) before the softmax, and logits likewise. */
  attnLogitSoftcap: number | null;
  finalLogitSoftcap: number | null;
  bosTokenId: number | null;
  eosTokenIds: number[];
}

/** The per-layer linear projections, in Hugging Face naming (also PEFT's `target_modules`). */
export const PROJECTIONS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] as const;
export type Projection = (typeof PROJECTIONS)[number];

/**
 * Fused modules (Phi-3's checkpoints): PEFT adapters may target them. A fused module's LoRA is its
 * parts' LoRAs with the same A and B split by rows — exactly — so it is served as those.
 */
export const FUSED_PROJECTIONS = {
  qkv_proj: { path: 'self_attn.qkv_proj', parts: ['q_proj', 'k_proj', 'v_proj'] },
  gate_up_proj: { path: 'mlp.gate_up_proj', parts: ['gate_proj', 'up_proj'] },
} as const satisfies Record<string, { path: string; parts: readonly Projection[] }>;
export type FusedProjection = keyof typeof FUSED_PROJECTIONS;

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

/** A token id field of config.json / generation_config.json: a number or a list of numbers. */
export function tokenIds(v: unknown): number[] {
  if (typeof v === 'number') return [v];
  if (Array.isArray(v)) return v.filter((x): x is number => typeof x === 'number');
  return [];
}

/** Rotary inverse frequencies [headDim/2], with Llama 3 scaling applied when configured. */
export function ropeInvFreq(spec: ModelSpec, local = false, long = false): Float64Array {
  const half = spec.rotaryDim / 2;
  const inv = new Float64Array(half);
  const base = local && spec.localRopeTheta !== null ? spec.localRopeTheta : spec.ropeTheta;
  for (let i = 0; i < half; i++) inv[i] = 1 / Math.pow(base, (2 * i) / spec.rotaryDim);
  const s = local && spec.localRopeTheta !== null ? null : spec.ropeScaling;
  if (s?.ropeType === 'longrope') {
    const f = long ? s.longFactor : s.shortFactor;
    for (let i = 0; i < half; i++) inv[i] /= f[i];
  } else if (s?.ropeType === 'linear') {
    for (let i = 0; i < half; i++) inv[i] /= s.factor;
  } else if (s) {
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

/** Layer l's sliding window, or null when it attends over the whole context. */
export function attentionWindow(spec: ModelSpec, l: number): number | null {
  return spec.slidingWindow !== null && spec.slidingLayers[l] ? spec.slidingWindow : null;
}
