/**
 * Deterministic tiny random checkpoints and PEFT adapters, written to disk in Hugging Face format and
 * kept in memory (RefWeights / RefLora) for the reference forward pass.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { floatToBf16 } from '../../src/runtime/checkpoint/safetensors.js';
import { writeSafetensors, type TensorToWrite } from '../../src/runtime/checkpoint/writer.js';
import type { LoraModule, RefLora, RefModelConfig, RefTensor, RefWeights } from './model-types.js';

export { prng } from '../../src/util/prng.js';
import { prng } from '../../src/util/prng.js';
import { tempDir } from './temp-dir.js';

export function randn(rand: () => number, n: number, std: number, mean = 0): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const u = rand() || 1e-12;
    const v = rand();
    out[i] = mean + std * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }
  return out;
}

export type Flavour = 'llama' | 'qwen2' | 'qwen3' | 'mistral' | 'gemma2' | 'gemma3' | 'phi3';

export interface TinyModelOptions {
  flavour?: Flavour;
  seed?: number;
  hiddenSize?: number;
  numLayers?: number;
  numHeads?: number;
  numKvHeads?: number;
  headDim?: number;
  intermediateSize?: number;
  vocabSize?: number;
  tieWordEmbeddings?: boolean;
  dtype?: 'F32' | 'BF16';
  /** Split the weights over this many shards with an index file. */
  shards?: number;
  ropeScaling?: RefModelConfig['ropeScaling'];
  maxPositionEmbeddings?: number;
  /** Sliding-window attention: Mistral's `sliding_window`, or Qwen's `use_sliding_window` from layer `maxWindowLayers` on. */
  slidingWindow?: number;
  maxWindowLayers?: number;
  /** Phi-3: the fraction of each head RoPE rotates (default 0.5 for the tiny Phi-3, 1 elsewhere). */
  partialRotaryFactor?: number;
  /** Extra config.json fields (to test refusals). */
  configOverrides?: Record<string, unknown>;
  /**
   * Peaked next-token distributions like a trained model's: the untied head is
   * `peaked * embed[perm(v)] + noise`, so each token strongly predicts a successor, and the layers
   * perturb that choice. 0 (default) = a plain random head.
   */
  peaked?: number;
  /** Multiplier on o_proj/down_proj (the residual writers); trained models keep these small. Default 1. */
  residualScale?: number;
  /**
   * Outlier channels like a real LLM's: two hidden channels of every projection's normed input are
   * `outliers` times larger (their norm weights scaled up) while the projections' columns for them
   * are scaled down by as much, so the fp32 model computes the same function but the activations a
   * quantizer sees have a few huge channels. Non-Gemma llama-style flavours only. 0 = none.
   */
  outliers?: number;
}

export interface TinyModel {
  dir: string;
  cfg: RefModelConfig;
  weights: RefWeights;
}

const MODULE_PATH: Record<LoraModule, string> = {
  q_proj: 'self_attn.q_proj',
  k_proj: 'self_attn.k_proj',
  v_proj: 'self_attn.v_proj',
  o_proj: 'self_attn.o_proj',
  gate_proj: 'mlp.gate_proj',
  up_proj: 'mlp.up_proj',
  down_proj: 'mlp.down_proj',
  qkv_proj: 'self_attn.qkv_proj',
  gate_up_proj: 'mlp.gate_up_proj',
};
/** Every (unfused) projection. */
export const ALL_MODULES: LoraModule[] = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'];
/** Phi-3's modules as PEFT names them on its fused checkpoints. */
export const PHI3_MODULES: LoraModule[] = ['qkv_proj', 'o_proj', 'gate_up_proj', 'down_proj'];

export function moduleShape(cfg: RefModelConfig, m: LoraModule): [number, number] {
  const q = cfg.numHeads * cfg.headDim;
  const kv = cfg.numKvHeads * cfg.headDim;
  const h = cfg.hiddenSize;
  const shapes: Record<LoraModule, [number, number]> = {
    q_proj: [h, q],
    k_proj: [h, kv],
    v_proj: [h, kv],
    o_proj: [q, h],
    gate_proj: [h, cfg.intermediateSize],
    up_proj: [h, cfg.intermediateSize],
    down_proj: [cfg.intermediateSize, h],
    qkv_proj: [h, q + 2 * kv],
    gate_up_proj: [h, 2 * cfg.intermediateSize],
  };
  return shapes[m];
}

