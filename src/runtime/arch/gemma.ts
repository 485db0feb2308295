/**
 * The Gemma family: Gemma2ForCausalLM and Gemma3ForCausalLM (text).
 *
 * Differences from the Llama family, all from the checkpoint's config:
 *   - RMSNorm multiplies by (1 + w); embeddings are scaled by √hidden;
 *   - four norms per layer: before and after attention, before and after the MLP;
 *   - the MLP is down(gelu_tanh(gate(x)) · up(x));
 *   - attention scores are scaled by query_pre_attn_scalar^-0.5, soft-capped (Gemma 2:
 *     cap · tanh(s / cap)), and so are the final logits (Gemma 2);
 *   - sliding-window and global layers alternate (Gemma 2: every other layer; Gemma 3: five of six,
 *     or `layer_types`); Gemma 3's sliding layers use their own RoPE base (rope_local_base_freq) and
 *     its global ones rope_theta with rope_scaling;
 *   - Gemma 3 normalizes q and k per head ((1 + w) RMSNorm) before RoPE.
 *
 * Per layer:
 *   x = norm_in(h); q,k,v = x·W (+LoRA); [Gemma 3: q,k = norm per head]; q,k = rotary
 *   a = Attention(q, K, V, mask(window)); h = h + norm_post_attn(a·W_o (+LoRA))
 *   x = norm_pre_ff(h); h = h + norm_post_ff(down(gelu_tanh(gate) · up) (+LoRA))
 */
import { CheckpointError } from '../../errors.js';
import { attentionWindow, PROJECTIONS, projectionPath, projectionShape, tokenIds, type ModelSpec, type Projection } from '../checkpoint/spec.js';
import type { GraphBuilder } from '../graph/graph-builder.js';
import type { LinearWeight } from '../graph/linear.js';
import { attentionShape, int, num, type Json } from './config-fields.js';
import type { ExpectedTensor, Family, LayerContext, TensorReader } from './family.js';
import { concatRows, emitAttention, emitGatedMlp, normPerHead } from './layer-ops.js';
import type { LinearRopeScaling } from './rope.js';

export const GEMMA_ARCHITECTURES = ['Gemma2ForCausalLM', 'Gemma3ForCausalLM'] as const;

export interface GemmaSpec extends ModelSpec {
  family: 'gemma';
  architecture: (typeof GEMMA_ARCHITECTURES)[number];
  /** Gemma 3's global layers: positions divided by a factor. */
  ropeScaling: LinearRopeScaling | null;
  /** Gemma 3: the RoPE base of the sliding-window layers, which use no scaling (null: ropeTheta everywhere). */
  localRopeTheta: number | null;
  /** Gemma 3: each head of q and k is normalized ((1 + w) RMSNorm, weight [headDim]) before RoPE. */
  qkNorm: boolean;
  /** Multiplier of q·k: query_pre_attn_scalar^-0.5. */
  attentionScale: number;
  /** Gemma 2: scores = cap·tanh(scores / cap) before the softmax, and logits likewise (null: no cap). */
  attnLogitSoftcap: number | null;
  finalLogitSoftcap: number | null;
}

function layerTensors(l: number) {
  const p = `model.layers.${l}`;
  return {
    inputNorm: `${p}.input_layernorm.weight`,
    postAttnNorm: `${p}.post_attention_layernorm.weight`,
    preFfNorm: `${p}.pre_feedforward_layernorm.weight`,
    postFfNorm: `${p}.post_feedforward_layernorm.weight`,
    qNorm: `${p}.self_attn.q_norm.weight`,
    kNorm: `${p}.self_attn.k_norm.weight`,
    weight: (proj: Projection) => `${p}.${projectionPath(proj)}.weight`,
  };
}
const EMBED = 'model.embed_tokens.weight';
const FINAL_NORM = 'model.norm.weight';

const optionalNum = (cfg: Json, key: string, file: string, fallback: number | null): number | null => (cfg[key] === null || (cfg[key] === undefined && fallback === null) ? null : num(cfg, key, file, fallback ?? 0));

