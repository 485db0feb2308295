/**
 * The ONNX decoder against the independent plain-TypeScript reference: base model, adapters, mixed
 * batches, incremental decode, rows joining mid-decode, both architecture flavours, checkpoint dtypes
 * and layouts, and the quantized formats' agreement with fp32.
 */
import { afterAll, describe, expect, it } from 'vitest';
import type { DecoderModel } from '../../src/runtime/model.js';
import type { RefLora } from '../helpers/model-types.js';
import { referenceLogits } from '../helpers/reference.js';
import { argmax, loadAdapter, loadAdapters, loadTiny, logitsOf, maxAbsDiff } from '../helpers/runtime.js';
import { makeTinyAdapter, makeTinyModel, PHI3_MODULES, prng, type Flavour, type TinyModel } from '../helpers/tiny-model.js';

const TOL = 1e-4;
const open: DecoderModel[] = [];
afterAll(async () => {
  for (const m of open) await m.close();
});
async function load(...args: Parameters<typeof loadTiny>): Promise<DecoderModel> {
  const m = await loadTiny(...args);
  open.push(m);
  return m;
}

function tokens(seed: number, n: number, vocab: number): number[] {
  const r = prng(seed);
  return Array.from({ length: n }, () => Math.floor(r() * vocab));
}

/** Every position's logits of one prefill equal the reference's. */
async function expectPrefillMatches(tm: TinyModel, model: DecoderModel, toks: number[], slot: number, lora: RefLora | null): Promise<void> {
  const seq = model.newSequence();
  const out = await model.step([{ seq, tokens: toks, slot, logits: 'all' }]);
  const ref = referenceLogits(tm.cfg, tm.weights, toks, lora);
  const V = tm.cfg.vocabSize;
  for (let t = 0; t < toks.length; t++) {
    expect(maxAbsDiff(out.logits.subarray(t * V, (t + 1) * V), ref[t])).toBeLessThan(TOL);
  }
  model.freeSequence(seq);
}