function roundBf16(a: Float32Array): Float32Array {
  const u = new Uint32Array(a.buffer, a.byteOffset, a.length);
  for (let i = 0; i < a.length; i++) u[i] = floatToBf16(a[i]) << 16;
  return a;
}

export { tempDir } from './temp-dir.js';

/** Writes a tiny random checkpoint (config.json + safetensors) and returns it with its in-memory weights. */
export function makeTinyModel(opts: TinyModelOptions = {}, dir = tempDir()): TinyModel {
  const flavour = opts.flavour ?? 'llama';
  const gemma = flavour === 'gemma2' || flavour === 'gemma3';
  const numHeads = opts.numHeads ?? 4;
  const headDim = opts.headDim ?? 16;
  const numLayers = opts.numLayers ?? 2;
  // Tiny Gemmas: caps small enough to bite, a scalar that is not headDim, windows on every other layer;
  // Gemma 3 with its local RoPE base and linear scaling on the global layers.
  const gemmaCfg = gemma
    ? {
        queryPreAttnScalar: 24,
        attnSoftcap: flavour === 'gemma2' ? 3 : null,
        finalSoftcap: flavour === 'gemma2' ? 4 : null,
        slidingLayers: Array.from({ length: numLayers }, (_, l) => l % 2 === 0),
        localRopeTheta: flavour === 'gemma3' ? 10000 : null,
        globalRopeFactor: flavour === 'gemma3' ? 2 : 1,
      }
    : undefined;
  // Tiny Phi-3: half-rotary heads and LongRoPE factors within an original context of 64 (longer than the tests' sequences).
  const phi3 = flavour === 'phi3';
  const rotaryDim = phi3 ? Math.floor(headDim * (opts.partialRotaryFactor ?? 0.5)) : headDim;
  const longRope = phi3
    ? (() => {
        const r = prng((opts.seed ?? 1) + 999);
        const factors = (lo: number, hi: number) => Array.from({ length: rotaryDim / 2 }, () => lo + (hi - lo) * r());
        const original = 64;
        const max = opts.maxPositionEmbeddings ?? 512;
        return { short: factors(1, 1.5), long: factors(1, 8), original, attentionFactor: Math.sqrt(1 + Math.log(max / original) / Math.log(original)) };
      })()
    : undefined;
  const cfg: RefModelConfig = {
    hiddenSize: opts.hiddenSize ?? 64,
    numLayers,
    numHeads,
    numKvHeads: opts.numKvHeads ?? 2,
    headDim,
    intermediateSize: opts.intermediateSize ?? 96,
    vocabSize: opts.vocabSize ?? 128,
    ropeTheta: flavour === 'gemma3' ? 1_000_000 : 10000,
    rmsNormEps: 1e-5,
    tieWordEmbeddings: opts.tieWordEmbeddings ?? (flavour === 'qwen2' || gemma),
    attentionBias: flavour === 'qwen2',
    qkNorm: flavour === 'qwen3' || flavour === 'gemma3',
    gemma: gemmaCfg,
    fused: phi3,
    rotaryDim,
    longRope,
    ropeScaling: opts.ropeScaling ?? null,
    slidingWindow: opts.slidingWindow ?? (gemma ? 4 : null),
    firstSlidingLayer: flavour === 'mistral' ? 0 : (opts.maxWindowLayers ?? 0),
  };
  const rand = prng(opts.seed ?? 1);
  const w: RefWeights = new Map();
  const H = cfg.hiddenSize;
  const q = numHeads * headDim;
  const kv = cfg.numKvHeads * headDim;
  const I = cfg.intermediateSize;
  const put = (name: string, shape: number[], std: number, mean = 0): void => {
    let data = randn(rand, shape.reduce((a, b) => a * b, 1), std, mean);
    if (opts.dtype === 'BF16') data = roundBf16(data);
    w.set(name, { shape, data });
  };
  // Scales chosen so activations stay O(1) and the next-token distribution is peaked, like a trained model's.
  put('model.embed_tokens.weight', [cfg.vocabSize, H], 0.35);
  // Gemma stores its norm weights as w in (1 + w).
  const normMean = gemma ? 0 : 1;
  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `model.layers.${l}`;
    put(`${p}.input_layernorm.weight`, [H], 0.1, normMean);
    put(`${p}.self_attn.q_proj.weight`, [q, H], 1 / Math.sqrt(H));
    put(`${p}.self_attn.k_proj.weight`, [kv, H], 1 / Math.sqrt(H));
    put(`${p}.self_attn.v_proj.weight`, [kv, H], 1 / Math.sqrt(H));
    if (cfg.attentionBias) {
      put(`${p}.self_attn.q_proj.bias`, [q], 0.1);
      put(`${p}.self_attn.k_proj.bias`, [kv], 0.1);
      put(`${p}.self_attn.v_proj.bias`, [kv], 0.1);
    }
    if (cfg.qkNorm) {
      put(`${p}.self_attn.q_norm.weight`, [headDim], 0.3, normMean);
      put(`${p}.self_attn.k_norm.weight`, [headDim], 0.3, normMean);
    }
    put(`${p}.self_attn.o_proj.weight`, [H, q], (opts.residualScale ?? 1) / Math.sqrt(q));
    // Gemma's post-norms set the size of what a layer writes to the residual stream: residualScale applies there.
    const postMean = gemma ? (opts.residualScale ?? 1) - 1 : normMean;
    put(`${p}.post_attention_layernorm.weight`, [H], gemma ? 0.1 * (opts.residualScale ?? 1) : 0.1, postMean);
    if (gemma) {
      put(`${p}.pre_feedforward_layernorm.weight`, [H], 0.1, 0);
      put(`${p}.post_feedforward_layernorm.weight`, [H], 0.1 * (opts.residualScale ?? 1), postMean);
    }
    put(`${p}.mlp.gate_proj.weight`, [I, H], 1 / Math.sqrt(H));
    put(`${p}.mlp.up_proj.weight`, [I, H], 1 / Math.sqrt(H));
    put(`${p}.mlp.down_proj.weight`, [H, I], (opts.residualScale ?? 1) / Math.sqrt(I));
  }
  put('model.norm.weight', [H], 0.1, normMean);
  if (opts.outliers) {
    if (gemma || phi3) throw new Error('outliers: llama-style flavours only');
    const channels = [3, Math.floor(H / 2) + 1];
    for (let l = 0; l < cfg.numLayers; l++) {
      const p = `model.layers.${l}`;
      const groups: [string, string[]][] = [
        ['input_layernorm', ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj']],
        ['post_attention_layernorm', ['mlp.gate_proj', 'mlp.up_proj']],
      ];
      for (const [norm, projections] of groups) {
        const nw = w.get(`${p}.${norm}.weight`)!.data;
        for (const c of channels) {
          nw[c] *= opts.outliers;
          for (const proj of projections) {
            const t = w.get(`${p}.${proj}.weight`)!;
            for (let row = 0; row < t.shape[0]; row++) t.data[row * H + c] /= opts.outliers;
          }
        }
      }
    }
  }
  if (!cfg.tieWordEmbeddings) put('lm_head.weight', [cfg.vocabSize, H], 0.35);
  if (opts.peaked) {
    if (cfg.tieWordEmbeddings) throw new Error('peaked needs an untied head');
    const emb = w.get('model.embed_tokens.weight')!.data;
    const head = w.get('lm_head.weight')!.data;
    const perm = Array.from({ length: cfg.vocabSize }, (_, i) => i);
    for (let i = perm.length - 1; i > 0; i--) {
      const j = Math.floor(rand() * (i + 1));
      [perm[i], perm[j]] = [perm[j], perm[i]];
    }
    for (let v = 0; v < cfg.vocabSize; v++) {
      for (let i = 0; i < H; i++) head[v * H + i] += opts.peaked * emb[perm[v] * H + i];
    }
    if (opts.dtype === 'BF16') roundBf16(head);
  }

  if (phi3) {
    // Phi-3 checkpoints hold q|k|v and gate|up fused.
    const fuse = (name: string, parts: string[]): void => {
      const ts = parts.map((p) => w.get(p)!);
      const data = new Float32Array(ts.reduce((n, t) => n + t.data.length, 0));
      let off = 0;
      for (const t of ts) {
        data.set(t.data, off);
        off += t.data.length;
      }
      w.set(name, { shape: [ts.reduce((n, t) => n + t.shape[0], 0), ts[0].shape[1]], data });
      for (const p of parts) w.delete(p);
    };
    for (let l = 0; l < cfg.numLayers; l++) {
      const p = `model.layers.${l}`;
      fuse(`${p}.self_attn.qkv_proj.weight`, ['q', 'k', 'v'].map((x) => `${p}.self_attn.${x}_proj.weight`));
      fuse(`${p}.mlp.gate_up_proj.weight`, [`${p}.mlp.gate_proj.weight`, `${p}.mlp.up_proj.weight`]);
    }
  }

  mkdirSync(dir, { recursive: true });
  const architectures = { llama: 'LlamaForCausalLM', qwen2: 'Qwen2ForCausalLM', qwen3: 'Qwen3ForCausalLM', mistral: 'MistralForCausalLM', gemma2: 'Gemma2ForCausalLM', gemma3: 'Gemma3ForCausalLM', phi3: 'Phi3ForCausalLM' }[flavour];
  const config: Record<string, unknown> = {
    architectures: [architectures],
    model_type: flavour === 'gemma3' ? 'gemma3_text' : flavour,
    hidden_size: H,
    intermediate_size: I,
    num_hidden_layers: cfg.numLayers,
    num_attention_heads: numHeads,
    num_key_value_heads: cfg.numKvHeads,
    head_dim: headDim,
    vocab_size: cfg.vocabSize,
    rope_theta: cfg.ropeTheta,
    rms_norm_eps: cfg.rmsNormEps,
    tie_word_embeddings: cfg.tieWordEmbeddings,
    max_position_embeddings: opts.maxPositionEmbeddings ?? 512,
    hidden_act: gemma ? 'gelu_pytorch_tanh' : 'silu',
    bos_token_id: 1,
    eos_token_id: 2,
    torch_dtype: opts.dtype === 'BF16' ? 'bfloat16' : 'float32',
    ...(cfg.ropeScaling
      ? {
          rope_scaling: {
            rope_type: 'llama3',
            factor: cfg.ropeScaling.factor,
            low_freq_factor: cfg.ropeScaling.lowFreqFactor,
            high_freq_factor: cfg.ropeScaling.highFreqFactor,
            original_max_position_embeddings: cfg.ropeScaling.originalMaxPositionEmbeddings,
          },
        }
      : {}),
    ...(flavour === 'mistral' ? { sliding_window: opts.slidingWindow ?? null } : {}),
    ...(gemmaCfg
      ? {
          hidden_activation: 'gelu_pytorch_tanh',
          query_pre_attn_scalar: gemmaCfg.queryPreAttnScalar,
          attn_logit_softcapping: gemmaCfg.attnSoftcap,
          final_logit_softcapping: gemmaCfg.finalSoftcap,
          sliding_window: cfg.slidingWindow,
          layer_types: gemmaCfg.slidingLayers.map((s) => (s ? 'sliding_attention' : 'full_attention')),
          ...(flavour === 'gemma3' ? { rope_local_base_freq: gemmaCfg.localRopeTheta, rope_scaling: { rope_type: 'linear', factor: gemmaCfg.globalRopeFactor } } : {}),
        }
      : {}),
    ...(longRope
      ? {
          partial_rotary_factor: rotaryDim / headDim,
          original_max_position_embeddings: longRope.original,
          rope_scaling: { type: 'longrope', short_factor: longRope.short, long_factor: longRope.long },
          ...(opts.slidingWindow ? { sliding_window: opts.slidingWindow } : {}),
        }
      : {}),
    ...(flavour !== 'mistral' && !gemma && !phi3 && opts.slidingWindow ? { use_sliding_window: true, sliding_window: opts.slidingWindow, max_window_layers: opts.maxWindowLayers ?? 0 } : {}),
    ...opts.configOverrides,
  };
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config, null, 2));
  writeWeights(dir, w, opts.dtype ?? 'F32', opts.shards ?? 1);
  return { dir, cfg, weights: w };
}

