/**
 * The Llama family: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM and Qwen3ForCausalLM —
 * one layer shape with flags (q/k/v bias for Qwen2 and `attention_bias`; per-head q/k RMSNorm for
 * Qwen3; Llama 3 rope scaling; Mistral's sliding window).
 *
 * Per layer:
 *   x    = RMSNorm(h)
 *   qkv  = x·W_qkv (+bias) (+LoRA)        fused q|k|v projection
 *   q, k = RMSNorm per head (Qwen3 only)
 *   q, k = rotary(q), rotary(k)            k and v are also outputs (new_key/new_value.l)
 *   a    = Attention(q, [past k ; k], [past v ; v], mask)   per attention group (decode rows, prompt
 *                                      rows); past gathered from the pool by kv_index
 *   h    = h + a·W_o (+LoRA)
 *   x    = RMSNorm(h); gu = x·W_gate|up (+LoRA); h = h + (silu(g)·u)·W_down (+LoRA)
 * and the next layer's (or the final) RMSNorm fused with the residual add.
 */
import { CheckpointError } from '../../errors.js';
import { attentionWindow, PROJECTIONS, projectionPath, projectionShape, tokenIds, type ModelSpec, type Projection } from '../checkpoint/spec.js';
import type { LinearWeight } from '../graph/linear.js';
import { attentionShape, int, num, type Json } from './config-fields.js';
import type { ExpectedTensor, Family, TensorReader } from './family.js';
import { concatRows, emitAttention, emitGatedMlp, normPerHead } from './layer-ops.js';
import type { Llama3RopeScaling } from './rope.js';

export const LLAMA_ARCHITECTURES = ['LlamaForCausalLM', 'MistralForCausalLM', 'Qwen2ForCausalLM', 'Qwen3ForCausalLM'] as const;

export interface LlamaSpec extends ModelSpec {
  family: 'llama';
  architecture: (typeof LLAMA_ARCHITECTURES)[number];
  ropeScaling: Llama3RopeScaling | null;
  /** q/k/v projections carry a bias (always for Qwen2, `attention_bias` for Llama and Qwen3). */
  attentionBias: boolean;
  /** Qwen3: each head of q and k is RMS-normalized (`q_norm`, `k_norm`, weight [headDim]) before RoPE. */
  qkNorm: boolean;
}

/** The tensor names of layer l: the one table checkpoint validation and the graph both read. */
function layerTensors(l: number) {
  const p = `model.layers.${l}`;
  return {
    inputNorm: `${p}.input_layernorm.weight`,
    postNorm: `${p}.post_attention_layernorm.weight`,
    qNorm: `${p}.self_attn.q_norm.weight`,
    kNorm: `${p}.self_attn.k_norm.weight`,
    weight: (proj: Projection) => `${p}.${projectionPath(proj)}.weight`,
    bias: (proj: Projection) => `${p}.${projectionPath(proj)}.bias`,
  };
}
const EMBED = 'model.embed_tokens.weight';
const FINAL_NORM = 'model.norm.weight';

const QKV: readonly Projection[] = ['q_proj', 'k_proj', 'v_proj'];

function parseConfig(cfg: Json, architecture: LlamaSpec['architecture'], file: string): LlamaSpec {
  const act = cfg.hidden_act ?? 'silu';
  if (act !== 'silu') throw new CheckpointError(`${file}: hidden_act ${JSON.stringify(act)} is not supported (expected "silu")`);
  if (cfg.mlp_bias === true) throw new CheckpointError(`${file}: mlp_bias=true is not supported`);

  const shape = attentionShape(cfg, file);

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
  // Mistral: a sliding window on every layer when sliding_window is set; Qwen2/Qwen3: only with
  // use_sliding_window, on the layers from max_window_layers on (as transformers' layer_types).
  const mistral = architecture === 'MistralForCausalLM';
  const useSliding = mistral || cfg.use_sliding_window === true;
  const sw = cfg.sliding_window;
  if (useSliding && sw != null && (typeof sw !== 'number' || !Number.isSafeInteger(sw) || sw < 1)) throw new CheckpointError(`${file}: sliding_window must be a positive integer or null, got ${JSON.stringify(sw)}`);
  const slidingWindow = useSliding && typeof sw === 'number' ? sw : null;
  const mwl = cfg.max_window_layers ?? 28; // transformers' Qwen2/Qwen3 default
  if (typeof mwl !== 'number' || !Number.isSafeInteger(mwl) || mwl < 0) throw new CheckpointError(`${file}: max_window_layers must be a non-negative integer, got ${JSON.stringify(cfg.max_window_layers)}`);
  const firstSlidingLayer = mistral ? 0 : mwl;

  const { numLayers, headDim } = shape;
  return {
    family: 'llama',
    architecture,
    ...shape,
    rotaryDim: headDim,
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
    slidingLayers: Array.from({ length: numLayers }, (_, l) => slidingWindow !== null && l >= firstSlidingLayer),
    bosTokenId: typeof cfg.bos_token_id === 'number' ? cfg.bos_token_id : null,
    eosTokenIds: tokenIds(cfg.eos_token_id),
  };
}