describe.each<Flavour>(['llama', 'qwen2', 'qwen3', 'gemma2', 'gemma3', 'phi3'])('%s flavour vs reference', (flavour) => {
  // Qwen3's head_dim is its own (here q/k/v are 128 wide on a 64-wide model), and q/k are normalized per head.
  const tm = makeTinyModel({ flavour, seed: { llama: 11, qwen2: 12, qwen3: 13, mistral: 14, gemma2: 15, gemma3: 16, phi3: 17 }[flavour], ...(flavour === 'qwen3' || flavour === 'gemma3' ? { headDim: 32 } : {}) });
  const adapters = [
    makeTinyAdapter(tm, { seed: 21, r: 4 }),
    makeTinyAdapter(tm, { seed: 22, r: 8, useRslora: true, alpha: 16, targets: ['q_proj', 'v_proj', 'down_proj'] }),
    makeTinyAdapter(tm, {
      seed: 23,
      r: 2,
      alpha: 4,
      rankPattern: { 'layers.1.self_attn.o_proj': 6, gate_proj: 3 },
      alphaPattern: { up_proj: 9 },
    }),
  ];

  it('base model prefill logits match at every position', async () => {
    const model = await load(tm);
    const toks = tokens(1, 9, tm.cfg.vocabSize);
    await expectPrefillMatches(tm, model, toks, -1, null);
    const out = await model.step([{ seq: model.newSequence(), tokens: toks, slot: -1, logits: 'all' }]);
    const ref = referenceLogits(tm.cfg, tm.weights, toks, null);
    const V = tm.cfg.vocabSize;
    const worst = Math.max(...ref.map((r, t) => maxAbsDiff(out.logits.subarray(t * V, (t + 1) * V), r)));
    console.log(`${flavour}: fp32 max |logit - reference| over ${toks.length} positions: ${worst.toExponential(2)}`);
  });

  it('one adapter matches the reference with unmerged LoRA', async () => {
    const model = await load(tm);
    const slot = await loadAdapter(model, adapters[0]);
    await expectPrefillMatches(tm, model, tokens(2, 7, tm.cfg.vocabSize), slot, adapters[0].lora);
  });

  it('a ragged batch of 5 rows with 3 adapters (ranks 4/8/2+pattern, rsLoRA) and a base row matches', async () => {
    const model = await load(tm);
    const slots = await loadAdapters(model, adapters);
    const rows = [
      { slot: slots[0], lora: adapters[0].lora, toks: tokens(3, 6, tm.cfg.vocabSize) },
      { slot: -1, lora: null, toks: tokens(4, 3, tm.cfg.vocabSize) },
      { slot: slots[1], lora: adapters[1].lora, toks: tokens(5, 8, tm.cfg.vocabSize) },
      { slot: slots[2], lora: adapters[2].lora, toks: tokens(6, 1, tm.cfg.vocabSize) },
      { slot: slots[0], lora: adapters[0].lora, toks: tokens(7, 5, tm.cfg.vocabSize) },
    ];
    const seqs = rows.map(() => model.newSequence());
    const out = await model.step(rows.map((r, i) => ({ seq: seqs[i], tokens: r.toks, slot: r.slot, logits: 'last' as const })));
    rows.forEach((r, i) => {
      const ref = referenceLogits(tm.cfg, tm.weights, r.toks, r.lora);
      expect(maxAbsDiff(logitsOf(out, i), ref[r.toks.length - 1])).toBeLessThan(TOL);
    });
  });

  it("DoRA adapters match PEFT's DoRA forward alone and in a batch with LoRA and base rows", async () => {
    const model = await load(tm);
    const dora = [
      makeTinyAdapter(tm, { seed: 24, r: 4, dora: true }),
      makeTinyAdapter(tm, { seed: 25, r: 8, useRslora: true, alpha: 16, targets: ['q_proj', 'v_proj', 'down_proj'], dora: 0.4, rankPattern: { down_proj: 2 } }),
    ];
    const slots = [await loadAdapter(model, adapters[0]), ...(await loadAdapters(model, dora))];
    await expectPrefillMatches(tm, model, tokens(2, 7, tm.cfg.vocabSize), slots[1], dora[0].lora);
    const rows = [
      { slot: slots[1], lora: dora[0].lora, toks: tokens(3, 6, tm.cfg.vocabSize) },
      { slot: -1, lora: null, toks: tokens(4, 3, tm.cfg.vocabSize) },
      { slot: slots[0], lora: adapters[0].lora, toks: tokens(5, 8, tm.cfg.vocabSize) },
      { slot: slots[2], lora: dora[1].lora, toks: tokens(6, 1, tm.cfg.vocabSize) },
      { slot: slots[1], lora: dora[0].lora, toks: tokens(7, 5, tm.cfg.vocabSize) },
    ];
    const out = await model.step(rows.map((r) => ({ seq: model.newSequence(), tokens: r.toks, slot: r.slot, logits: 'last' as const })));
    const diffs = rows.map((r, i) => maxAbsDiff(logitsOf(out, i), referenceLogits(tm.cfg, tm.weights, r.toks, r.lora).at(-1)!));
    console.log(`${flavour}: DoRA/LoRA/base batch, fp32 max |logit - reference| per row: ${diffs.map((d) => d.toExponential(1)).join(', ')}`);
    for (const d of diffs) expect(d).toBeLessThan(TOL);
    // The scales matter: the same factors without them give other logits.
    const plain = new Map([...dora[0].lora].map(([k, p]) => [k, { a: p.a, b: p.b, scale: p.scale }]));
    expect(maxAbsDiff(logitsOf(out, 0), referenceLogits(tm.cfg, tm.weights, rows[0].toks, plain).at(-1)!)).toBeGreaterThan(100 * TOL);
  });

  it('prefill then 10 decode steps (mixed adapters, rows joining mid-decode) match full recomputation', async () => {
    const model = await load(tm);
    const slots = await loadAdapters(model, adapters);
    interface Row { slot: number; lora: RefLora | null; toks: number[]; seq: ReturnType<DecoderModel['newSequence']>; started: boolean; joinAt: number }
    const rows: Row[] = [
      { slot: slots[1], lora: adapters[1].lora, toks: tokens(8, 5, tm.cfg.vocabSize), seq: model.newSequence(), started: false, joinAt: 0 },
      { slot: -1, lora: null, toks: tokens(9, 3, tm.cfg.vocabSize), seq: model.newSequence(), started: false, joinAt: 0 },
      { slot: slots[2], lora: adapters[2].lora, toks: tokens(10, 4, tm.cfg.vocabSize), seq: model.newSequence(), started: false, joinAt: 3 },
      { slot: slots[0], lora: adapters[0].lora, toks: tokens(11, 6, tm.cfg.vocabSize), seq: model.newSequence(), started: false, joinAt: 6 },
    ];
    for (let step = 0; step <= 10; step++) {
      const active = rows.filter((r) => r.joinAt <= step);
      const out = await model.step(
        active.map((r) => ({ seq: r.seq, tokens: r.started ? r.toks.slice(-1) : r.toks, slot: r.slot, logits: 'last' as const })),
      );
      active.forEach((r, i) => {
        const ref = referenceLogits(tm.cfg, tm.weights, r.toks, r.lora);
        const got = logitsOf(out, i);
        expect(maxAbsDiff(got, ref[r.toks.length - 1])).toBeLessThan(TOL);
        r.started = true;
        r.toks.push(argmax(got));
      });
    }
    expect(rows.map((r) => r.seq.length)).toEqual(rows.map((r) => r.toks.length - 1));
  });

  it('a row that leaves frees its cache, and a new row reuses it correctly', async () => {
    const model = await load(tm, {}, { kvCacheTokens: 64 });
    const a = tokens(12, 30, tm.cfg.vocabSize);
    const seqA = model.newSequence();
    await model.step([{ seq: seqA, tokens: a, slot: -1, logits: 'none' }]);
    const freeBefore = model.kv.freeTokens;
    model.freeSequence(seqA);
    expect(model.kv.freeTokens).toBe(freeBefore + 32);
    await expectPrefillMatches(tm, model, tokens(13, 40, tm.cfg.vocabSize), -1, null);
  });
});

