/**
 * Task-arithmetic merges of same-shaped tensors, as PEFT's `add_weighted_adapter` and LoRAX's
 * merge strategies define them (each tensor is one adapter's lora_A or lora_B at one module):
 *
 * - `ties`: keep each tensor's `density` fraction of largest magnitudes, elect a sign per element
 *   (the sign of the sum, `total`, or of the count of signs, `frequency`), then average the
 *   weighted values that agree with it;
 * - `dare_linear`: drop each element with probability 1 − density and rescale the survivors by
 *   1 / density, then take the weighted sum;
 * - `dare_ties`: DARE's random drop, then TIES's sign election and disjoint mean;
 * - `magnitude_prune`: TIES's pruning, then the weighted sum.
 *
 * DARE's drops come from a seeded generator, so the same recipe always gives the same weights.
 * Ties in magnitude are broken by position (the earlier element is kept).
 */
import { prng } from '../util/prng.js';

export const MERGE_METHODS = ['ties', 'dare_linear', 'dare_ties', 'magnitude_prune'] as const;
export type MergeMethod = (typeof MERGE_METHODS)[number];
export type SignMethod = 'total' | 'frequency';

export interface MergeOptions {
  method: MergeMethod;
  /** The fraction of each tensor's elements kept, in (0, 1]. */
  density: number;
  signMethod: SignMethod;
  /** DARE's drops. */
  random: () => number;
}

/** The `density` fraction of largest magnitudes kept (k = ⌊density·n⌋, as PEFT counts), the rest zeroed. */
export function magnitudePrune(t: Float32Array, density: number): Float32Array {
  if (density >= 1) return t.slice();
  const k = Math.floor(density * t.length);
  const order = Array.from({ length: t.length }, (_, i) => i).sort((i, j) => Math.abs(t[j]) - Math.abs(t[i]) || i - j);
  const out = new Float32Array(t.length);
  for (let n = 0; n < k; n++) out[order[n]] = t[order[n]];
  return out;
}

/** Each element kept with probability `density` and divided by it; the rest zeroed. */
export function randomPrune(t: Float32Array, density: number, random: () => number): Float32Array {
  if (density >= 1) return t.slice();
  const out = new Float32Array(t.length);
  for (let i = 0; i < t.length; i++) if (random() < density) out[i] = t[i] / density;
  return out;
}

/** The merged tensor of same-length `tensors`, weighted by `weights`. */
export function mergeTensors(tensors: readonly Float32Array[], weights: readonly number[], o: MergeOptions): Float32Array {
  const n = tensors[0].length;
  const pruned = tensors.map((t) => (o.method === 'dare_linear' || o.method === 'dare_ties' ? randomPrune(t, o.density, o.random) : magnitudePrune(t, o.density)));
  const out = new Float32Array(n);
  if (o.method === 'dare_linear' || o.method === 'magnitude_prune') {
    for (let i = 0; i < n; i++) {
      let sum = 0;
      for (let k = 0; k < pruned.length; k++) sum += pruned[k][i] * weights[k];
      out[i] = sum;
    }
    return out;
  }
  for (let i = 0; i < n; i++) {
    // The elected sign, from the pruned values before weighting (as PEFT elects it).
    let vote = 0;
    for (const p of pruned) vote += o.signMethod === 'total' ? p[i] : Math.sign(p[i]);
    const sign = vote >= 0 ? 1 : -1;
    let sum = 0;
    let kept = 0;
    for (let k = 0; k < pruned.length; k++) {
      if (Math.sign(pruned[k][i]) !== sign) continue;
      sum += pruned[k][i] * weights[k];
      kept++;
    }
    out[i] = sum / Math.max(kept, 1);
  }
  return out;
}

/** A generator for DARE's drops, seeded by the recipe (its cache key). */
export function recipeRandom(recipe: string): () => number {
  let h = 2166136261;
  for (let i = 0; i < recipe.length; i++) h = Math.imul(h ^ recipe.charCodeAt(i), 16777619);
  return prng(h >>> 0);
}
