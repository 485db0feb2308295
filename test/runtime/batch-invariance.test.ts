/**
 * A row's answer does not depend on the other rows of its steps: a greedy probe run alone and run
 * amid other traffic (other adapters and the base model, prompts of other lengths joining and
 * leaving, decode rows with longer and shorter pasts, the probe at different places in the batch)
 * gets the same tokens and the same logits, bit for bit, in every weight format. Nor does the way
 * its prompt is cut into chunks (which the scheduler chooses from a prefill budget all rows share).
 */
import { afterAll, describe, expect, it } from 'vitest';
import type { WeightFormat } from '../../src/runtime/graph/quant.js';
import type { KvSequence } from '../../src/runtime/kv-cache.js';
import type { DecoderModel, StepRow } from '../../src/runtime/model.js';
import { argmax, loadAdapter, loadTiny, logitsOf } from '../helpers/runtime.js';
import { makeTinyAdapter, makeTinyModel, prng } from '../helpers/tiny-model.js';

const tm = makeTinyModel({ seed: 23, vocabSize: 128 });
// Slot 3 holds a DoRA adapter: its rows' scales must not reach the LoRA and base rows beside them.
const adapters = [...[0, 1, 2].map((i) => makeTinyAdapter(tm, { seed: 60 + i, r: 4 + 4 * i, bStd: 0.3 })), makeTinyAdapter(tm, { seed: 63, r: 8, bStd: 0.3, dora: 0.3 })];
const open: DecoderModel[] = [];
afterAll(async () => {
  for (const m of open) await m.close();
});

interface Probe {
  prompt: number[];
  slot: number;
}

interface Answer {
  tokens: number[];
  logprobs: number[];
  /** Every step's logits row, as raw bits. */
  bits: Uint32Array[];
}

interface Neighbour {
  seq: KvSequence;
  slot: number;
  next: number[];
  left: number;
}

function logprob(logits: Float32Array, token: number): number {
  let max = -Infinity;
  for (const x of logits) max = Math.max(max, x);
  let sum = 0;
  for (const x of logits) sum += Math.exp(x - max);
  return logits[token] - max - Math.log(sum);
}

/** Neighbours that join at `step`: [prompt length, slot, tokens to generate]. */
function joining(step: number): [number, number, number][] {
  const plan: Record<number, [number, number, number][]> = {
    0: [
      [3, 1, 4],
      [12, -1, 9],
      [1, 2, 2],
    ],
    1: [[20, 0, 6]],
    2: [
      [2, 0, 3],
      [7, 1, 12],
      [5, -1, 1],
    ],
    4: [
      [33, 2, 5],
      [6, 3, 7],
    ],
    5: Array.from({ length: 9 }, (_, i): [number, number, number] => [1 + (i % 4), (i % 5) - 1, 3 + i]),
    8: [[17, 0, 4]],
  };
  return plan[step] ?? [];
}

/** Greedy decoding of `probe` for `n` tokens, alone or with the planned traffic around it. */
async function greedy(model: DecoderModel, probe: Probe, n: number, traffic: boolean): Promise<Answer> {
  const rand = prng(5);
  const seq = model.newSequence();
  const answer: Answer = { tokens: [], logprobs: [], bits: [] };
  const neighbours: Neighbour[] = [];
  let input = probe.prompt;
  for (let step = 0; step < n; step++) {
    if (traffic) {
      for (const [len, slot, left] of joining(step)) {
        neighbours.push({ seq: model.newSequence(), slot, next: Array.from({ length: len }, () => Math.floor(rand() * 128)), left });
      }
    }
    const others: StepRow[] = neighbours.map((nb) => ({ seq: nb.seq, tokens: nb.next, slot: nb.slot, logits: 'last' }));
    const at = step % (others.length + 1);
    const rows = [...others.slice(0, at), { seq, tokens: input, slot: probe.slot, logits: 'last' as const }, ...others.slice(at)];
    const out = await model.step(rows);
    const logits = logitsOf(out, at);
    const token = argmax(logits);
    answer.tokens.push(token);
    answer.logprobs.push(logprob(logits, token));
    answer.bits.push(new Uint32Array(logits.slice().buffer));
    input = [token];
    neighbours.forEach((nb, i) => (nb.next = [argmax(logitsOf(out, i < at ? i : i + 1))]));
    for (const nb of neighbours) nb.left--;
    for (const nb of neighbours.filter((x) => x.left <= 0)) model.freeSequence(nb.seq);
    neighbours.splice(0, neighbours.length, ...neighbours.filter((x) => x.left > 0));
  }
  for (const nb of neighbours) model.freeSequence(nb.seq);
  model.freeSequence(seq);
  return answer;
}