function writeWeights(dir: string, w: RefWeights, dtype: 'F32' | 'BF16', shards: number): void {
  const entries = [...w.entries()].map(([name, t]): TensorToWrite => ({ name, shape: t.shape, dtype, data: t.data }));
  if (shards <= 1) {
    writeSafetensors(join(dir, 'model.safetensors'), entries);
    return;
  }
  const per = Math.ceil(entries.length / shards);
  const weightMap: Record<string, string> = {};
  for (let s = 0; s < shards; s++) {
    const file = `model-${String(s + 1).padStart(5, '0')}-of-${String(shards).padStart(5, '0')}.safetensors`;
    const part = entries.slice(s * per, (s + 1) * per);
    for (const e of part) weightMap[e.name] = file;
    writeSafetensors(join(dir, file), part);
  }
  writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }, null, 2));
}

export interface TinyAdapterOptions {
  seed?: number;
  r?: number;
  alpha?: number;
  targets?: LoraModule[];
  useRslora?: boolean;
  /** PEFT rank_pattern / alpha_pattern: module-name pattern → rank / alpha. */
  rankPattern?: Record<string, number>;
  alphaPattern?: Record<string, number>;
  /** Standard deviation of lora_B (PEFT initialises B to zero; trained adapters are not). */
  bStd?: number;
  /**
   * DoRA (use_dora): every module also gets a magnitude vector, m = ‖W + s·B·A‖ per row times a
   * random factor in [1 − spread, 1 + spread] (a trained adapter's magnitudes move a few percent
   * from the norms PEFT starts them at). The number is the spread (default 0.25 with `true`).
   */
  dora?: boolean | number;
  /** The magnitude tensors' key suffix: PEFT saves `lora_magnitude_vector`; some tools add `.weight`. */
  magnitudeSuffix?: string;
  configOverrides?: Record<string, unknown>;
}

