/**
 * An independent reference for PEFT's add_weighted_adapter with ties / magnitude_prune, in PEFT's
 * own layout (lora_A [r, in], lora_B [out, r], as nested arrays): each adapter's A and B are
 * task tensors, weighted √(w·scale); the merged adapter has scale 1. Returns ΔW = B·A [out, in].
 */
import type { RefLora, RefTensor } from './model-types.js';

type Matrix = number[][];

export interface RefAdapter {
  a: Matrix;
  b: Matrix;
  scale: number;
  weight: number;
}

function topKMask(m: Matrix, density: number): Matrix {
  const flat = m.flat().map((v, i) => ({ v: Math.abs(v), i }));
  const k = Math.floor(density * flat.length);
  const keep = new Set(flat.sort((x, y) => y.v - x.v).slice(0, k).map((x) => x.i));
  const cols = m[0].length;
  return m.map((row, r) => row.map((v, c) => (keep.has(r * cols + c) ? v : 0)));
}

function merge(tensors: Matrix[], weights: number[], method: 'ties' | 'magnitude_prune', density: number, sign: 'total' | 'frequency'): Matrix {
  const pruned = tensors.map((t) => topKMask(t, density));
  return pruned[0].map((row, r) =>
    row.map((_, c) => {
      const vals = pruned.map((t) => t[r][c]);
      if (method === 'magnitude_prune') return vals.reduce((s, v, k) => s + v * weights[k], 0);
      const elected = (sign === 'total' ? vals.reduce((s, v) => s + v, 0) : vals.reduce((s, v) => s + Math.sign(v), 0)) >= 0 ? 1 : -1;
      const agree = vals.map((v, k) => ({ v: v * weights[k], ok: Math.sign(v) === elected })).filter((x) => x.ok);
      return agree.reduce((s, x) => s + x.v, 0) / Math.max(1, agree.length);
    }),
  );
}

/** The merged adapter's A [r, in] and B [out, r] (its scale is 1). */
export function referenceMergedPair(adapters: RefAdapter[], method: 'ties' | 'magnitude_prune', density: number, sign: 'total' | 'frequency' = 'total'): { a: Matrix; b: Matrix } {
  const w = adapters.map((x) => Math.sqrt(x.weight * x.scale));
  return { a: merge(adapters.map((x) => x.a), w, method, density, sign), b: merge(adapters.map((x) => x.b), w, method, density, sign) };
}

export function referenceMergedDelta(adapters: RefAdapter[], method: 'ties' | 'magnitude_prune', density: number, sign: 'total' | 'frequency' = 'total'): Matrix {
  const { a, b } = referenceMergedPair(adapters, method, density, sign);
  return b.map((brow) => a[0].map((_, c) => brow.reduce((s, v, k) => s + v * a[k][c], 0)));
}

/** Whole adapters (RefLora: module key → {a [r, in], b [out, r], scale}) merged module by module. */
export function referenceMergedLora(loras: { lora: RefLora; weight: number }[], method: 'ties' | 'magnitude_prune', density: number, sign: 'total' | 'frequency' = 'total'): RefLora {
  const toMatrix = (t: RefTensor): Matrix => Array.from({ length: t.shape[0] }, (_, r) => Array.from(t.data.subarray(r * t.shape[1], (r + 1) * t.shape[1])));
  const toTensor = (m: Matrix): RefTensor => ({ shape: [m.length, m[0].length], data: Float32Array.from(m.flat()) });
  const out: RefLora = new Map();
  const keys = [...new Set(loras.flatMap((l) => [...l.lora.keys()]))];
  for (const key of keys) {
    const present = loras.flatMap((l) => {
      const p = l.lora.get(key);
      return p ? [{ a: toMatrix(p.a), b: toMatrix(p.b), scale: p.scale, weight: l.weight }] : [];
    });
    const { a, b } = referenceMergedPair(present, method, density, sign);
    out.set(key, { a: toTensor(a), b: toTensor(b), scale: 1 });
  }
  return out;
}
