/**
 * TIES / DARE / magnitude-prune merges of tensors against values worked by hand from PEFT's
 * definitions (prune → elect a sign from the unweighted pruned values → weighted disjoint mean).
 */
import { describe, expect, it } from 'vitest';
import { magnitudePrune, mergeTensors, randomPrune, recipeRandom, type MergeOptions } from '../../src/adapters/task-arithmetic.js';

const t1 = Float32Array.from([3, -1, 0.5, -4]);
const t2 = Float32Array.from([-2, 2, 1, -1]);
const weights = [1, 0.5];
/** A fixed sequence of draws: t1's four elements, then t2's. */
const draws = (): (() => number) => {
  const seq = [0.1, 0.9, 0.3, 0.7, 0.6, 0.2, 0.8, 0.4];
  let i = 0;
  return () => seq[i++];
};
const opts = (o: Partial<MergeOptions>): MergeOptions => ({ method: 'ties', density: 0.5, signMethod: 'total', random: draws(), ...o });

describe('task-arithmetic merges', () => {
  it('magnitude pruning keeps ⌊density·n⌋ largest magnitudes, ties to the earlier element', () => {
    expect([...magnitudePrune(t1, 0.5)]).toEqual([3, 0, 0, -4]);
    expect([...magnitudePrune(t2, 0.5)]).toEqual([-2, 2, 0, 0]);
    expect([...magnitudePrune(Float32Array.from([1, -1, 1]), 0.34)]).toEqual([1, 0, 0]);
    expect([...magnitudePrune(t1, 1)]).toEqual([...t1]);
  });

  it('random pruning keeps draws below the density and rescales them', () => {
    expect([...randomPrune(t1, 0.5, draws())]).toEqual([6, 0, 1, 0]);
  });

  it('ties, dare_linear, dare_ties and magnitude_prune give the hand-worked values', () => {
    // Pruned: t1 → [3, 0, 0, -4], t2 → [-2, 2, 0, 0]; signs by sum: + + + −; weighted t2 halves.
    expect([...mergeTensors([t1, t2], weights, opts({ method: 'ties' }))]).toEqual([3, 1, 0, -4]);
    expect([...mergeTensors([t1, t2], weights, opts({ method: 'ties', signMethod: 'frequency' }))]).toEqual([3, 1, 0, -4]);
    expect([...mergeTensors([t1, t2], weights, opts({ method: 'magnitude_prune' }))]).toEqual([2, 1, 0, -4]);
    // DARE: t1 → [6, 0, 1, 0], t2 → [0, 4, 0, -2].
    expect([...mergeTensors([t1, t2], weights, opts({ method: 'dare_linear' }))]).toEqual([6, 2, 1, -1]);
    expect([...mergeTensors([t1, t2], weights, opts({ method: 'dare_ties' }))]).toEqual([6, 2, 1, -1]);
    // Where the elected sign loses a larger weighted value: total and frequency elect differently.
    const a = Float32Array.from([5]);
    const b = Float32Array.from([-1]);
    const c = Float32Array.from([-1]);
    expect([...mergeTensors([a, b, c], [1, 1, 1], opts({ density: 1, signMethod: 'total' }))]).toEqual([5]);
    expect([...mergeTensors([a, b, c], [1, 1, 1], opts({ density: 1, signMethod: 'frequency' }))]).toEqual([-1]);
  });

  it("DARE's drops are the same for the same recipe and differ between recipes", () => {
    const big = Float32Array.from({ length: 256 }, (_, i) => i + 1);
    const once = randomPrune(big, 0.5, recipeRandom('merge(a*1+b*2)'));
    expect(randomPrune(big, 0.5, recipeRandom('merge(a*1+b*2)'))).toEqual(once);
    expect(randomPrune(big, 0.5, recipeRandom('merge(a*1+b*3)'))).not.toEqual(once);
    const kept = once.filter((v) => v !== 0).length;
    expect(kept).toBeGreaterThan(96);
    expect(kept).toBeLessThan(160);
  });
});

describe('LoRA combinations by task arithmetic', () => {
  it('ties and magnitude_prune equal an independent reference of PEFT add_weighted_adapter (ΔW = B·A)', async () => {
    const { mergeByTaskArithmetic } = await import('../../src/adapters/merge.js');
    const { referenceMergedDelta } = await import('../helpers/peft-merge-reference.js');
    const { symmetricPrng } = await import('../../src/util/prng.js');
    const rnd = symmetricPrng(31);
    const [r, din, dout] = [3, 5, 4];
    const matrix = (rows: number, cols: number): number[][] => Array.from({ length: rows }, () => Array.from({ length: cols }, () => rnd()));
    const adapters = [
      { a: matrix(r, din), b: matrix(dout, r), scale: 2, weight: 0.7 },
      { a: matrix(r, din), b: matrix(dout, r), scale: 0.5, weight: 1.3 },
      { a: matrix(r, din), b: matrix(dout, r), scale: 1, weight: 0.4 },
    ];
    // Our layout: a = Aᵀ [in, r], b = scale·Bᵀ [r, out].
    const parts = adapters.map((x) => ({
      weight: x.weight,
      weights: {
        maxRank: r,
        bytes: 0,
        factors: new Map([['0.q_proj', { rank: r, scale: x.scale, a: Float32Array.from({ length: din * r }, (_, k) => x.a[k % r][Math.floor(k / r)]), b: Float32Array.from({ length: r * dout }, (_, k) => x.scale * x.b[k % dout][Math.floor(k / dout)]) }]]),
      },
    }));
    for (const [method, density, sign] of [['ties', 0.5, 'total'], ['ties', 0.7, 'frequency'], ['magnitude_prune', 0.4, 'total']] as const) {
      const merged = mergeByTaskArithmetic(parts, { method, density, signMethod: sign, recipe: 'x' }).factors.get('0.q_proj')!;
      const want = referenceMergedDelta(adapters, method, density, sign);
      for (let o = 0; o < dout; o++) {
        for (let i = 0; i < din; i++) {
          let got = 0;
          for (let k = 0; k < r; k++) got += merged.a[i * r + k] * merged.b[k * dout + o];
          expect(got, `${method} ΔW[${o}][${i}]`).toBeCloseTo(want[o][i], 5);
        }
      }
    }
    expect(() => mergeByTaskArithmetic([{ ...parts[0], weight: -1 }], { method: 'ties', density: 0.5, signMethod: 'total', recipe: 'x' })).toThrow(/weights >= 0/);
  });
});
