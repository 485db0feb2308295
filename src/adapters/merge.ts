/**
 * Linear combinations of adapters. Because Σ wᵢ·Bᵢ·Aᵢ = [w₁B₁ | w₂B₂ | …]·[A₁; A₂; …], a weighted sum of
 * LoRAs is itself a LoRA whose rank is the sum of the ranks: A factors are concatenated along the
 * rank, B factors stacked along the rank with each adapter's weight folded in. The result goes into
 * a slot like any adapter.
 */
import { AdapterInvalidError } from '../errors.js';
import type { LoraFactor, LoraWeights } from '../runtime/lora-stacks.js';
import { mergeTensors, recipeRandom, type MergeMethod, type SignMethod } from './task-arithmetic.js';

export interface WeightedAdapter {
  weights: LoraWeights;
  weight: number;
}

/** The factors the adapters have at one module, with their weights (adapters without one are left out). */
function factorsAt(parts: readonly WeightedAdapter[], key: string): { f: LoraFactor; w: number }[] {
  return parts.flatMap((p) => {
    const f = p.weights.factors.get(key);
    return f ? [{ f, w: p.weight }] : [];
  });
}

export function mergeLoraWeights(parts: readonly WeightedAdapter[], maxRank: number): LoraWeights {
  if (parts.length === 0) throw new AdapterInvalidError('a combination needs at least one adapter', 'merged_adapters');
  const keys = new Set<string>();
  for (const p of parts) for (const k of p.weights.factors.keys()) keys.add(k);
  const factors = new Map<string, LoraFactor>();
  let top = 0;
  let bytes = 0;
  for (const key of keys) {
    const present = factorsAt(parts, key);
    const rank = present.reduce((n, x) => n + x.f.rank, 0);
    if (rank > maxRank) {
      throw new AdapterInvalidError(`the combination has rank ${rank} at ${key} (the sum of its adapters' ranks), above the maximum LoRA rank ${maxRank}`, 'merged_adapters');
    }
    const din = present[0].f.a.length / present[0].f.rank;
    const dout = present[0].f.b.length / present[0].f.rank;
    const a = new Float32Array(din * rank);
    const b = new Float32Array(rank * dout);
    let r0 = 0;
    for (const { f, w } of present) {
      // a: [in, rank] row-major → columns r0..r0+f.rank
      for (let i = 0; i < din; i++) a.set(f.a.subarray(i * f.rank, (i + 1) * f.rank), i * rank + r0);
      // b: [rank, out] → rows r0..r0+f.rank, times w
      for (let j = 0; j < f.rank * dout; j++) b[r0 * dout + j] = f.b[j] * w;
      r0 += f.rank;
    }
    factors.set(key, { rank, a, b });
    top = Math.max(top, rank);
    bytes += a.byteLength + b.byteLength;
  }
  return { factors, maxRank: top, bytes };
}

export interface TaskArithmetic {
  method: MergeMethod;
  density: number;
  signMethod: SignMethod;
  /** The recipe's key: DARE's drops are seeded by it. */
  recipe: string;
}

/**
 * A TIES / DARE / magnitude-prune combination, as PEFT's add_weighted_adapter makes it: at each
 * module, the adapters' unscaled A factors are merged with weights √(wᵢ·sᵢ) (sᵢ the adapter's
 * LoRA scale there), and their B factors the same way; the result has the adapters' common rank
 * and scale 1. Adapters must share the rank at each module they have in common; weights must not
 * be negative (their square roots are taken).
 */
export function mergeByTaskArithmetic(parts: readonly WeightedAdapter[], o: TaskArithmetic): LoraWeights {
  if (parts.length === 0) throw new AdapterInvalidError('a combination needs at least one adapter', 'merged_adapters');
  const negative = parts.findIndex((p) => !(p.weight >= 0));
  if (negative >= 0) throw new AdapterInvalidError(`merged_adapters.weights[${negative}] is ${parts[negative].weight}: ${o.method} merges need weights >= 0`, 'merged_adapters.weights');
  const random = recipeRandom(o.recipe);
  const keys = [...new Set(parts.flatMap((p) => [...p.weights.factors.keys()]))].sort();
  const factors = new Map<string, LoraFactor>();
  let top = 0;
  let bytes = 0;
  for (const key of keys) {
    const present = factorsAt(parts, key);
    const rank = present[0].f.rank;
    if (present.some((x) => x.f.rank !== rank)) {
      throw new AdapterInvalidError(`${o.method} merges need the adapters to share the rank at each module; at ${key} they have ranks ${present.map((x) => x.f.rank).join(', ')}`, 'merged_adapters');
    }
    if (present.some((x) => !(x.f.scale !== undefined && x.f.scale > 0))) throw new AdapterInvalidError(`${o.method} merges need each adapter's LoRA scale at ${key}`, 'merged_adapters');
    const weights = present.map((x) => Math.sqrt(x.w * x.f.scale!));
    const a = mergeTensors(present.map((x) => x.f.a), weights, { ...o, random });
    const b = mergeTensors(present.map((x) => x.f.b.map((v) => v / x.f.scale!)), weights, { ...o, random });
    factors.set(key, { rank, a, b, scale: 1 });
    top = Math.max(top, rank);
    bytes += a.byteLength + b.byteLength;
  }
  return { factors, maxRank: top, bytes };
}