export interface TinyAdapter {
  dir: string;
  lora: RefLora;
  /** The base model's directory (DoRA adapters are loaded against its weights). */
  baseDir: string;
}

/** A module's base weight [out, in]: its own tensor, or its rows of Phi-3's fused one. */
export function moduleWeight(model: TinyModel, l: number, m: LoraModule): Float32Array {
  const own = model.weights.get(`model.layers.${l}.${MODULE_PATH[m]}.weight`);
  if (own) return own.data;
  const [inF] = moduleShape(model.cfg, m);
  const fusedOf: Partial<Record<LoraModule, [LoraModule, LoraModule[]]>> = {
    q_proj: ['qkv_proj', ['q_proj', 'k_proj', 'v_proj']],
    k_proj: ['qkv_proj', ['q_proj', 'k_proj', 'v_proj']],
    v_proj: ['qkv_proj', ['q_proj', 'k_proj', 'v_proj']],
    gate_proj: ['gate_up_proj', ['gate_proj', 'up_proj']],
    up_proj: ['gate_up_proj', ['gate_proj', 'up_proj']],
  };
  const [parent, parts] = fusedOf[m] ?? (() => { throw new Error(`no base weight for ${m}`); })();
  const fused = model.weights.get(`model.layers.${l}.${MODULE_PATH[parent]}.weight`)!.data;
  const row = parts.slice(0, parts.indexOf(m)).reduce((n, p) => n + moduleShape(model.cfg, p)[1], 0);
  return fused.subarray(row * inF, (row + moduleShape(model.cfg, m)[1]) * inF);
}

