/**
 * The pieces of a decoder layer that families share, so that each family module says only how its
 * layer differs: the attention block (fused q|k|v projection with its LoRA deltas, per-head norms,
 * rotary positions, keys and values from the KV pool, the attention op, o_proj with its LoRA) and
 * the gated MLP (fused gate|up with LoRA, an activation, down_proj with LoRA).
 */
import type { PreparedLinear } from '../graph/linear.js';
import { emitLinear } from '../graph/linear.js';
import { newKey, newValue, pastKey, pastValue } from '../graph/io.js';
import type { LayerContext } from './family.js';

export interface AttentionOptions {
  /** q or k [T, heads·headDim] → normalized per head (identity when the family has no q/k norms). */
  headNorm(x: string, heads: number, which: 'q' | 'k'): string;
  /** The rotary tables this layer uses. */
  rotary: { cos: string; sin: string };
  /** Sliding window of this layer (null: whole context). */
  window: number | null;
  /** Extra attributes of the Attention op (scale, softcap). */
  attrs?: Record<string, { float: number }>;
}

/** x → attention output projected by o_proj, LoRA and DoRA deltas included ([T, hidden]). */
export function emitAttention(ctx: LayerContext, l: number, x: string, pQkv: PreparedLinear, pO: PreparedLinear, opts: AttentionOptions): string {
  const { g, spec } = ctx;
  const ft = g.ft;
  const kvDim = spec.numKvHeads * spec.headDim;
  const qDim = spec.numHeads * spec.headDim;
  const qkv = ctx.adapt(emitLinear(g, x, `layers.${l}.qkv`, pQkv), x, l, ['q_proj', 'k_proj', 'v_proj'], pQkv.bias);
  const [q, k, v] = [g.name('q'), g.name('k'), newValue(l)];
  g.opMulti('Split', [qkv, g.const64([qDim, kvDim, kvDim])], [q, k, v], { axis: 1 });
  g.output(v, ft, ['T', kvDim]);
  const partial = spec.rotaryDim < spec.headDim ? { rotary_embedding_dim: spec.rotaryDim } : {};
  const rot = (y: string, heads: number): string =>
    g.op('Squeeze', [
      g.op('RotaryEmbedding', [g.op('Unsqueeze', [y, g.const64([0])]), ctx.positions, opts.rotary.cos, opts.rotary.sin], { num_heads: heads, interleaved: 0, ...partial }, { domain: 'com.microsoft' }),
      g.const64([0]),
    ]);
  const qr = rot(opts.headNorm(q, spec.numHeads, 'q'), spec.numHeads);
  const kr = g.op('Identity', [rot(opts.headNorm(k, spec.numKvHeads, 'k'), spec.numKvHeads)], undefined, { out: newKey(l) });
  g.output(kr, ft, ['T', kvDim]);

  const pk = g.input(pastKey(l), ft, ['pool', kvDim]);
  const pv = g.input(pastValue(l), ft, ['pool', kvDim]);
  // Per attention group: [Bg, Wg, kvDim] by position, each row's past from the pool with its new
  // keys written after them (so a key's slot never depends on the other rows' lengths; see
  // graph/io.ts), and the group's padded queries.
  const outputs = ctx.attentionGroups.map((grp) => {
    const own = (t: string): string => g.op('Gather', [t, grp.newTokens], { axis: 0 });
    const keys = g.op('ScatterND', [g.op('Gather', [pk, grp.kvIndex], { axis: 0 }), grp.kvNewSlot, own(kr)]);
    const values = g.op('ScatterND', [g.op('Gather', [pv, grp.kvIndex], { axis: 0 }), grp.kvNewSlot, own(v)]);
    const qPadded = g.op('Gather', [qr, grp.padIndex], { axis: 0 });
    const attn = g.op('Attention', [qPadded, keys, values, grp.mask(opts.window)], { q_num_heads: spec.numHeads, kv_num_heads: spec.numKvHeads, ...opts.attrs });
    return g.op('Reshape', [attn, g.const64([-1, qDim])]);
  });
  const padded = outputs.length === 1 ? outputs[0] : g.op('Concat', outputs, { axis: 0 });
  const attnPacked = g.op('Gather', [padded, ctx.unpadIndex], { axis: 0 });
  return ctx.adapt(emitLinear(g, attnPacked, `layers.${l}.o`, pO), attnPacked, l, ['o_proj'], pO.bias);
}

/** x → down(act(gate(x)) · up(x)), LoRA and DoRA deltas included ([T, hidden]). */
export function emitGatedMlp(ctx: LayerContext, l: number, x: string, pGu: PreparedLinear, pDown: PreparedLinear, act: (gate: string) => string): string {
  const { g, spec } = ctx;
  const I = spec.intermediateSize;
  const gu = ctx.adapt(emitLinear(g, x, `layers.${l}.gate_up`, pGu), x, l, ['gate_proj', 'up_proj'], pGu.bias);
  const [gate, up] = [g.name('gate'), g.name('up')];
  g.opMulti('Split', [gu, g.const64([I, I])], [gate, up], { axis: 1 });
  const hidden = g.op('Mul', [act(gate), up]);
  return ctx.adapt(emitLinear(g, hidden, `layers.${l}.down`, pDown), hidden, l, ['down_proj'], pDown.bias);
}

/** Per-head RMSNorm of q or k: reshape to [T, heads, headDim], normalize with `weight` [headDim], reshape back. */
export function normPerHead(ctx: LayerContext, x: string, heads: number, weight: string): string {
  const { g, spec } = ctx;
  const perHead = g.op('Reshape', [x, g.const64([-1, heads, spec.headDim])]);
  return g.op('Reshape', [g.op('SimplifiedLayerNormalization', [perHead, weight], { epsilon: { float: spec.rmsNormEps }, axis: -1 }), g.const64([-1, heads * spec.headDim])]);
}

/** Row-major matrices stacked (fused weights from separate checkpoint tensors). */
export function concatRows(parts: Float32Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}
