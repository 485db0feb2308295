/**
 * Builds the decoder ONNX graph for a Llama-family checkpoint, with per-row multi-LoRA.
 *
 * Per layer:
 *   x    = RMSNorm(h)
 *   qkv  = x·W_qkv (+bias) (+LoRA)        fused q|k|v projection
 *   q, k = RMSNorm per head (Qwen3 only)
 *   q, k = rotary(q), rotary(k)            k and v are also outputs (new_key/new_value.l)
 *   a    = Attention(q, [past k ; k], [past v ; v], mask)   past gathered from the pool by kv_index
 *   h    = h + a·W_o (+LoRA)
 *   x    = RMSNorm(h); gu = x·W_gate|up (+LoRA); h = h + (silu(g)·u)·W_down (+LoRA)
 * logits = RMSNorm(h)[logits_index]·W_lm
 *
 * Multi-LoRA, grouped pattern (chosen by measurement, see bench/):
 *   Semantics: y[t] += (x[t] @ A[slot[t]]) @ B[slot[t]] for every token whose row has an adapter.
 *   Tokens are gathered into [U, n, in] groups by slot (padded with a zero row), multiplied by the
 *   stacked A [U, in, R] and B [U, R, out] with batched MatMuls, and added back with ScatterND(add).
 *   Padding entries add exact zeros whatever the stacks hold (Where, not a multiply), so one slot's
 *   weights can never reach another slot's rows or the base rows.
 *   With no adapter rows U = 0 and every LoRA op runs on empty tensors.
 */
import type { Checkpoint } from '../checkpoint/checkpoint.js';
import { projectionPath, ropeInvFreq, type ModelSpec, type Projection } from '../checkpoint/spec.js';
import type { GraphBuilder } from './graph-builder.js';
import { IO, loraA, loraB, newKey, newValue, pastKey, pastValue } from './io.js';
import { emitLinear, type LinearWeight, type PreparedLinear } from './linear.js';
import type { Preparer } from './prepare-pool.js';
import type { WeightFormat } from './quant.js';
import { toHalfArray } from '../checkpoint/safetensors.js';

export interface DecoderOptions {
  weights: WeightFormat;
  /** Highest position the rotary tables cover (the model's usable context). */
  maxPositions: number;
  /** Include the multi-LoRA inputs and ops (false: a base-only graph, for comparison). */
  lora: boolean;
}

export type ProgressFn = (done: number, total: number, label: string) => void;

