/** Sampling: greedy equivalences, the nucleus, penalties, logprobs and seeded reproducibility. */
import { describe, expect, it } from 'vitest';
import { Generation } from '../../src/runtime/generation.js';
import { GREEDY, Rng, Sampler, logSumExp, type SamplingParams } from '../../src/runtime/sampling.js';
import { argmax, loadTiny, logitsOf } from '../helpers/runtime.js';
import { makeTinyModel, prng, randn } from '../helpers/tiny-model.js';

const params = (p: Partial<SamplingParams>): SamplingParams => ({ ...GREEDY, ...p });
const noHistory = { seen: new Set<number>(), outputCounts: new Map<number, number>() };

function randomLogits(seed: number, n: number, scale = 3): Float32Array {
  return randn(prng(seed), n, scale);
}

describe('Sampler', () => {
  const V = 1000;
  const sampler = new Sampler(V);

  it('temperature 0 and top_k = 1 both give the argmax', () => {
    for (let seed = 1; seed <= 20; seed++) {
      const logits = randomLogits(seed, V);
      const best = argmax(logits);
      expect(sampler.sample(logits.slice(), params({}), noHistory, new Rng(seed)).id).toBe(best);
      expect(sampler.sample(logits.slice(), params({ temperature: 1.3, topK: 1 }), noHistory, new Rng(seed)).id).toBe(best);
    }
  });

  it('top_p draws only from the smallest set holding top_p of the mass, in proportion', () => {
    // Five tokens with probabilities .4 .3 .2 .06 .04; top_p .85 keeps the first three (mass .9).
    const probs = [0.4, 0.3, 0.2, 0.06, 0.04];
    const logits = new Float32Array(V).fill(-1e9);
    probs.forEach((p, i) => (logits[i * 7] = Math.log(p)));
    const rng = new Rng(42);
    const counts = new Map<number, number>();
    const N = 20000;
    for (let i = 0; i < N; i++) {
      const id = sampler.sample(logits.slice(), params({ temperature: 1, topP: 0.85 }), noHistory, rng).id;
      counts.set(id, (counts.get(id) ?? 0) + 1);
    }
    expect([...counts.keys()].sort((a, b) => a - b)).toEqual([0, 7, 14]);
    expect(counts.get(0)! / N).toBeCloseTo(0.4 / 0.9, 1);
    expect(counts.get(7)! / N).toBeCloseTo(0.3 / 0.9, 1);
    expect(counts.get(14)! / N).toBeCloseTo(0.2 / 0.9, 1);
  });

  it('top_p over a flat distribution still keeps the right number of tokens', () => {
    const logits = new Float32Array(V); // uniform: top_p .5 keeps 500 tokens
    const seen = new Set<number>();
    const rng = new Rng(7);
    for (let i = 0; i < 20000; i++) seen.add(sampler.sample(logits.slice(), params({ temperature: 1, topP: 0.5 }), noHistory, rng).id);
    expect(seen.size).toBe(500);
    expect(Math.max(...seen)).toBe(499);
  });

  it('top_k and min_p restrict the candidates', () => {
    const logits = Float32Array.from({ length: V }, (_, i) => -i / 10);
    const rng = new Rng(3);
    const ids = new Set<number>();
    for (let i = 0; i < 3000; i++) ids.add(sampler.sample(logits.slice(), params({ temperature: 1, topK: 5 }), noHistory, rng).id);
    expect([...ids].sort((a, b) => a - b)).toEqual([0, 1, 2, 3, 4]);
    ids.clear();
    // min_p .5: keep tokens with p >= .5 p_max, i.e. logit >= -ln 2: ids 0..6
    for (let i = 0; i < 3000; i++) ids.add(sampler.sample(logits.slice(), params({ temperature: 1, minP: 0.5 }), noHistory, rng).id);
    expect(Math.max(...ids)).toBe(6);
  });

  it('applies logit_bias, repetition, frequency and presence penalties', () => {
    const base = Float32Array.from([2, 1.9, -1, 0.5]);
    const s = new Sampler(4);
    expect(s.sample(base.slice(), params({ logitBias: new Map([[3, 100]]) }), noHistory, new Rng(1)).id).toBe(3);
    const rep = base.slice();
    s.sample(rep, params({ repetitionPenalty: 2 }), { seen: new Set([0, 2]), outputCounts: new Map() }, new Rng(1));
    expect(Array.from(rep)).toEqual(Array.from(Float32Array.from([1, 1.9, -2, 0.5])));
    const freq = base.slice();
    expect(s.sample(freq, params({ frequencyPenalty: 0.5, presencePenalty: 0.25 }), { seen: new Set(), outputCounts: new Map([[0, 2]]) }, new Rng(1)).id).toBe(1);
    expect(freq[0]).toBeCloseTo(2 - 1 - 0.25, 6);
  });

  it('reports the chosen token logprob and the top N alternatives', () => {
    const logits = randomLogits(9, V);
    const logZ = logSumExp(logits);
    const r = sampler.sample(logits.slice(), params({ logprobs: 5 }), noHistory, new Rng(1));
    expect(r.logprob).toBeCloseTo(logits[r.id] - logZ, 5);
    const sorted = Array.from(logits).map((l, i) => ({ i, l })).sort((a, b) => b.l - a.l).slice(0, 5);
    expect(r.top!.map((t) => t.id)).toEqual(sorted.map((s) => s.i));
    r.top!.forEach((t, j) => expect(t.logprob).toBeCloseTo(sorted[j].l - logZ, 5));
  });

  it('the same seed gives the same draws', () => {
    const logits = randomLogits(11, V, 1);
    const draw = (seed: number) => {
      const rng = new Rng(seed);
      return Array.from({ length: 30 }, () => sampler.sample(logits.slice(), params({ temperature: 0.9, topP: 0.95 }), noHistory, rng).id);
    };
    expect(draw(5)).toEqual(draw(5));
    expect(draw(5)).not.toEqual(draw(6));
  });
});

describe('seeded sampling in a batch', () => {
  it('a seeded row produces the same tokens alone and at another position of a mixed batch', async () => {
    const tm = makeTinyModel({ seed: 71 });
    const model = await loadTiny(tm);
    const sampler = new Sampler(tm.cfg.vocabSize);
    const p = params({ temperature: 1.1, topP: 0.9, seed: 1234 });
    const stop = { maxNewTokens: 12, eosIds: new Set<number>(), stopTokenIds: new Set<number>(), stopStrings: [] };
    const prompt = [5, 6, 7, 8];

    async function run(others: number): Promise<number[]> {
      const rows = Array.from({ length: others + 1 }, (_, i) => {
        const isTarget = i === others;
        const pr = isTarget ? prompt : [9 + i, 3, 1];
        return { seq: model.newSequence(), prompt: pr, gen: new Generation(pr, isTarget ? p : params({ temperature: 1, seed: 99 + i }), stop, null) };
      });
      for (let step = 0; step < 12; step++) {
        const out = await model.step(rows.map((r) => ({ seq: r.seq, tokens: step === 0 ? r.prompt : [r.gen.output.at(-1)!], slot: -1, logits: 'last' as const })));
        rows.forEach((r, i) => r.gen.next(logitsOf(out, i).slice(), sampler));
      }
      rows.forEach((r) => model.freeSequence(r.seq));
      return rows[others].gen.output;
    }
    const alone = await run(0);
    expect(await run(3)).toEqual(alone);
    expect(await run(1)).toEqual(alone);
    await model.close();
  });
});
