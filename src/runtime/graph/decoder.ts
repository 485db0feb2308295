/**
 * Builds the decoder ONNX graph for a checkpoint, with per-row multi-LoRA: the driver every model
 * family shares — the step's inputs, the attention masks (causal, and sliding-window for the
 * layers that have one), the rotary tables, the multi-LoRA
 * plumbing, the embedding lookup and the head — around the family's layers (arch/).
 *
 * Multi-LoRA, grouped pattern (chosen by measurement, see bench/):
 *   Semantics: y[t] += (x[t] @ A[slot[t]]) @ B[slot[t]] for every token whose row has an adapter.
 *   Tokens are gathered into [U, n, in] groups by slot (padded with token 0), multiplied by the
 *   stacked A [U, in, R] and B [U, R, out] with batched MatMuls, and added back with ScatterND(add).
 *   Both products are FusedMatMuls whose left operand is read transposed (x·A as (Aᵀ·xᵀ)ᵀ, then
 *   that times B): onnxruntime's SGEMM then never takes its one-row kernel and blocks K at a fixed
 *   256, so a token's delta does not depend on how many tokens share its group or on how the
 *   product is split over threads. (A plain MatMul rounds differently at n = 1, and its K blocking
 *   follows the output width each thread gets.)
 *   Slot groups share one length n, the largest group's, so they serve decode rows (one token
 *   each). The prompt rows (more than one new token) of each slot form a row group instead ([G, m,
 *   in], m = the most prompt tokens of one slot), with its slot's A and B gathered from the stacks:
 *   otherwise one prompt chunk would pad every other slot's group to its length (measured: a
 *   512-token prompt on slot 7 of 8 took 2.2–2.9× the base model's step, with the LoRA work of
 *   8 × 512 tokens). The products are the same FusedMatMuls on the same values, so which kind of
 *   group a token is in does not change its bits. A step without prefill rows has G = 0.
 *   The deltas of both kinds of group are laid end to end and lora_pick takes each adapter token's
 *   own entry, so padding entries are never added anywhere (one slot's weights can never reach
 *   another slot's rows or the base rows, Inf and NaN included) and each token appears once in the
 *   ScatterND. That matters: onnxruntime's CPU ScatterND splits its updates over threads with no
 *   care for repeated indices, so two updates of one token race, and an add can be lost (padding
 *   that added zeros to token 0 did lose token 0's delta in over half of the steps measured with 2
 *   threads). (Each row of a group's products depends on its own input row only, so what padding
 *   gathers cannot change a real row.) With no adapter rows U = G = Tl = 0 and every LoRA op runs
 *   on empty tensors.
 *
 * DoRA (adapters/dora.ts): y = g ⊙ (x·Wᵀ + s·x·Aᵀ·Bᵀ) + b is computed as
 * y + (g − 1) ⊙ (y − b) + (x·A)·(B ⊙ g), with B ⊙ g in the B stack (so the LoRA groups above
 * compute the last term unchanged) and g − 1 an input [U, out] per projection. The middle term
 * runs on the tokens of DoRA rows only ([Td], each with its slot's g − 1, no padding): a step without
 * a DoRA row has Td = 0 and pays nothing for it. It is scatter-added before the LoRA deltas, because
 * it reads y, which the scatters then update in place; each DoRA token appears once in it.
 */
import { familyOf, type FamilySpec } from '../arch/families.js';
import type { AttentionGroup, LayerContext } from '../arch/family.js';
import { rotaryTable, type Rope } from '../arch/rope.js';
import type { Checkpoint } from '../checkpoint/checkpoint.js';
import { projectionShape, type ModelSpec } from '../checkpoint/spec.js';
import type { GraphBuilder } from './graph-builder.js';
import { ATTENTION_GROUPS, attentionInputs, IO, loraA, loraB, loraDora } from './io.js';
import { emitLinear, lmHeadFormat, type LinearCompute, type PreparedLinear } from './linear.js';
import type { Preparer } from './prepare-pool.js';
import type { WeightFormat } from './quant.js';
import { toHalfArray } from '../checkpoint/safetensors.js';