describe('checkpoint variants', () => {
  it('bf16 weights in a sharded checkpoint with GQA 4:1 match the reference', async () => {
    const tm = makeTinyModel({ flavour: 'llama', seed: 31, dtype: 'BF16', shards: 3, numHeads: 8, numKvHeads: 2, headDim: 8 });
    const model = await load(tm);
    await expectPrefillMatches(tm, model, tokens(14, 8, tm.cfg.vocabSize), -1, null);
  });

  it('mistral flavour with llama3 rope scaling and untied head matches', async () => {
    const tm = makeTinyModel({
      flavour: 'mistral',
      seed: 32,
      ropeScaling: { ropeType: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 64 },
    });
    const model = await load(tm);
    const adapter = makeTinyAdapter(tm, { seed: 33, r: 4 });
    const slot = await loadAdapter(model, adapter);
    await expectPrefillMatches(tm, model, tokens(15, 12, tm.cfg.vocabSize), slot, adapter.lora);
  });

  it('Phi-3: an adapter on the fused modules (qkv_proj, gate_up_proj) matches, alone and beside one on q/k/v; both at once on one layer is refused', async () => {
    const tm = makeTinyModel({ flavour: 'phi3', seed: 36, slidingWindow: 6 });
    const model = await load(tm);
    const fused = makeTinyAdapter(tm, { seed: 37, r: 4, targets: PHI3_MODULES, rankPattern: { gate_up_proj: 6 } });
    const split = makeTinyAdapter(tm, { seed: 38, r: 2 });
    const slots = [await loadAdapter(model, fused), await loadAdapter(model, split)];
    await expectPrefillMatches(tm, model, tokens(19, 12, tm.cfg.vocabSize), slots[0], fused.lora);
    const rows = [
      { toks: tokens(20, 7, tm.cfg.vocabSize), slot: slots[0], lora: fused.lora },
      { toks: tokens(21, 9, tm.cfg.vocabSize), slot: slots[1], lora: split.lora },
    ];
    const out = await model.step(rows.map((r) => ({ seq: model.newSequence(), tokens: r.toks, slot: r.slot, logits: 'last' as const })));
    rows.forEach((r, i) => expect(maxAbsDiff(logitsOf(out, i), referenceLogits(tm.cfg, tm.weights, r.toks, r.lora).at(-1)!)).toBeLessThan(TOL));
    const both = makeTinyAdapter(tm, { seed: 39, r: 2, targets: ['qkv_proj', 'q_proj'] });
    await expect(loadAdapter(model, both)).rejects.toThrow(/q_proj has LoRA factors twice/);
  });

  // A window of 5 over 20 positions: prefill, chunked prefill (past + new keys under the window) and
  // one-token decode steps, two rows of different lengths in one batch, each against the reference.
  it.each([
    { name: "Mistral's sliding window on every layer", opts: { flavour: 'mistral' as Flavour, slidingWindow: 5 } },
    { name: "Qwen2's from max_window_layers (layer 0 full, layer 1 windowed)", opts: { flavour: 'qwen2' as Flavour, slidingWindow: 5, maxWindowLayers: 1 } },
  ])('$name matches the reference in prefill, chunked prefill and decode', async ({ opts }) => {
    const tm = makeTinyModel({ ...opts, seed: 34 });
    const model = await load(tm);
    const adapter = makeTinyAdapter(tm, { seed: 35, r: 4 });
    const slot = await loadAdapter(model, adapter);
    await expectPrefillMatches(tm, model, tokens(16, 14, tm.cfg.vocabSize), slot, adapter.lora);
    const rows = [
      { toks: tokens(17, 9, tm.cfg.vocabSize), seq: model.newSequence(), slot, lora: adapter.lora, fed: 0 },
      { toks: tokens(18, 3, tm.cfg.vocabSize), seq: model.newSequence(), slot: -1, lora: null, fed: 0 },
    ];
    // First a chunk of 6 (row 0) and 3 (row 1), then the rest of row 0's prompt beside row 1's decode, then decode.
    for (let step = 0; step < 12; step++) {
      const out = await model.step(rows.map((r) => {
        const n = r.fed === 0 ? Math.min(6, r.toks.length) : r.toks.length - r.fed;
        const part = r.toks.slice(r.fed, r.fed + n);
        r.fed += n;
        return { seq: r.seq, tokens: part, slot: r.slot, logits: 'last' as const };
      }));
      rows.forEach((r, i) => {
        if (r.fed < r.toks.length) return;
        const got = logitsOf(out, i);
        expect(maxAbsDiff(got, referenceLogits(tm.cfg, tm.weights, r.toks, r.lora)[r.toks.length - 1])).toBeLessThan(TOL);
        r.toks.push(argmax(got));
      });
    }
    // Longer than the window, so the window mattered.
    expect(Math.min(...rows.map((r) => r.toks.length))).toBeGreaterThan(10);
  });
});