export async function buildDecoder(g: GraphBuilder, ckpt: Checkpoint, opts: DecoderOptions, progress: ProgressFn, preparer: Preparer): Promise<void> {
  const spec = ckpt.spec;
  const ft = g.ft;
  const kvDim = spec.numKvHeads * spec.headDim;
  const qDim = spec.numHeads * spec.headDim;
  const total = 2 + spec.numLayers;
  let done = 0;
  const tick = (label: string): void => progress(++done, total, label);

  // ---- inputs
  const inputIds = g.input(IO.inputIds, 'int32', ['T']);
  const positionIds = g.input(IO.positionIds, 'int32', ['T']);
  const padIndex = g.input(IO.padIndex, 'int32', ['B', 'S']);
  const unpadIndex = g.input(IO.unpadIndex, 'int32', ['T']);
  const kvIndex = g.input(IO.kvIndex, 'int32', ['B', 'P']);
  const pastLen = g.input(IO.pastLen, 'int32', ['B']);
  const logitsIndex = g.input(IO.logitsIndex, 'int32', ['L']);
  const loraGather = opts.lora ? g.input(IO.loraGather, 'int32', ['U', 'n']) : '';
  const loraScatterIdx = opts.lora
    ? g.op('Unsqueeze', [g.op('Cast', [g.input(IO.loraScatter, 'int32', ['U', 'n'])], { to: 7 }), g.const64([2])])
    : '';
  // [U, n, 1] true where a group entry is a real token (padding gathers row T, the zero row). Padding
  // deltas are replaced by exact zeros before they are added to token 0: multiplying would not do,
  // because a slot whose stack holds Inf turns 0 × Inf into NaN.
  const loraReal = opts.lora ? g.op('Unsqueeze', [g.op('Less', [loraGather, g.op('Cast', [g.op('Shape', [inputIds])], { to: 6 })]), g.const64([2])]) : '';

  // ---- shared per-step values
  const positions = g.op('Unsqueeze', [g.op('Cast', [positionIds], { to: 7 }), g.const64([0])]); // [1, T] int64
  const mask = buildMask(g, padIndex, kvIndex, pastLen);
  const { cos, sin } = rotaryTables(g, spec, opts.maxPositions);
  const zeroRow = new Map<number, string>();
  const withZeroRow = (x: string, d: number): string => {
    if (!zeroRow.has(d)) zeroRow.set(d, g.floatInit(`zero_row_${d}`, [1, d], new Float32Array(d)));
    return g.op('Concat', [x, zeroRow.get(d)!], { axis: 0 });
  };
  /** [T, d] → [U, n, d]: tokens grouped by adapter slot. */
  const group = (x: string, d: number): string => g.op('Gather', [withZeroRow(x, d), loraGather], { axis: 0 });
  const delta = (xg: string, l: number, m: Projection, din: number, dout: number): string => {
    const a = g.input(loraA(l, m), ft, ['U', din, 'R']);
    const b = g.input(loraB(l, m), ft, ['U', 'R', dout]);
    return g.op('MatMul', [g.op('MatMul', [xg, a]), b]);
  };
  const zeroDelta = opts.lora ? g.floatInit('lora_zero', [1], new Float32Array(1)) : '';
  const scatterAdd = (y: string, d: () => string): string =>
    opts.lora ? g.op('ScatterND', [y, loraScatterIdx, g.op('Where', [loraReal, d(), zeroDelta])], { reduction: 'add' }) : y;

  // ---- embeddings
  let h = embeddings(g, ckpt.read('model.embed_tokens.weight'), spec, inputIds, opts.weights);
  tick('embeddings');
  const eps = { float: spec.rmsNormEps };
  let x = g.op('SimplifiedLayerNormalization', [h, g.floatInit('layers.0.input_norm', [spec.hiddenSize], ckpt.read('model.layers.0.input_layernorm.weight'))], { epsilon: eps, axis: -1 });

  const I = spec.intermediateSize;
  /** Reads a layer's projections (fused q|k|v and gate|up) and starts preparing them. */
  const startLayer = (l: number): Promise<PreparedLinear[]> => {
    const p = `model.layers.${l}`;
    const read = (proj: Projection, what: 'weight' | 'bias'): Float32Array => ckpt.read(`${p}.${projectionPath(proj)}.${what}`);
    const weights: LinearWeight[] = [
      {
        w: concatRows([read('q_proj', 'weight'), read('k_proj', 'weight'), read('v_proj', 'weight')]),
        n: qDim + 2 * kvDim,
        k: spec.hiddenSize,
        bias: spec.attentionBias ? concatRows([read('q_proj', 'bias'), read('k_proj', 'bias'), read('v_proj', 'bias')]) : null,
      },
      { w: read('o_proj', 'weight'), n: spec.hiddenSize, k: qDim },
      { w: concatRows([read('gate_proj', 'weight'), read('up_proj', 'weight')]), n: 2 * I, k: spec.hiddenSize },
      { w: read('down_proj', 'weight'), n: spec.hiddenSize, k: I },
    ];
    const all = Promise.all(weights.map((w) => preparer.prepare(w, opts.weights)));
    all.catch(() => {}); // awaited later; keep an early failure from being reported as unhandled
    return all;
  };
  const startHead = (): Promise<PreparedLinear> => {
    const p = preparer.prepare({ w: ckpt.read(spec.tieWordEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight'), n: spec.vocabSize, k: spec.hiddenSize }, opts.weights);
    p.catch(() => {});
    return p;
  };

  // One layer of look-ahead: the next layer is read and prepared while this one is emitted.
  let next = startLayer(0);
  let head: Promise<PreparedLinear> | null = null;
  for (let l = 0; l < spec.numLayers; l++) {
    const p = `model.layers.${l}`;
    const prepared = await next;
    if (l + 1 < spec.numLayers) next = startLayer(l + 1);
    else head = startHead();
    const [pQkv, pO, pGu, pDown] = prepared;

    // ---- attention
    let qkv = emitLinear(g, x, `layers.${l}.qkv`, pQkv);
    qkv = scatterAdd(qkv, () => {
      const xg = group(x, spec.hiddenSize);
      return g.op('Concat', [
        delta(xg, l, 'q_proj', spec.hiddenSize, qDim),
        delta(xg, l, 'k_proj', spec.hiddenSize, kvDim),
        delta(xg, l, 'v_proj', spec.hiddenSize, kvDim),
      ], { axis: 2 });
    });
    const [q, k, v] = [g.name('q'), g.name('k'), newValue(l)];
    g.opMulti('Split', [qkv, g.const64([qDim, kvDim, kvDim])], [q, k, v], { axis: 1 });
    g.output(v, ft, ['T', kvDim]);
    const rot = (t: string, heads: number): string =>
      g.op('Squeeze', [
        g.op('RotaryEmbedding', [g.op('Unsqueeze', [t, g.const64([0])]), positions, cos, sin], { num_heads: heads, interleaved: 0 }, { domain: 'com.microsoft' }),
        g.const64([0]),
      ]);
    // Qwen3: RMSNorm over each head's headDim values, with one weight per dimension shared by the heads.
    const headNorm = (t: string, heads: number, which: 'q' | 'k'): string => {
      if (!spec.qkNorm) return t;
      const w = g.floatInit(`layers.${l}.${which}_norm`, [spec.headDim], ckpt.read(`${p}.self_attn.${which}_norm.weight`));
      const perHead = g.op('Reshape', [t, g.const64([-1, heads, spec.headDim])]);
      return g.op('Reshape', [g.op('SimplifiedLayerNormalization', [perHead, w], { epsilon: eps, axis: -1 }), g.const64([-1, heads * spec.headDim])]);
    };
    const qr = rot(headNorm(q, spec.numHeads, 'q'), spec.numHeads);
    const kr = g.op('Identity', [rot(headNorm(k, spec.numKvHeads, 'k'), spec.numKvHeads)], undefined, { out: newKey(l) });
    g.output(kr, ft, ['T', kvDim]);

    const pk = g.input(pastKey(l), ft, ['pool', kvDim]);
    const pv = g.input(pastValue(l), ft, ['pool', kvDim]);
    const keys = g.op('Concat', [g.op('Gather', [pk, kvIndex], { axis: 0 }), g.op('Gather', [kr, padIndex], { axis: 0 })], { axis: 1 });
    const values = g.op('Concat', [g.op('Gather', [pv, kvIndex], { axis: 0 }), g.op('Gather', [v, padIndex], { axis: 0 })], { axis: 1 });
    const qPadded = g.op('Gather', [qr, padIndex], { axis: 0 });
    const attn = g.op('Attention', [qPadded, keys, values, mask], { q_num_heads: spec.numHeads, kv_num_heads: spec.numKvHeads });
    const attnPacked = g.op('Gather', [g.op('Reshape', [attn, g.const64([-1, qDim])]), unpadIndex], { axis: 0 });
    let o = emitLinear(g, attnPacked, `layers.${l}.o`, pO);
    o = scatterAdd(o, () => delta(group(attnPacked, qDim), l, 'o_proj', qDim, spec.hiddenSize));

    // ---- MLP
    const post = g.floatInit(`layers.${l}.post_norm`, [spec.hiddenSize], ckpt.read(`${p}.post_attention_layernorm.weight`));
    const [x2, h2] = [g.name('x2'), g.name('h')];
    g.opMulti('SkipSimplifiedLayerNormalization', [o, h, post], [x2, '', '', h2], { epsilon: eps }, 'com.microsoft');
    let gu = emitLinear(g, x2, `layers.${l}.gate_up`, pGu);
    gu = scatterAdd(gu, () => {
      const x2g = group(x2, spec.hiddenSize);
      return g.op('Concat', [delta(x2g, l, 'gate_proj', spec.hiddenSize, I), delta(x2g, l, 'up_proj', spec.hiddenSize, I)], { axis: 2 });
    });
    const [gate, up] = [g.name('gate'), g.name('up')];
    g.opMulti('Split', [gu, g.const64([I, I])], [gate, up], { axis: 1 });
    const act = g.op('Mul', [g.op('Mul', [gate, g.op('Sigmoid', [gate])]), up]);
    let down = emitLinear(g, act, `layers.${l}.down`, pDown);
    down = scatterAdd(down, () => delta(group(act, I), l, 'down_proj', I, spec.hiddenSize));

    const nextNorm =
      l + 1 < spec.numLayers
        ? g.floatInit(`layers.${l + 1}.input_norm`, [spec.hiddenSize], ckpt.read(`model.layers.${l + 1}.input_layernorm.weight`))
        : g.floatInit('final_norm', [spec.hiddenSize], ckpt.read('model.norm.weight'));
    const [xn, hn] = [g.name('x'), g.name('h')];
    g.opMulti('SkipSimplifiedLayerNormalization', [down, h2, nextNorm], [xn, '', '', hn], { epsilon: eps }, 'com.microsoft');
    x = xn;
    h = hn;
    tick(`layer ${l + 1}/${spec.numLayers}`);
  }

  // ---- logits for the requested tokens only
  const last = g.op('Gather', [x, logitsIndex], { axis: 0 });
  let logits = emitLinear(g, last, 'lm_head', await (head ?? startHead()));
  if (ft !== 'float') logits = g.op('Cast', [logits], { to: 1 });
  g.op('Identity', [logits], undefined, { out: IO.logits });
  g.output(IO.logits, 'float', ['L', spec.vocabSize]);
  tick('lm_head');
}

/**
 * The embedding lookup. With quantized weights the table is kept in fp16 (half the memory: 272 MB
 * instead of 545 MB for a 152k × 896 vocabulary) and the gathered rows are widened to the
 * activation type; fp32 builds (the reference) keep it exact.
 */
function embeddings(g: GraphBuilder, table: Float32Array, spec: ModelSpec, inputIds: string, weights: WeightFormat): string {
  const dims = [spec.vocabSize, spec.hiddenSize];
  if (weights === 'fp32' || g.ft === 'float16') return g.op('Gather', [g.floatInit('embed_tokens', dims, table), inputIds], { axis: 0 });
  const half = g.init('embed_tokens', 'float16', dims, toHalfArray(table));
  return g.op('Cast', [g.op('Gather', [half, inputIds], { axis: 0 })], { to: 1 });
}

/**
 * The attention mask [B, 1, S, P+S], true = attend. Query s of row b sees the row's own past keys
 * (k < past_len[b]) and the new keys up to itself (P <= k <= P + s). Padded queries see a superset
 * that is never empty, so no softmax row is all masked; their outputs are dropped by unpad_index.
 */
function buildMask(g: GraphBuilder, padIndex: string, kvIndex: string, pastLen: string): string {
  const P = g.op('Shape', [kvIndex], { start: 1, end: 2 });
  const S = g.op('Shape', [padIndex], { start: 1, end: 2 });
  const zero = g.int64Scalar('i64_zero', 0);
  const one = g.int64Scalar('i64_one', 1);
  const scalar = (t: string): string => g.op('Squeeze', [t, g.const64([0])]);
  const kpos = g.op('Range', [zero, scalar(g.op('Add', [P, S])), one]);
  const qpos = g.op('Range', [zero, scalar(S), one]);
  const shape4 = (t: string, dims: number[]): string => g.op('Reshape', [t, g.const64(dims)]);
  const past = g.op('Less', [shape4(kpos, [1, 1, 1, -1]), shape4(g.op('Cast', [pastLen], { to: 7 }), [-1, 1, 1, 1])]);
  const rel = g.op('Sub', [kpos, P]);
  const isNew = shape4(g.op('GreaterOrEqual', [rel, zero]), [1, 1, 1, -1]);
  const causal = g.op('LessOrEqual', [shape4(rel, [1, 1, 1, -1]), shape4(qpos, [1, 1, -1, 1])]);
  return g.op('Or', [past, g.op('And', [isNew, causal])]);
}

function rotaryTables(g: GraphBuilder, spec: ModelSpec, maxPositions: number): { cos: string; sin: string } {
  const inv = ropeInvFreq(spec);
  const half = inv.length;
  const cos = new Float32Array(maxPositions * half);
  const sin = new Float32Array(maxPositions * half);
  for (let pos = 0; pos < maxPositions; pos++) {
    for (let i = 0; i < half; i++) {
      const angle = pos * inv[i];
      cos[pos * half + i] = Math.cos(angle);
      sin[pos * half + i] = Math.sin(angle);
    }
  }
  return { cos: g.floatInit('rope_cos', [maxPositions, half], cos), sin: g.floatInit('rope_sin', [maxPositions, half], sin) };
}

function concatRows(parts: Float32Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}