export interface DecoderOptions {
  weights: WeightFormat;
  /** Highest position the rotary tables cover (the model's usable context). */
  maxPositions: number;
  /** Include the multi-LoRA inputs and ops (false: a base-only graph, for comparison). */
  lora: boolean;
  /** The lm_head's compute precision with int4/int8 weights (default int8). */
  lmHeadAccuracy?: LinearCompute;
}

export type ProgressFn = (done: number, total: number, label: string) => void;

export async function buildDecoder(g: GraphBuilder, ckpt: Checkpoint, opts: DecoderOptions, progress: ProgressFn, preparer: Preparer): Promise<void> {
  const spec = ckpt.spec;
  const family = familyOf(spec);
  const ft = g.ft;
  const total = 2 + spec.numLayers;
  let done = 0;
  const tick = (label: string): void => progress(++done, total, label);

  // ---- inputs
  const inputIds = g.input(IO.inputIds, 'int32', ['T']);
  const positionIds = g.input(IO.positionIds, 'int32', ['T']);
  const unpadIndex = g.input(IO.unpadIndex, 'int32', ['T']);
  const attentionGroups = ATTENTION_GROUPS.map((name): AttentionGroup => {
    const io = attentionInputs(name);
    const dim = (d: string): string => `${d}_${name}`;
    const padIndex = g.input(io.padIndex, 'int32', [dim('B'), dim('S')]);
    const kvIndex = g.input(io.kvIndex, 'int32', [dim('B'), dim('W')]);
    const pastLen = g.input(io.pastLen, 'int32', [dim('B')]);
    return {
      padIndex,
      kvIndex,
      kvNewSlot: g.op('Cast', [g.input(io.kvNewSlot, 'int32', [dim('T'), 2])], { to: 7 }),
      newTokens: g.input(io.newTokens, 'int32', [dim('T')]),
      mask: buildMask(g, padIndex, kvIndex, pastLen),
    };
  });
  const logitsIndex = g.input(IO.logitsIndex, 'int32', ['L']);
  // Slot groups [U, n] and row groups [G, m] (the prompt rows of one slot each, with [G] each one's
  // slot, whose stacks the group gathers): the packed token each group entry gathers, padding 0.
  const loraGather = opts.lora ? g.input(IO.loraGather, 'int32', ['U', 'n']) : '';
  const rowGather = opts.lora ? g.input(IO.loraRowGather, 'int32', ['G', 'm']) : '';
  const rowSlots = opts.lora ? g.input(IO.loraRowSlots, 'int32', ['G']) : '';
  // [Tl] each adapter token's entry among the groups' entries, and (as [Tl, 1] int64) the token
  // its delta adds to: every token once, padding entries never (see the header).
  const loraPick = opts.lora ? g.input(IO.loraPick, 'int32', ['Tl']) : '';
  const loraScatterIdx = opts.lora ? g.op('Unsqueeze', [g.op('Cast', [g.input(IO.loraTokens, 'int32', ['Tl'])], { to: 7 }), g.const64([1])]) : '';
  // The tokens of DoRA rows [Td] (as [Td, 1] int64 for ScatterND) and each one's slot [Td].
  const doraTokens = opts.lora ? g.input(IO.doraTokens, 'int32', ['Td']) : '';
  const doraScatterIdx = opts.lora ? g.op('Unsqueeze', [g.op('Cast', [doraTokens], { to: 7 }), g.const64([1])]) : '';
  const doraTokenSlots = opts.lora ? g.input(IO.doraTokenSlots, 'int32', ['Td']) : '';

  // ---- shared per-step values
  const tables = new Map<boolean, { cos: string; sin: string }>();
  const ctx: LayerContext<FamilySpec> = {
    g,
    ckpt,
    spec,
    positions: g.op('Unsqueeze', [g.op('Cast', [positionIds], { to: 7 }), g.const64([0])]), // [1, T] int64
    rotary: (local) => {
      const own = local ? (family.slidingRope?.(spec) ?? null) : null;
      const kind = own !== null;
      if (!tables.has(kind)) tables.set(kind, rotaryTables(g, own ?? spec, opts.maxPositions, kind));
      return tables.get(kind)!;
    },
    attentionGroups,
    unpadIndex,
    adapt: (y, x, l, parts, bias) => {
      if (!opts.lora) return y;
      const side = (ts: string[]): string => (ts.length === 1 ? ts[0] : g.op('Concat', ts, { axis: 2 }));
      const din = projectionShape(spec, parts[0])[0];
      const douts = parts.map((p) => projectionShape(spec, p)[1]);
      // DoRA: [Td, out] = (g − 1 of the token's slot) ⊙ (y − b) of the token.
      const concat = (ts: string[]): string => (ts.length === 1 ? ts[0] : g.op('Concat', ts, { axis: 1 }));
      const gMinusOne = g.op('Gather', [concat(parts.map((p, i) => g.input(loraDora(l, p), ft, ['U', douts[i]]))), doraTokenSlots], { axis: 0 });
      let base = g.op('Gather', [y, doraTokens], { axis: 0 });
      if (bias) base = g.op('Sub', [base, g.floatInit(`dora_bias.${l}.${parts[0]}`, [bias.length], bias)]);
      const doraDelta = g.op('Mul', [gMinusOne, base]);
      // LoRA: [groups, n, out] = (x·A)·B of each group's tokens, for the slot groups (stacks fed
      // as they are) and the row groups (each one's slot gathered from the stacks).
      const as = parts.map((p) => g.input(loraA(l, p), ft, ['U', din, 'R']));
      const bs = parts.map((p, i) => g.input(loraB(l, p), ft, ['U', 'R', douts[i]]));
      const product = (xg: string, a: string, b: string): string => {
        // [·, R, n] = Aᵀ·xgᵀ, then [·, n, out] = (that)ᵀ·B: transA on both (see the header).
        const mid = g.op('FusedMatMul', [a, xg], { transA: 1, transB: 1, alpha: { float: 1 } }, { domain: 'com.microsoft' });
        return g.op('FusedMatMul', [mid, b], { transA: 1, alpha: { float: 1 } }, { domain: 'com.microsoft' });
      };
      const bySlot = (stack: string): string => g.op('Gather', [stack, rowSlots], { axis: 0 });
      const xg = g.op('Gather', [x, loraGather], { axis: 0 });
      const xr = g.op('Gather', [x, rowGather], { axis: 0 });
      const width = douts.reduce((a, b) => a + b, 0);
      const entries = (delta: string): string => g.op('Reshape', [delta, g.const64([-1, width])]);
      const slotDelta = entries(side(parts.map((_, i) => product(xg, as[i], bs[i]))));
      const rowDelta = entries(side(parts.map((_, i) => product(xr, bySlot(as[i]), bySlot(bs[i])))));
      const loraDelta = g.op('Gather', [g.op('Concat', [slotDelta, rowDelta], { axis: 0 }), loraPick], { axis: 0 });
      const add = (into: string, idx: string, delta: string): string => g.op('ScatterND', [into, idx, delta], { reduction: 'add' });
      const adds = (into: string, wide: (t: string) => string): string => add(add(into, doraScatterIdx, wide(doraDelta)), loraScatterIdx, wide(loraDelta));
      if (ft === 'float') return adds(y, (t) => t);
      // onnxruntime's CPU ScatterND cannot add in float16: add in float32 and narrow again.
      const wide = (t: string): string => g.op('Cast', [t], { to: 1 });
      return g.op('Cast', [adds(wide(y), wide)], { to: 10 });
    },
  };

  // ---- embeddings
  let state = family.firstLayerInput(ctx, embeddings(g, ckpt.read(family.embedTensor), spec, inputIds, opts.weights));
  tick('embeddings');

  /** Reads a layer's projections and starts preparing them. */
  const startLayer = (l: number): Promise<PreparedLinear[]> => {
    const all = Promise.all(family.layerWeights(ckpt, spec, l).map((w) => preparer.prepare(w, opts.weights)));
    all.catch(() => {}); // awaited later; keep an early failure from being reported as unhandled
    return all;
  };
  const startHead = (): Promise<PreparedLinear> => {
    const p = preparer.prepare({ w: ckpt.read(family.headTensor(spec)), n: spec.vocabSize, k: spec.hiddenSize }, lmHeadFormat(opts.weights));
    p.catch(() => {});
    return p;
  };

  // One layer of look-ahead: the next layer is read and prepared while this one is emitted.
  let next = startLayer(0);
  let head: Promise<PreparedLinear> | null = null;
  for (let l = 0; l < spec.numLayers; l++) {
    const prepared = await next;
    if (l + 1 < spec.numLayers) next = startLayer(l + 1);
    else head = startHead();
    state = family.emitLayer(ctx, l, prepared, state);
    tick(`layer ${l + 1}/${spec.numLayers}`);
  }

  // ---- logits for the requested tokens only
  const last = g.op('Gather', [state.x, logitsIndex], { axis: 0 });
  let logits = emitLinear(g, last, 'lm_head', await (head ?? startHead()), opts.lmHeadAccuracy ?? 'int8');
  if (ft !== 'float') logits = g.op('Cast', [logits], { to: 1 });
  const cap = family.finalLogitSoftcap?.(spec) ?? null;
  if (cap !== null) logits = softcap(g, logits, cap, 'final_softcap');
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
 * An attention group's mask [Bg, 1, Sg, Wg], true = attend. Key slot j of row b holds the key at
 * position j, so query s (at position past_len[b] + s) sees slots j <= past_len[b] + s. Padded
 * queries see a superset that is never empty (slot 0), so no softmax row is all masked; their
 * outputs are dropped by unpad_index.
 */
function buildMask(g: GraphBuilder, padIndex: string, kvIndex: string, pastLen: string): (window: number | null) => string {
  const W = g.op('Shape', [kvIndex], { start: 1, end: 2 });
  const S = g.op('Shape', [padIndex], { start: 1, end: 2 });
  const zero = g.int64Scalar(0);
  const one = g.int64Scalar(1);
  const scalar = (t: string): string => g.op('Squeeze', [t, g.const64([0])]);
  const shape4 = (t: string, dims: number[]): string => g.op('Reshape', [t, g.const64(dims)]);
  const keyAt = shape4(g.op('Range', [zero, scalar(W), one]), [1, 1, 1, -1]);
  // [Bg, 1, Sg, 1] absolute position of each query
  const queryAt = g.op('Add', [shape4(g.op('Cast', [pastLen], { to: 7 }), [-1, 1, 1, 1]), shape4(g.op('Range', [zero, scalar(S), one]), [1, 1, -1, 1])]);
  const full = g.op('LessOrEqual', [keyAt, queryAt]);
  // A sliding window of W: a query at position q sees keys at positions > q - W (itself and the W - 1 before it).
  const windowed = new Map<number, string>();
  return (window) => {
    if (window === null) return full;
    let m = windowed.get(window);
    if (!m) {
      const inWindow = g.op('Greater', [keyAt, g.op('Sub', [queryAt, g.int64Scalar(window)])]);
      windowed.set(window, (m = g.op('And', [full, inWindow])));
    }
    return m;
  };
}

function rotaryTables(g: GraphBuilder, rope: Rope, maxPositions: number, local: boolean): { cos: string; sin: string } {
  const { cos, sin, half } = rotaryTable(rope, maxPositions);
  const tag = local ? '_local' : '';
  return { cos: g.floatInit(`rope_cos${tag}`, [maxPositions, half], cos), sin: g.floatInit(`rope_sin${tag}`, [maxPositions, half], sin) };
}

/** cap · tanh(x / cap) (Gemma 2's logit soft-capping), in fp32. */
export function softcap(g: GraphBuilder, x: string, cap: number, name: string): string {
  const c = g.init(name, 'float', [1], new Float32Array([cap]));
  return g.op('Mul', [g.op('Tanh', [g.op('Div', [x, c])]), c]);
}