function tensors(spec: LlamaSpec): ExpectedTensor[] {
  const out: ExpectedTensor[] = [{ name: EMBED, shape: [spec.vocabSize, spec.hiddenSize] }];
  for (let l = 0; l < spec.numLayers; l++) {
    const t = layerTensors(l);
    out.push({ name: t.inputNorm, shape: [spec.hiddenSize] });
    out.push({ name: t.postNorm, shape: [spec.hiddenSize] });
    if (spec.qkNorm) {
      out.push({ name: t.qNorm, shape: [spec.headDim] });
      out.push({ name: t.kNorm, shape: [spec.headDim] });
    }
    for (const proj of PROJECTIONS) {
      const [inF, outF] = projectionShape(spec, proj);
      out.push({ name: t.weight(proj), shape: [outF, inF] });
      if (spec.attentionBias && QKV.includes(proj)) out.push({ name: t.bias(proj), shape: [outF] });
    }
  }
  out.push({ name: FINAL_NORM, shape: [spec.hiddenSize] });
  if (!spec.tieWordEmbeddings) out.push({ name: 'lm_head.weight', shape: [spec.vocabSize, spec.hiddenSize] });
  return out;
}

/** Fused q|k|v, o, fused gate|up, down. */
function layerWeights(ckpt: TensorReader, spec: LlamaSpec, l: number): LinearWeight[] {
  const t = layerTensors(l);
  const qDim = spec.numHeads * spec.headDim;
  const kvDim = spec.numKvHeads * spec.headDim;
  const I = spec.intermediateSize;
  return [
    { w: concatRows(QKV.map((p) => ckpt.read(t.weight(p)))), n: qDim + 2 * kvDim, k: spec.hiddenSize, bias: spec.attentionBias ? concatRows(QKV.map((p) => ckpt.read(t.bias(p)))) : null },
    { w: ckpt.read(t.weight('o_proj')), n: spec.hiddenSize, k: qDim },
    { w: concatRows([ckpt.read(t.weight('gate_proj')), ckpt.read(t.weight('up_proj'))]), n: 2 * I, k: spec.hiddenSize },
    { w: ckpt.read(t.weight('down_proj')), n: spec.hiddenSize, k: I },
  ];
}

/**
 * The Llama layer over any spec whose layer it is (Phi-3 shares it): embedding, head, and the
 * layer's ops; `qkNorm` says whether q and k are normalized per head (Qwen3).
 */
export function llamaLayers<S extends ModelSpec>(qkNorm: (spec: S) => boolean): Pick<Family<S>, 'embedTensor' | 'headTensor' | 'firstLayerInput' | 'emitLayer'> {
  return {
    embedTensor: EMBED,
    headTensor: (spec) => (spec.tieWordEmbeddings ? EMBED : 'lm_head.weight'),

    firstLayerInput({ g, ckpt, spec }, h) {
      const w = g.floatInit('layers.0.input_norm', [spec.hiddenSize], ckpt.read(layerTensors(0).inputNorm));
      return { x: g.op('SimplifiedLayerNormalization', [h, w], { epsilon: { float: spec.rmsNormEps }, axis: -1 }), h };
    },

    emitLayer(ctx, l, [pQkv, pO, pGu, pDown], { x, h }) {
      const { g, ckpt, spec } = ctx;
      const t = layerTensors(l);
      const eps = { float: spec.rmsNormEps };
      const o = emitAttention(ctx, l, x, pQkv, pO, {
        // Qwen3: RMSNorm over each head's headDim values, with one weight per dimension shared by the heads.
        headNorm: (y, heads, which) => (qkNorm(spec) ? normPerHead(ctx, y, heads, g.floatInit(`layers.${l}.${which}_norm`, [spec.headDim], ckpt.read(which === 'q' ? t.qNorm : t.kNorm))) : y),
        rotary: ctx.rotary(false),
        window: attentionWindow(spec, l),
      });
      const post = g.floatInit(`layers.${l}.post_norm`, [spec.hiddenSize], ckpt.read(t.postNorm));
      const [x2, h2] = [g.name('x2'), g.name('h')];
      g.opMulti('SkipSimplifiedLayerNormalization', [o, h, post], [x2, '', '', h2], { epsilon: eps }, 'com.microsoft');
      const down = emitGatedMlp(ctx, l, x2, pGu, pDown, (gate) => g.op('Mul', [gate, g.op('Sigmoid', [gate])]));

      // The next layer's input norm (or the final norm) fused with the residual add.
      const last = l + 1 === spec.numLayers;
      const nextNorm = g.floatInit(last ? 'final_norm' : `layers.${l + 1}.input_norm`, [spec.hiddenSize], ckpt.read(last ? FINAL_NORM : layerTensors(l + 1).inputNorm));
      const [xn, hn] = [g.name('x'), g.name('h')];
      g.opMulti('SkipSimplifiedLayerNormalization', [down, h2, nextNorm], [xn, '', '', hn], { epsilon: eps }, 'com.microsoft');
      return { x: xn, h: hn };
    },
  };
}

export const LLAMA_FAMILY: Family<LlamaSpec> = {
  architectures: LLAMA_ARCHITECTURES,
  parseConfig,
  tensors,
  layerWeights,
  ...llamaLayers<LlamaSpec>((spec) => spec.qkNorm),
};