function parseConfig(cfg: Json, architecture: GemmaSpec['architecture'], file: string): GemmaSpec {
  const gemma3 = architecture === 'Gemma3ForCausalLM';
  const act = cfg.hidden_activation ?? cfg.hidden_act ?? 'gelu_pytorch_tanh';
  if (act !== 'gelu_pytorch_tanh' && act !== 'gelu_tanh') throw new CheckpointError(`${file}: hidden_activation ${JSON.stringify(act)} is not supported (expected "gelu_pytorch_tanh")`);
  if (cfg.attention_bias === true) throw new CheckpointError(`${file}: attention_bias=true is not supported for ${architecture}`);
  const shape = attentionShape(cfg, file, 256);
  const { numLayers, headDim } = shape;

  // Which layers slide: layer_types when given, else Gemma 2 every other layer (the first slides), Gemma 3 all but every sixth.
  let slidingLayers: boolean[];
  if (Array.isArray(cfg.layer_types)) {
    const types = cfg.layer_types as unknown[];
    if (types.length !== numLayers || !types.every((t) => t === 'sliding_attention' || t === 'full_attention')) {
      throw new CheckpointError(`${file}: layer_types must list "sliding_attention" or "full_attention" for each of the ${numLayers} layers`);
    }
    slidingLayers = types.map((t) => t === 'sliding_attention');
  } else {
    const pattern = gemma3 ? int(cfg, 'sliding_window_pattern', file, 6) : 2;
    slidingLayers = Array.from({ length: numLayers }, (_, l) => (l + 1) % pattern !== 0);
  }
  const slidingWindow = cfg.sliding_window === null ? null : int(cfg, 'sliding_window', file, 4096);

  let ropeScaling: LinearRopeScaling | null = null;
  const rs = cfg.rope_scaling as Json | null | undefined;
  if (rs != null) {
    const type = rs.rope_type ?? rs.type;
    if (type === 'linear') ropeScaling = { ropeType: 'linear', factor: num(rs, 'factor', `${file} rope_scaling`, 1) };
    else if (type !== 'default') throw new CheckpointError(`${file}: rope_scaling type ${JSON.stringify(type)} is not supported for ${architecture} (supported: linear)`);
  }

  return {
    family: 'gemma',
    architecture,
    ...shape,
    rotaryDim: headDim,
    intermediateSize: int(cfg, 'intermediate_size', file),
    vocabSize: int(cfg, 'vocab_size', file),
    ropeTheta: num(cfg, 'rope_theta', file, gemma3 ? 1_000_000 : 10_000),
    ropeScaling,
    localRopeTheta: gemma3 ? num(cfg, 'rope_local_base_freq', file, 10_000) : null,
    rmsNormEps: num(cfg, 'rms_norm_eps', file, 1e-6),
    // Gemma ties its head to the embedding unless told otherwise.
    tieWordEmbeddings: cfg.tie_word_embeddings !== false,
    qkNorm: gemma3,
    maxPositionEmbeddings: int(cfg, 'max_position_embeddings', file, 8192),
    slidingWindow,
    slidingLayers,
    attentionScale: 1 / Math.sqrt(num(cfg, 'query_pre_attn_scalar', file, headDim)),
    attnLogitSoftcap: optionalNum(cfg, 'attn_logit_softcapping', file, gemma3 ? null : 50),
    finalLogitSoftcap: optionalNum(cfg, 'final_logit_softcapping', file, gemma3 ? null : 30),
    bosTokenId: typeof cfg.bos_token_id === 'number' ? cfg.bos_token_id : null,
    eosTokenIds: tokenIds(cfg.eos_token_id),
  };
}

function tensors(spec: GemmaSpec): ExpectedTensor[] {
  const H = spec.hiddenSize;
  const out: ExpectedTensor[] = [{ name: EMBED, shape: [spec.vocabSize, H] }];
  for (let l = 0; l < spec.numLayers; l++) {
    const t = layerTensors(l);
    for (const n of [t.inputNorm, t.postAttnNorm, t.preFfNorm, t.postFfNorm]) out.push({ name: n, shape: [H] });
    if (spec.qkNorm) {
      out.push({ name: t.qNorm, shape: [spec.headDim] });
      out.push({ name: t.kNorm, shape: [spec.headDim] });
    }
    for (const proj of PROJECTIONS) {
      const [inF, outF] = projectionShape(spec, proj);
      out.push({ name: t.weight(proj), shape: [outF, inF] });
    }
  }
  out.push({ name: FINAL_NORM, shape: [H] });
  if (!spec.tieWordEmbeddings) out.push({ name: 'lm_head.weight', shape: [spec.vocabSize, H] });
  return out;
}

function layerWeights(ckpt: TensorReader, spec: GemmaSpec, l: number): LinearWeight[] {
  const t = layerTensors(l);
  const qDim = spec.numHeads * spec.headDim;
  const kvDim = spec.numKvHeads * spec.headDim;
  const I = spec.intermediateSize;
  const cat = (names: string[]): Float32Array => concatRows(names.map((n) => ckpt.read(n)));
  return [
    { w: cat([t.weight('q_proj'), t.weight('k_proj'), t.weight('v_proj')]), n: qDim + 2 * kvDim, k: spec.hiddenSize },
    { w: ckpt.read(t.weight('o_proj')), n: spec.hiddenSize, k: qDim },
    { w: cat([t.weight('gate_proj'), t.weight('up_proj')]), n: 2 * I, k: spec.hiddenSize },
    { w: ckpt.read(t.weight('down_proj')), n: spec.hiddenSize, k: I },
  ];
}

