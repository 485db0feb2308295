/**
 * In-memory description of a tiny Hugging Face-style decoder checkpoint and of PEFT LoRA adapters,
 * as produced by the test generators and consumed by the independent reference forward pass.
 * Everything is float32, row-major, with Hugging Face tensor names and layouts.
 */

export interface RefRopeScaling {
  /** Only Llama 3.1/3.2 style scaling is modelled. */
  ropeType: 'llama3';
  factor: number;
  lowFreqFactor: number;
  highFreqFactor: number;
  originalMaxPositionEmbeddings: number;
}

export interface RefModelConfig {
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  intermediateSize: number;
  vocabSize: number;
  ropeTheta: number;
  rmsNormEps: number;
  tieWordEmbeddings: boolean;
  /** q/k/v projections carry a bias (Qwen2). */
  attentionBias: boolean;
  /** Qwen3: q and k are RMS-normalized per head (q_norm / k_norm, weight [headDim]) before RoPE. Absent = false. */
  qkNorm?: boolean;
  ropeScaling: RefRopeScaling | null;
  /** Sliding-window attention: query t attends keys t - W + 1 .. t, on layers from firstSlidingLayer (default 0) on. */
  slidingWindow?: number | null;
  firstSlidingLayer?: number;
  /** Phi-3: checkpoints hold self_attn.qkv_proj and mlp.gate_up_proj instead of their parts. */
  fused?: boolean;
  /** Phi-3: RoPE rotates the first rotaryDim dimensions of each head (default headDim). */
  rotaryDim?: number;
  /** Phi-3's LongRoPE: frequencies divided by the short factors (long ones once the sequence is longer than `original`), cos/sin times attentionFactor. */
  longRope?: { short: number[]; long: number[]; original: number; attentionFactor: number };
  /** Present for the Gemma family (its layer, norms, embedding scale and soft-capping). */
  gemma?: RefGemma;
}

export interface RefGemma {
  queryPreAttnScalar: number;
  /** Gemma 2: scores and final logits are cap·tanh(x / cap). */
  attnSoftcap: number | null;
  finalSoftcap: number | null;
  /** Which layers use the sliding window (cfg.slidingWindow). */
  slidingLayers: boolean[];
  /** Gemma 3: the sliding layers' RoPE base; the global ones use ropeTheta with positions divided by globalRopeFactor. */
  localRopeTheta: number | null;
  globalRopeFactor: number;
}

export interface RefTensor {
  shape: number[];
  data: Float32Array;
}

/**
 * Hugging Face names and shapes ([out, in] for Linear weights):
 *   model.embed_tokens.weight [vocab, hidden]
 *   model.layers.{i}.input_layernorm.weight [hidden]
 *   model.layers.{i}.self_attn.{q,k,v,o}_proj.weight, model.layers.{i}.self_attn.{q,k,v}_proj.bias
 *   model.layers.{i}.self_attn.{q,k}_norm.weight [headDim] (qkNorm)
 *   model.layers.{i}.post_attention_layernorm.weight [hidden]
 *   model.layers.{i}.mlp.{gate,up,down}_proj.weight
 *   model.norm.weight [hidden]
 *   lm_head.weight [vocab, hidden] (absent when tieWordEmbeddings)
 */
export type RefWeights = Map<string, RefTensor>;

/** Phi-3's fused modules (qkv_proj, gate_up_proj) may be targeted as wholes. */
export type LoraModule = 'q_proj' | 'k_proj' | 'v_proj' | 'o_proj' | 'gate_proj' | 'up_proj' | 'down_proj' | 'qkv_proj' | 'gate_up_proj';

export interface RefLoraPair {
  /** PEFT lora_A.weight, [r, in] */
  a: RefTensor;
  /** PEFT lora_B.weight, [out, r] */
  b: RefTensor;
  /** The PEFT scale for this module: alpha/r, or alpha/sqrt(r) with rsLoRA (patterns applied). */
  scale: number;
  /** DoRA: PEFT lora_magnitude_vector, [out] (the module computes m ⊙ (W + s·B·A) / ‖W + s·B·A‖ by rows). */
  magnitude?: RefTensor;
}

/** One adapter: key `${layer}.${module}` (e.g. "0.q_proj") → the pair. Missing keys = no LoRA there. */
export type RefLora = Map<string, RefLoraPair>;