/**
 * Quantized formats vs fp32, teacher-forced on fp32's own 64-token greedy run. Two tiny models:
 * 'trained-like' (small residual writers, a head where each token strongly predicts a successor:
 * peaked distributions like a trained LM's) carries the assertions; 'random' (plain Gaussian weights,
 * where every layer rewrites the residual stream and 4-bit noise compounds) is reported for contrast.
 * One more trained-like model has outlier channels (see makeTinyModel's `outliers`).
 */
describe.each([
  { kind: 'trained-like', flavour: 'llama' as Flavour, headDim: 32, residualScale: 0.3, peaked: 1, min: { int8: 0.95, int4: 0.95, nf4: 0.9, w8a8: 0.95 }, maxRel: { int8: 0.03, int4: 0.2, nf4: 0.2, w8a8: 0.03 } },
  { kind: 'random', flavour: 'llama' as Flavour, headDim: 32, residualScale: 1, peaked: 0, min: { int8: 0.95, int4: 0, nf4: 0, w8a8: 0.95 }, maxRel: { int8: 0.05, int4: 0.4, nf4: 0.4, w8a8: 0.05 } },
  { kind: 'trained-like Gemma 2', flavour: 'gemma2' as Flavour, headDim: 32, residualScale: 0.3, peaked: 1, min: { int8: 0.95, int4: 0.95, nf4: 0.9, w8a8: 0.95 }, maxRel: { int8: 0.03, int4: 0.2, nf4: 0.2, w8a8: 0.03 } },
  { kind: 'trained-like Gemma 3', flavour: 'gemma3' as Flavour, headDim: 64, residualScale: 0.3, peaked: 1, min: { int8: 0.95, int4: 0.95, nf4: 0.9, w8a8: 0.95 }, maxRel: { int8: 0.03, int4: 0.2, nf4: 0.2, w8a8: 0.03 } },
  { kind: 'trained-like Phi-3', flavour: 'phi3' as Flavour, headDim: 32, residualScale: 0.3, peaked: 1, min: { int8: 0.95, int4: 0.95, nf4: 0.9, w8a8: 0.95 }, maxRel: { int8: 0.03, int4: 0.2, nf4: 0.2, w8a8: 0.03 } },
  { kind: 'trained-like Qwen3', flavour: 'qwen3' as Flavour, headDim: 64, residualScale: 0.3, peaked: 1, min: { int8: 0.95, int4: 0.95, nf4: 0.9, w8a8: 0.95 }, maxRel: { int8: 0.03, int4: 0.2, nf4: 0.2, w8a8: 0.03 } },
  // Activations with a few ×20 channels, as real LLMs have: w8a8's one scale per row loses more to them than the per-block formats do.
  { kind: 'trained-like, ×20 outlier channels', flavour: 'llama' as Flavour, headDim: 32, residualScale: 0.3, peaked: 1, outliers: 20, min: { int8: 0.95, int4: 0.95, nf4: 0.9, w8a8: 0.95 }, maxRel: { int8: 0.05, int4: 0.25, nf4: 0.25, w8a8: 0.1 } },
])('quantized formats on a $kind model', ({ kind, flavour, headDim, residualScale, peaked, outliers, min, maxRel }) => {
  // Wide enough that quantization blocks are realistic.
  const tm = makeTinyModel({
    flavour, seed: 41, hiddenSize: 256, intermediateSize: 512, numHeads: 8, numKvHeads: 2, headDim, vocabSize: 512, tieWordEmbeddings: false,
    residualScale, peaked, outliers,
  });
  const V = tm.cfg.vocabSize;
  const prompt = tokens(16, 8, V);
  let greedy: number[] = [];
  let reference: Float32Array = new Float32Array(0);

  it('fp32 greedy run of 64 tokens', async () => {
    const model = await load(tm);
    const seq = model.newSequence();
    const toks = [...prompt];
    let next = toks;
    for (let i = 0; i < 64; i++) {
      const out = await model.step([{ seq, tokens: next, slot: -1, logits: 'last' }]);
      const id = argmax(logitsOf(out, 0));
      toks.push(id);
      next = [id];
    }
    greedy = toks;
    const all = await model.step([{ seq: model.newSequence(), tokens: greedy.slice(0, -1), slot: -1, logits: 'all' }]);
    reference = all.logits.slice();
    expect(greedy.length).toBe(prompt.length + 64);
  });

  it.each([
    ['int8', 'int8'],
    ['int8', 'fp32'],
    ['int4', 'int8'],
    ['int4', 'fp32'],
    ['nf4', 'int8'],
    ['w8a8', 'int8'],
  ] as const)('%s (lm_head computing in %s) agrees with fp32 on the top-1 token', async (weights, lmHeadAccuracy) => {
    expect(greedy.length).toBeGreaterThan(0);
    const model = await load(tm, { weights, lmHeadAccuracy });
    const out = await model.step([{ seq: model.newSequence(), tokens: greedy.slice(0, -1), slot: -1, logits: 'all' }]);
    let agree = 0;
    for (let i = 0; i < 64; i++) {
      const at = prompt.length - 1 + i;
      if (argmax(out.logits.subarray(at * V, (at + 1) * V)) === greedy[at + 1]) agree++;
    }
    let err = 0;
    let ref = 0;
    for (let i = 0; i < reference.length; i++) {
      err += (out.logits[i] - reference[i]) ** 2;
      ref += reference[i] ** 2;
    }
    const rel = Math.sqrt(err / ref);
    console.log(`${kind} model, ${weights} (lm_head ${lmHeadAccuracy}) vs fp32: top-1 agreement ${((agree / 64) * 100).toFixed(1)}% (${agree}/64), logits relRMS ${rel.toFixed(4)}`);
    expect(agree / 64).toBeGreaterThanOrEqual(min[weights]);
    expect(rel).toBeLessThan(maxRel[weights]);
  });
});