/** ‖W + s·B·A‖ of each output row (PEFT's DoRA weight norm), in float64. */
function doraNorms(w: Float32Array, a: RefTensor, b: RefTensor, scale: number): Float64Array {
  const [r, inF] = a.shape;
  const outF = b.shape[0];
  const norms = new Float64Array(outF);
  for (let o = 0; o < outF; o++) {
    let sum = 0;
    for (let i = 0; i < inF; i++) {
      let v = w[o * inF + i];
      for (let k = 0; k < r; k++) v += scale * b.data[o * r + k] * a.data[k * inF + i];
      sum += v * v;
    }
    norms[o] = Math.sqrt(sum);
  }
  return norms;
}

/** PEFT's pattern rule: the pattern must match the end of the module name at a dot boundary. */
function patternValue(pattern: Record<string, number> | undefined, moduleName: string): number | undefined {
  if (!pattern) return undefined;
  for (const [key, value] of Object.entries(pattern)) {
    if (new RegExp(`^(.*\\.)?(${key})$`).test(moduleName)) return value;
  }
  return undefined;
}

/** Writes a PEFT LoRA adapter for `model` and returns it with its in-memory form. */
export function makeTinyAdapter(model: TinyModel, opts: TinyAdapterOptions = {}, dir = tempDir('loraplex-adapter-')): TinyAdapter {
  const r = opts.r ?? 4;
  const alpha = opts.alpha ?? 2 * r;
  const targets = opts.targets ?? ALL_MODULES;
  const rand = prng(opts.seed ?? 7);
  const lora: RefLora = new Map();
  const tensors: TensorToWrite[] = [];
  for (let l = 0; l < model.cfg.numLayers; l++) {
    for (const m of targets) {
      const moduleName = `model.layers.${l}.${MODULE_PATH[m]}`;
      const rank = patternValue(opts.rankPattern, moduleName) ?? r;
      const a = patternValue(opts.alphaPattern, moduleName) ?? alpha;
      const [inF, outF] = moduleShape(model.cfg, m);
      const A: RefTensor = { shape: [rank, inF], data: randn(rand, rank * inF, 1 / Math.sqrt(inF)) };
      const B: RefTensor = { shape: [outF, rank], data: randn(rand, outF * rank, opts.bStd ?? 0.2) };
      const scale = opts.useRslora ? a / Math.sqrt(rank) : a / rank;
      const prefix = `base_model.model.${moduleName}`;
      tensors.push({ name: `${prefix}.lora_A.weight`, shape: A.shape, dtype: 'F32', data: A.data });
      tensors.push({ name: `${prefix}.lora_B.weight`, shape: B.shape, dtype: 'F32', data: B.data });
      if (opts.dora) {
        const spread = opts.dora === true ? 0.25 : opts.dora;
        const norms = doraNorms(moduleWeight(model, l, m), A, B, scale);
        const magnitude: RefTensor = { shape: [outF], data: Float32Array.from(norms, (n) => n * (1 + spread * (2 * rand() - 1))) };
        tensors.push({ name: `${prefix}.${opts.magnitudeSuffix ?? 'lora_magnitude_vector'}`, shape: magnitude.shape, dtype: 'F32', data: magnitude.data });
        lora.set(`${l}.${m}`, { a: A, b: B, scale, magnitude });
      } else {
        lora.set(`${l}.${m}`, { a: A, b: B, scale });
      }
    }
  }
  mkdirSync(dir, { recursive: true });
  const config = {
    peft_type: 'LORA',
    task_type: 'CAUSAL_LM',
    base_model_name_or_path: 'tiny-random',
    r,
    lora_alpha: alpha,
    lora_dropout: 0,
    target_modules: targets,
    use_rslora: opts.useRslora ?? false,
    use_dora: Boolean(opts.dora),
    rank_pattern: opts.rankPattern ?? {},
    alpha_pattern: opts.alphaPattern ?? {},
    bias: 'none',
    fan_in_fan_out: false,
    modules_to_save: null,
    ...opts.configOverrides,
  };
  writeFileSync(join(dir, 'adapter_config.json'), JSON.stringify(config, null, 2));
  writeSafetensors(join(dir, 'adapter_model.safetensors'), tensors);
  return { dir, lora, baseDir: model.dir };
}