/** A Gemma RMSNorm weight: the checkpoint stores w, the norm multiplies by 1 + w. */
function normWeight(g: GraphBuilder, ckpt: TensorReader, tensor: string, name: string, dim: number): string {
  const w = ckpt.read(tensor);
  const onePlus = new Float32Array(w.length);
  for (let i = 0; i < w.length; i++) onePlus[i] = 1 + w[i];
  return g.floatInit(name, [dim], onePlus);
}

/** 0.5 · x · (1 + tanh(√(2/π) · (x + 0.044715 x³))) — PyTorch's gelu(approximate="tanh"). */
function geluTanh(g: GraphBuilder, x: string, prefix: string): string {
  const c = (name: string, v: number): string => g.floatInit(`${prefix}.${name}`, [1], new Float32Array([v]));
  const x3 = g.op('Mul', [g.op('Mul', [x, x]), x]);
  const inner = g.op('Mul', [g.op('Add', [x, g.op('Mul', [x3, c('gelu_c', 0.044715)])]), c('gelu_k', Math.sqrt(2 / Math.PI))]);
  return g.op('Mul', [g.op('Mul', [x, c('gelu_half', 0.5)]), g.op('Add', [g.op('Tanh', [inner]), c('gelu_one', 1)])]);
}

export const GEMMA_FAMILY: Family<GemmaSpec> = {
  architectures: GEMMA_ARCHITECTURES,
  parseConfig,
  tensors,
  layerWeights,
  embedTensor: EMBED,
  headTensor: (spec) => (spec.tieWordEmbeddings ? EMBED : 'lm_head.weight'),

  firstLayerInput({ g, ckpt, spec }, embeddings) {
    // The embedding is scaled by √hidden in the activation type (as transformers does).
    const h = g.op('Mul', [embeddings, g.floatInit('embed_scale', [1], new Float32Array([Math.sqrt(spec.hiddenSize)]))]);
    const w = normWeight(g, ckpt, layerTensors(0).inputNorm, 'layers.0.input_norm', spec.hiddenSize);
    return { x: g.op('SimplifiedLayerNormalization', [h, w], { epsilon: { float: spec.rmsNormEps }, axis: -1 }), h };
  },

  emitLayer(ctx: LayerContext<GemmaSpec>, l, [pQkv, pO, pGu, pDown], { x, h }) {
    const { g, ckpt, spec } = ctx;
    const t = layerTensors(l);
    const eps = { float: spec.rmsNormEps };
    const H = spec.hiddenSize;
    const window = attentionWindow(spec, l);
    const norm = (y: string, tensor: string, name: string): string => g.op('SimplifiedLayerNormalization', [y, normWeight(g, ckpt, tensor, name, H)], { epsilon: eps, axis: -1 });

    const o = emitAttention(ctx, l, x, pQkv, pO, {
      headNorm: (y, heads, which) => (spec.qkNorm ? normPerHead(ctx, y, heads, normWeight(g, ckpt, which === 'q' ? t.qNorm : t.kNorm, `layers.${l}.${which}_norm`, spec.headDim)) : y),
      // Gemma 3: sliding layers rotate with their own base.
      rotary: ctx.rotary(window !== null),
      window,
      attrs: { scale: { float: spec.attentionScale }, ...(spec.attnLogitSoftcap !== null ? { softcap: { float: spec.attnLogitSoftcap } } : {}) },
    });

    // ---- MLP, between its own pre- and post-norms
    const [x2, h2] = [g.name('x2'), g.name('h')];
    g.opMulti('SkipSimplifiedLayerNormalization', [norm(o, t.postAttnNorm, `layers.${l}.post_attn_norm`), h, normWeight(g, ckpt, t.preFfNorm, `layers.${l}.pre_ff_norm`, H)], [x2, '', '', h2], { epsilon: eps }, 'com.microsoft');
    const down = emitGatedMlp(ctx, l, x2, pGu, pDown, (gate) => geluTanh(g, gate, `layers.${l}`));

    const last = l + 1 === spec.numLayers;
    const nextNorm = normWeight(g, ckpt, last ? FINAL_NORM : layerTensors(l + 1).inputNorm, last ? 'final_norm' : `layers.${l + 1}.input_norm`, H);
    const [xn, hn] = [g.name('x'), g.name('h')];
    g.opMulti('SkipSimplifiedLayerNormalization', [norm(down, t.postFfNorm, `layers.${l}.post_ff_norm`), h2, nextNorm], [xn, '', '', hn], { epsilon: eps }, 'com.microsoft');
    return { x: xn, h: hn };
  },

  // Gemma 3's sliding layers rotate with their own base and no scaling.
  slidingRope: (spec) => (spec.localRopeTheta === null ? null : { ropeTheta: spec.localRopeTheta, rotaryDim: spec.rotaryDim, ropeScaling: null }),
  finalLogitSoftcap: (spec) => spec.finalLogitSoftcap,
};