describe('batch invariance', () => {
  const probes: Probe[] = [
    { prompt: [5, 9, 17, 33, 65, 3, 8, 13, 21], slot: 0 },
    { prompt: [40, 41], slot: -1 },
    { prompt: [7], slot: 2 },
    { prompt: [11, 12, 13, 14], slot: 3 },
  ];
  for (const weights of ['int4', 'int8', 'nf4', 'fp32', 'w8a8'] as WeightFormat[]) {
    it(`${weights}: a greedy probe gets the same tokens, logprobs and logits alone and amid other traffic`, async () => {
      const model = await loadTiny(tm, { weights }, { adapterSlots: 4, kvCacheTokens: 4096 });
      open.push(model);
      for (const a of adapters) await loadAdapter(model, a);
      for (const probe of probes) {
        const alone = await greedy(model, probe, 12, false);
        const busy = await greedy(model, probe, 12, true);
        const what = `probe with slot ${probe.slot}, prompt of ${probe.prompt.length}`;
        expect(busy.tokens, what).toEqual(alone.tokens);
        expect(busy.logprobs, what).toEqual(alone.logprobs);
        const differing = busy.bits.map((b, step) => ({ step, n: b.reduce((c, x, i) => c + (x === alone.bits[step][i] ? 0 : 1), 0) })).filter((d) => d.n > 0);
        expect(differing, `${what}: steps whose logits differ in some bits`).toEqual([]);
      }
    });
  }

  it('a prompt prefilled in one step or in chunks of any size gets the same logits, bit for bit', async () => {
    const model = await loadTiny(tm, { weights: 'int4' }, { adapterSlots: 4, kvCacheTokens: 2048 });
    open.push(model);
    await loadAdapter(model, adapters[0]);
    const prompt = Array.from({ length: 37 }, (_, i) => (i * 13) % 128);
    const prefill = async (cuts: number[]): Promise<Uint32Array> => {
      const seq = model.newSequence();
      let out = null;
      for (let i = 0; i + 1 < cuts.length; i++) out = await model.step([{ seq, tokens: prompt.slice(cuts[i], cuts[i + 1]), slot: 0, logits: 'last' }]);
      model.freeSequence(seq);
      return new Uint32Array(logitsOf(out!, 0).slice().buffer);
    };
    const whole = await prefill([0, 37]);
    for (const cuts of [
      [0, 5, 6, 30, 37],
      [0, 36, 37],
      [0, 1, 2, 3, 20, 37],
    ]) {
      expect(Array.from(await prefill(cuts)), `chunks at ${cuts.join(', ')}`).toEqual(Array.from(whole));
    }
  });

  it('with 2 threads on a model wide enough that onnxruntime splits its scatters, a decode row beside other adapters\' rows gets the same logits as alone, every time', async () => {
    // onnxruntime's CPU ScatterND(add) shares its updates out over threads with no care for
    // repeated indices: when group padding also added (zeros) to token 0, the two adds raced and
    // token 0 lost its LoRA delta in over half of these steps.
    const wide = makeTinyModel({ seed: 3, vocabSize: 128, hiddenSize: 128, intermediateSize: 16384, numLayers: 2 });
    const model = await loadTiny(wide, { weights: 'fp32' }, { adapterSlots: 8, maxLoraRank: 16, kvCacheTokens: 4096, threads: 2 });
    open.push(model);
    for (let i = 0; i < 8; i++) await loadAdapter(model, makeTinyAdapter(wide, { seed: 100 + i, r: 8, bStd: 0.3 }));
    const decode = async (traffic: boolean): Promise<number[]> => {
      const seq = model.newSequence();
      await model.step([{ seq, tokens: [5, 6, 7], slot: 1, logits: 'none' }]);
      // Slot 0 unused (its group is all padding), slot 2 with 7 rows (slot 1's group padded to 7).
      const others: StepRow[] = traffic ? Array.from({ length: 14 }, (_, i) => ({ seq: model.newSequence(), tokens: [9 + i], slot: i < 7 ? 2 : 3 + (i % 5), logits: 'none' })) : [];
      const out = await model.step([{ seq, tokens: [11], slot: 1, logits: 'last' }, ...others]);
      const bits = Array.from(new Uint32Array(logitsOf(out, 0).slice().buffer));
      for (const r of [seq, ...others.map((o) => o.seq)]) model.freeSequence(r);
      return bits;
    };
    const alone = await decode(false);
    let differing = 0;
    for (let i = 0; i < 120; i++) if ((await decode(true)).some((x, j) => x !== alone[j])) differing++;
    expect(differing, 'steps (of 120) whose row 0 logits differ from the row alone').toBe(0);
  });
});