/**
 * DoRA rows on the quantized formats, beside LoRA and base rows in the same steps: teacher-forced
 * on each row's own fp32 greedy run (fp32 DoRA itself equals the reference above), top-1 agreement
 * and logits relRMS per format, with the same bounds as the base model's rows.
 */
describe('DoRA, LoRA and base rows on the quantized formats (trained-like model)', () => {
  const tm = makeTinyModel({
    flavour: 'qwen2', seed: 42, hiddenSize: 256, intermediateSize: 512, numHeads: 8, numKvHeads: 2, headDim: 32, vocabSize: 512, tieWordEmbeddings: false,
    residualScale: 0.3, peaked: 1,
  });
  const V = tm.cfg.vocabSize;
  const lora = makeTinyAdapter(tm, { seed: 43, r: 16, bStd: 0.05 });
  const dora = makeTinyAdapter(tm, { seed: 44, r: 16, bStd: 0.05, dora: 0.1 });
  const rows = [
    { name: 'DoRA', adapter: dora, prompt: tokens(45, 8, V) },
    { name: 'LoRA', adapter: lora, prompt: tokens(46, 8, V) },
    { name: 'base', adapter: null, prompt: tokens(47, 8, V) },
  ];
  const fp32: { greedy: number[]; logits: Float32Array }[] = [];
  const min = { int8: 0.95, int4: 0.95, nf4: 0.9, w8a8: 0.95 };
  // Adapter rows move a little more than base rows (their deltas ride on quantized activations).
  const maxRel = { int8: 0.03, int4: 0.25, nf4: 0.25, w8a8: 0.03 };

  /** Every row's whole sequence teacher-forced in one mixed step: logits per row [n, V]. */
  async function mixedStep(model: DecoderModel, seqs: number[][]): Promise<Float32Array[]> {
    const slots = [await loadAdapter(model, dora), await loadAdapter(model, lora), -1];
    const out = await model.step(seqs.map((toks, i) => ({ seq: model.newSequence(), tokens: toks, slot: slots[i], logits: 'all' as const })));
    let at = 0;
    return seqs.map((toks) => out.logits.slice((at += toks.length) * V - toks.length * V, at * V));
  }

  it('fp32 greedy runs of 48 tokens, one per row kind', async () => {
    const model = await load(tm);
    const slots = [await loadAdapter(model, dora), await loadAdapter(model, lora), -1];
    for (const [i, r] of rows.entries()) {
      const seq = model.newSequence();
      const toks = [...r.prompt];
      let next = toks;
      for (let n = 0; n < 48; n++) {
        const id = argmax(logitsOf(await model.step([{ seq, tokens: next, slot: slots[i], logits: 'last' }]), 0));
        toks.push(id);
        next = [id];
      }
      fp32.push({ greedy: toks, logits: new Float32Array(0) });
    }
    const all = await mixedStep(await load(tm), fp32.map((f) => f.greedy.slice(0, -1)));
    all.forEach((l, i) => (fp32[i].logits = l));
    // The DoRA row's run differs from the same factors as plain LoRA (its scales change the answer).
    expect(maxAbsDiff(all[0].subarray(0, V), referenceLogits(tm.cfg, tm.weights, [fp32[0].greedy[0]], new Map([...dora.lora].map(([k, p]) => [k, { a: p.a, b: p.b, scale: p.scale }])))[0])).toBeGreaterThan(1e-3);
  });

  it.each(['int8', 'int4', 'nf4', 'w8a8'] as const)('%s: each row kind agrees with its fp32 run on the top-1 token', async (weights) => {
    expect(fp32.length).toBe(3);
    const got = await mixedStep(await load(tm, { weights }), fp32.map((f) => f.greedy.slice(0, -1)));
    rows.forEach((r, i) => {
      const { greedy, logits } = fp32[i];
      let agree = 0;
      for (let n = 0; n < 48; n++) {
        const at = r.prompt.length - 1 + n;
        if (argmax(got[i].subarray(at * V, (at + 1) * V)) === greedy[at + 1]) agree++;
      }
      let err = 0;
      let ref = 0;
      for (let j = 0; j < logits.length; j++) {
        err += (got[i][j] - logits[j]) ** 2;
        ref += logits[j] ** 2;
      }
      const rel = Math.sqrt(err / ref);
      console.log(`${r.name} row, ${weights} vs fp32: top-1 agreement ${((agree / 48) * 100).toFixed(1)}% (${agree}/48), logits relRMS ${rel.toFixed(4)}`);
      expect(agree / 48, `${r.name} row`).toBeGreaterThanOrEqual(min[weights]);
      expect(rel, `${r.name} row`).toBeLessThan(maxRel[weights]);
    });
  });
});
