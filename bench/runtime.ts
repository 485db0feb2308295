/**
 * Runtime benchmarks on a Qwen2.5-0.5B-shaped model with random weights (a small shape in --quick):
 * decode throughput fp32 vs int4, the cost of LoRA by number of distinct adapters, DoRA against
 * LoRA (load time, and step time with DoRA rows vs LoRA rows), and decode step time at KV capacity
 * C vs 2C with the same live context. All comparisons are interleaved and
 * reported as ratios from the same run.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { loadAdapterHere } from '../src/adapters/loader.js';
import { loadPeftAdapter } from '../src/adapters/peft.js';
import { writeRandomPeftAdapter } from '../src/adapters/random.js';
import { ensureRandomCheckpoint, QWEN2_5_0_5B, type CheckpointShape } from '../src/runtime/checkpoint/random.js';
import { buildModel, type BuildOptions, type BuiltModel } from '../src/runtime/graph/build.js';
import type { WeightFormat } from '../src/runtime/graph/quant.js';
import type { KvSequence } from '../src/runtime/kv-cache.js';
import type { LoraWeights } from '../src/runtime/lora-stacks.js';
import { DecoderModel } from '../src/runtime/model.js';
import { progressBar } from '../src/util/progress.js';
import { fmt, interleaved, table } from './lib.js';

export const QUICK_SHAPE: CheckpointShape = {
  architecture: 'Qwen2ForCausalLM',
  hiddenSize: 256,
  numLayers: 4,
  numHeads: 4,
  numKvHeads: 2,
  intermediateSize: 1024,
  vocabSize: 32000,
  tieWordEmbeddings: true,
  maxPositionEmbeddings: 4096,
};

export interface BenchContext {
  quick: boolean;
  dir: string;
  log: (line: string) => void;
}

export interface RuntimeBenchResult {
  shape: string;
  decode: { rows: number; fp32TokPerS: number; int4TokPerS: number; int4OverFp32: number }[];
  lora: { rows: number; u: number; stepMs: number; ratioToU0: number }[];
  loraGraphOverBase: { rows: number; ratio: number }[];
  /** A prompt chunk's step with and without adapters, alone and beside decode rows. */
  loraChunk: { tokens: number; steps: { step: string; ms: number }[] };
  lmHead: { step: string; int8Ms: number; fp32Ms: number; ratio: number }[];
  /** The same steps with int4 and w8a8 weights, 8 adapters loaded. */
  w8a8: { step: string; int4Ms: number; w8a8Ms: number; speedup: number }[];
  dora: { loadMsLora: number; loadMsDora: number; steps: { step: string; loraMs: number; doraMs: number; ratio: number }[] };
  capacity: { c: number; live: number; stepMsC: number; stepMs2C: number; ratio: number };
  markdown: string;
}

export async function prepareModel(ctx: BenchContext): Promise<{ modelDir: string; shape: CheckpointShape; name: string }> {
  const shape = ctx.quick ? QUICK_SHAPE : QWEN2_5_0_5B;
  const name = ctx.quick ? 'quick-256x4' : 'qwen2.5-0.5b-shape';
  const modelDir = join(ctx.dir, 'models', name);
  if (!existsSync(join(modelDir, '.complete'))) {
    const bar = progressBar(`writing random ${name} checkpoint`);
    ensureRandomCheckpoint(modelDir, shape, { progress: bar });
    bar.stop();
  }
  return { modelDir, shape, name };
}

export async function buildFor(ctx: BenchContext, modelDir: string, opts: BuildOptions): Promise<BuiltModel> {
  const bar = progressBar(`building ${opts.weights}${opts.lora === false ? ' base-only' : ''} graph`);
  const built = await buildModel(modelDir, { maxPositions: 4096, ...opts }, { cacheDir: join(ctx.dir, 'builds'), progress: bar, log: ctx.log });
  bar.stop();
  return built;
}

export async function loadModel(built: BuiltModel, kvCacheTokens: number, adapterSlots = 8): Promise<DecoderModel> {
  return DecoderModel.load(built, { device: 'cpu', allowCpuFallback: false, threads: 0, kvCacheTokens, adapterSlots, maxLoraRank: 64 });
}

/** Writes (once) and loads `count` random rank-16 adapters on all seven projections. */
export async function benchAdapters(ctx: BenchContext, name: string, model: DecoderModel, count: number, rank = 16): Promise<{ dirs: string[]; weights: LoraWeights[] }> {
  const dirs: string[] = [];
  const weights: LoraWeights[] = [];
  for (let i = 0; i < count; i++) {
    const dir = join(ctx.dir, 'adapters', `${name}-r${rank}-${i}`);
    if (!existsSync(join(dir, 'adapter_model.safetensors'))) writeRandomPeftAdapter(dir, model.spec, { rank, seed: 1000 + i });
    dirs.push(dir);
    weights.push((await loadPeftAdapter(dir, model.spec, { maxRank: 64 })).weights);
  }
  return { dirs, weights };
}

/**
 * Writes (once) `count` random rank-16 DoRA adapters on all seven projections and loads them as the
 * server does (scales from the checkpoint's weights); returns them with each load's time.
 */
async function benchDoraAdapters(ctx: BenchContext, name: string, modelDir: string, model: DecoderModel, count: number, rank = 16): Promise<{ weights: LoraWeights[]; loadMs: number[] }> {
  const weights: LoraWeights[] = [];
  const loadMs: number[] = [];
  for (let i = 0; i < count; i++) {
    const dir = join(ctx.dir, 'adapters', `${name}-dora-r${rank}-${i}`);
    // Magnitudes near the random base's row norms (std 0.02 · √in), so the scales are near 1.
    if (!existsSync(join(dir, 'adapter_model.safetensors'))) writeRandomPeftAdapter(dir, model.spec, { rank, seed: 2000 + i, doraMagnitude: 0.02 * Math.sqrt(model.spec.hiddenSize) });
    const t0 = performance.now();
    weights.push(await loadAdapterHere({ kind: 'single', key: dir, name: dir, dir }, { spec: model.spec, maxRank: 64, strictBase: null, slotDtype: model.lora.dtype, checkpointDir: modelDir }));
    loadMs.push(performance.now() - t0);
  }
  return { weights, loadMs };
}

function prompt(n: number, vocab: number, seed: number): number[] {
  return Array.from({ length: n }, (_, i) => (seed * 7919 + i * 104729) % vocab);
}

/** Prefills `rows` sequences with `len` tokens each (in chunks that respect a prefill budget). */
async function prefill(model: DecoderModel, rows: number, len: number, slotOf: (row: number) => number = () => -1): Promise<KvSequence[]> {
  const seqs = Array.from({ length: rows }, () => model.newSequence());
  const perStep = Math.max(1, Math.floor(2048 / len));
  for (let i = 0; i < rows; i += perStep) {
    const chunk = seqs.slice(i, i + perStep);
    await model.step(chunk.map((seq, j) => ({ seq, tokens: prompt(len, model.spec.vocabSize, i + j), slot: slotOf(i + j), logits: 'none' as const })));
  }
  return seqs;
}

function decodeStep(model: DecoderModel, seqs: KvSequence[], slotOf: (row: number) => number = () => -1): () => Promise<unknown> {
  return () => model.step(seqs.map((seq, i) => ({ seq, tokens: [(seq.length * 31 + i) % model.spec.vocabSize], slot: slotOf(i), logits: 'last' as const })));
}

export async function runtimeBench(ctx: BenchContext): Promise<RuntimeBenchResult> {
  const { modelDir, name } = await prepareModel(ctx);
  const rounds = ctx.quick ? 5 : 12;
  const rowCounts = [1, 8, 32];
  const promptLen = 128;
  const kvTokens = 32 * (promptLen + 64) + 1024;

  // ---- decode throughput: fp32 vs int4
  const builtInt4 = await buildFor(ctx, modelDir, { weights: 'int4', activations: 'fp32' });
  const builtFp32 = await buildFor(ctx, modelDir, { weights: 'fp32', activations: 'fp32' });
  const decode: RuntimeBenchResult['decode'] = [];
  {
    const models: Record<WeightFormat, DecoderModel> = {
      int4: await loadModel(builtInt4, kvTokens),
      fp32: await loadModel(builtFp32, kvTokens),
    } as Record<WeightFormat, DecoderModel>;
    for (const rows of rowCounts) {
      ctx.log(`decode throughput, ${rows} rows: fp32 vs int4`);
      const s4 = await prefill(models.int4, rows, promptLen);
      const s32 = await prefill(models.fp32, rows, promptLen);
      const t = await interleaved({ int4: decodeStep(models.int4, s4), fp32: decodeStep(models.fp32, s32) }, { rounds });
      decode.push({ rows, fp32TokPerS: (rows * 1000) / t.fp32.median, int4TokPerS: (rows * 1000) / t.int4.median, int4OverFp32: t.fp32.median / t.int4.median });
      s4.forEach((s) => models.int4.freeSequence(s));
      s32.forEach((s) => models.fp32.freeSequence(s));
    }
    await models.fp32.close();
    await models.int4.close();
  }

  // ---- the lm_head's compute precision: int8 (the default) vs fp32, same int4 weights
  const lmHead: RuntimeBenchResult['lmHead'] = [];
  {
    const fp32Head = await loadModel(await buildFor(ctx, modelDir, { weights: 'int4', activations: 'fp32', lmHeadAccuracy: 'fp32' }), kvTokens);
    const int8Head = await loadModel(builtInt4, kvTokens);
    for (const rows of rowCounts) {
      ctx.log(`lm_head compute, ${rows} rows: int8 vs fp32`);
      const a = await prefill(int8Head, rows, promptLen);
      const b = await prefill(fp32Head, rows, promptLen);
      const t = await interleaved({ int8: decodeStep(int8Head, a), fp32: decodeStep(fp32Head, b) }, { rounds });
      lmHead.push({ step: `decode, ${rows} rows`, int8Ms: t.int8.median, fp32Ms: t.fp32.median, ratio: t.fp32.median / t.int8.median });
      a.forEach((s) => int8Head.freeSequence(s));
      b.forEach((s) => fp32Head.freeSequence(s));
    }
    await fp32Head.close();
    await int8Head.close();
  }

  // ---- LoRA cost by distinct adapters in the batch, and the LoRA graph at U = 0 vs a base-only graph
  const lora: RuntimeBenchResult['lora'] = [];
  const loraGraphOverBase: RuntimeBenchResult['loraGraphOverBase'] = [];
  const loraChunk: RuntimeBenchResult['loraChunk'] = { tokens: 0, steps: [] };
  {
    const model = await loadModel(builtInt4, kvTokens);
    const base = await loadModel(await buildFor(ctx, modelDir, { weights: 'int4', activations: 'fp32', lora: false }), kvTokens);
    const { weights } = await benchAdapters(ctx, name, model, 8);
    weights.forEach((w) => model.lora.load(w));
    for (const rows of [8, 32]) {
      ctx.log(`LoRA cost, ${rows} rows: U = 0, 1, 4, 8 distinct adapters (rank 16, all 7 projections)`);
      const seqs = await prefill(model, rows, promptLen);
      const baseSeqs = await prefill(base, rows, promptLen);
      const slotFor = (u: number) => (i: number) => (u === 0 ? -1 : i % u);
      const t = await interleaved(
        {
          u0: decodeStep(model, seqs, slotFor(0)),
          u1: decodeStep(model, seqs, slotFor(1)),
          u4: decodeStep(model, seqs, slotFor(4)),
          u8: decodeStep(model, seqs, slotFor(8)),
          baseGraph: decodeStep(base, baseSeqs),
        },
        { rounds },
      );
      for (const [u, key] of [[0, 'u0'], [1, 'u1'], [4, 'u4'], [8, 'u8']] as const) {
        lora.push({ rows, u, stepMs: t[key].median, ratioToU0: t[key].median / t.u0.median });
      }
      loraGraphOverBase.push({ rows, ratio: t.u0.median / t.baseGraph.median });
      seqs.forEach((s) => model.freeSequence(s));
      baseSeqs.forEach((s) => base.freeSequence(s));
    }

    // A prompt chunk on a high slot while lower slots hold other adapters: its tokens must not pad
    // every slot's group to the chunk's length (graph/decoder.ts: row groups).
    const tokens = ctx.quick ? 128 : 512;
    ctx.log(`LoRA cost of a ${tokens}-token prompt chunk: no adapter, slot 0, slot 7 of 8, and beside 7 decode rows`);
    const decodeSeqs = await prefill(model, 7, promptLen, (i) => i);
    const V = model.spec.vocabSize;
    const chunkStep = (slot: number, withDecode: boolean) => async (): Promise<void> => {
      const seq = model.newSequence();
      const decodeRows = withDecode ? decodeSeqs.map((s, i) => ({ seq: s, tokens: [(s.length * 31 + i) % V], slot: i, logits: 'last' as const })) : [];
      await model.step([{ seq, tokens: prompt(tokens, V, 77), slot, logits: 'last' }, ...decodeRows]);
      model.freeSequence(seq);
    };
    const c = await interleaved(
      {
        base: chunkStep(-1, false),
        slot0: chunkStep(0, false),
        slot7: chunkStep(7, false),
        mixed: chunkStep(7, true),
        decode: decodeStep(model, decodeSeqs, (i) => i),
      },
      { rounds: Math.max(3, Math.floor(rounds / 3)) },
    );
    loraChunk.tokens = tokens;
    loraChunk.steps = [
      { step: 'prompt chunk, no adapter', ms: c.base.median },
      { step: 'prompt chunk on slot 0', ms: c.slot0.median },
      { step: 'prompt chunk on slot 7 (slots 0–6 loaded, idle)', ms: c.slot7.median },
      { step: 'prompt chunk on slot 7 + 7 decode rows on slots 0–6', ms: c.mixed.median },
      { step: '7 decode rows on slots 0–6 alone', ms: c.decode.median },
    ];
    decodeSeqs.forEach((s) => model.freeSequence(s));
    await model.close();
    await base.close();
  }

  // ---- w8a8 (int8 weights per channel, activations per row) vs int4, the same steps on both
  const w8a8: RuntimeBenchResult['w8a8'] = [];
  {
    const models = { int4: await loadModel(builtInt4, kvTokens), w8a8: await loadModel(await buildFor(ctx, modelDir, { weights: 'w8a8', activations: 'fp32' }), kvTokens) };
    for (const m of Object.values(models)) (await benchAdapters(ctx, name, m, 8)).weights.forEach((w) => m.lora.load(w));
    const V = models.int4.spec.vocabSize;
    const tokens = ctx.quick ? 128 : 512;
    const chunk = (model: DecoderModel, slot: number, decodeSeqs: KvSequence[]) => async (): Promise<void> => {
      const seq = model.newSequence();
      const decodeRows = decodeSeqs.map((s, i) => ({ seq: s, tokens: [(s.length * 31 + i) % V], slot: i, logits: 'last' as const }));
      await model.step([{ seq, tokens: prompt(decodeRows.length > 0 ? 136 : tokens, V, 78), slot, logits: 'last' }, ...decodeRows]);
      model.freeSequence(seq);
    };
    const cases: [string, (model: DecoderModel) => Promise<{ run: () => Promise<unknown>; seqs: KvSequence[] }>][] = [
      [`${tokens}-token prompt chunk, no adapter`, async (m) => ({ run: chunk(m, -1, []), seqs: [] })],
      [`${tokens}-token prompt chunk on an adapter`, async (m) => ({ run: chunk(m, 3, []), seqs: [] })],
      ['136-token prompt + 7 decode rows, 8 adapters', async (m) => { const seqs = await prefill(m, 7, promptLen, (i) => i); return { run: chunk(m, 7, seqs), seqs }; }],
      ...[1, 8, 32].map((rows): (typeof cases)[number] => [`decode, ${rows} row${rows > 1 ? 's' : ''}${rows > 1 ? ', 8 adapters' : ''}`, async (m) => {
        const slot = (i: number) => (rows > 1 ? i % 8 : -1);
        const seqs = await prefill(m, rows, promptLen, slot);
        return { run: decodeStep(m, seqs, slot), seqs };
      }]),
    ];
    for (const [step, make] of cases) {
      ctx.log(`w8a8 vs int4: ${step}`);
      const a = await make(models.int4);
      const b = await make(models.w8a8);
      const t = await interleaved({ int4: a.run, w8a8: b.run }, { rounds: step.includes('decode') ? rounds : Math.max(3, Math.floor(rounds / 3)) });
      w8a8.push({ step, int4Ms: t.int4.median, w8a8Ms: t.w8a8.median, speedup: t.int4.median / t.w8a8.median });
      a.seqs.forEach((s) => models.int4.freeSequence(s));
      b.seqs.forEach((s) => models.w8a8.freeSequence(s));
    }
    await models.int4.close();
    await models.w8a8.close();
  }

  // ---- DoRA vs LoRA: load time, and step time with every row on a DoRA adapter vs a LoRA one
  let dora: RuntimeBenchResult['dora'];
  {
    const model = await loadModel(builtInt4, kvTokens, 16);
    const count = ctx.quick ? 2 : 4;
    ctx.log(`DoRA: loading ${count} rank-16 DoRA adapters (all 7 projections) and ${count} LoRA ones`);
    const lora = await benchAdapters(ctx, name, model, count);
    const loraLoadMs: number[] = [];
    for (const dir of lora.dirs) {
      const t0 = performance.now();
      await loadAdapterHere({ kind: 'single', key: dir, name: dir, dir }, { spec: model.spec, maxRank: 64, strictBase: null, slotDtype: model.lora.dtype, checkpointDir: modelDir });
      loraLoadMs.push(performance.now() - t0);
    }
    const doraAdapters = await benchDoraAdapters(ctx, name, modelDir, model, count);
    // A step feeds slots 0..U-1 (U the highest slot used + 1), so the adapters loaded last cost more
    // padding: every step is timed twice, LoRA in the low slots and then DoRA, and the ratios averaged.
    const ratios = new Map<string, { loraMs: number[]; doraMs: number[] }>();
    const timed = (step: string, t: Record<'lora' | 'dora', { median: number }>): void => {
      const r = ratios.get(step) ?? { loraMs: [], doraMs: [] };
      r.loraMs.push(t.lora.median);
      r.doraMs.push(t.dora.median);
      ratios.set(step, r);
    };
    for (const order of ['LoRA first', 'DoRA first'] as const) {
      while (model.lora.count > 0) model.lora.unload(0);
      const sets = order === 'LoRA first' ? [lora.weights, doraAdapters.weights] : [doraAdapters.weights, lora.weights];
      sets.flat().forEach((w) => model.lora.load(w));
      const loraSlot = (i: number): number => (order === 'LoRA first' ? 0 : count) + (i % count);
      const doraSlot = (i: number): number => (order === 'LoRA first' ? count : 0) + (i % count);
      for (const rows of [8, 32]) {
        ctx.log(`DoRA (${order} in the slots): decode step, ${rows} rows on DoRA vs LoRA adapters`);
        const seqs = await prefill(model, rows, promptLen);
        timed(`decode, ${rows} rows`, await interleaved({ lora: decodeStep(model, seqs, loraSlot), dora: decodeStep(model, seqs, doraSlot) }, { rounds }));
        seqs.forEach((s) => model.freeSequence(s));
      }
      ctx.log(`DoRA (${order} in the slots): prefill step, 4 rows × 128 tokens on DoRA vs LoRA adapters`);
      const prefillStep = (slotOf: (i: number) => number) => async (): Promise<void> => {
        const seqs = Array.from({ length: 4 }, () => model.newSequence());
        await model.step(seqs.map((seq, i) => ({ seq, tokens: prompt(promptLen, model.spec.vocabSize, i), slot: slotOf(i), logits: 'last' as const })));
        seqs.forEach((s) => model.freeSequence(s));
      };
      timed('prefill, 4 × 128 tokens', await interleaved({ lora: prefillStep(loraSlot), dora: prefillStep(doraSlot) }, { rounds: Math.max(3, Math.floor(rounds / 2)) }));
    }
    const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;
    const steps: RuntimeBenchResult['dora']['steps'] = [...ratios].map(([step, r]) => ({
      step,
      loraMs: mean(r.loraMs),
      doraMs: mean(r.doraMs),
      ratio: Math.sqrt((r.doraMs[0] / r.loraMs[0]) * (r.doraMs[1] / r.loraMs[1])),
    }));
    const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
    dora = { loadMsLora: median(loraLoadMs), loadMsDora: median(doraAdapters.loadMs), steps };
    await model.close();
  }

  // ---- KV capacity C vs 2C with the same live context
  let capacity: RuntimeBenchResult['capacity'];
  {
    const rows = 8;
    const live = ctx.quick ? 256 : 512;
    const c = rows * (live + 64) * 2;
    ctx.log(`decode step at KV capacity ${c} vs ${2 * c} tokens, ${rows} rows with ${live} tokens of context each`);
    const small = await loadModel(builtInt4, c);
    const big = await loadModel(builtInt4, 2 * c);
    const sa = await prefill(small, rows, live);
    const sb = await prefill(big, rows, live);
    const t = await interleaved({ c: decodeStep(small, sa), c2: decodeStep(big, sb) }, { rounds });
    capacity = { c, live, stepMsC: t.c.median, stepMs2C: t.c2.median, ratio: t.c2.median / t.c.median };
    await small.close();
    await big.close();
  }

  const markdown = [
    `### Runtime (${name}, random weights, CPU)`,
    '',
    'Decode throughput (tokens/s, 128-token contexts):',
    '',
    table(['rows', 'fp32 tok/s', 'int4 tok/s', 'int4 / fp32'], decode.map((d) => [d.rows, fmt(d.fp32TokPerS, 1), fmt(d.int4TokPerS, 1), `${fmt(d.int4OverFp32)}×`])),
    '',
    'LoRA cost (int4, rank-16 adapters on all 7 projections; step time as a ratio to the same batch with no adapter rows):',
    '',
    table(['rows', 'U=0', 'U=1', 'U=4', 'U=8', 'U=0 LoRA graph / base-only graph'], [8, 32].map((rows) => {
      const r = lora.filter((x) => x.rows === rows);
      const b = loraGraphOverBase.find((x) => x.rows === rows)!;
      return [rows, `${fmt(r[0].stepMs)} ms`, ...r.slice(1).map((x) => `${fmt(x.ratioToU0)}×`), `${fmt(b.ratio)}×`];
    })),
    '',
    `A ${loraChunk.tokens}-token prompt chunk with 8 adapters loaded (step time, and as a ratio to the chunk with no adapter):`,
    '',
    table(['step', 'ms', '/ no adapter'], loraChunk.steps.map((x) => [x.step, fmt(x.ms, 1), `${fmt(x.ms / loraChunk.steps[0].ms)}×`])),
    '',
    'Weight formats: w8a8 (int8 weights per channel, each token\'s activations quantized on its own, onnxruntime\'s integer GEMM) vs int4 (MatMulNBits), 8 rank-16 adapters loaded:',
    '',
    table(['step', 'int4', 'w8a8', 'int4 / w8a8'], w8a8.map((x) => [x.step, `${fmt(x.int4Ms, 1)} ms`, `${fmt(x.w8a8Ms, 1)} ms`, `${fmt(x.speedup)}×`])),
    '',
    'lm_head compute precision (int4 weights; decode steps, every row asking for logits):',
    '',
    table(['step', 'lm_head int8 (default)', 'lm_head fp32', 'fp32 / int8'], lmHead.map((h) => [h.step, `${fmt(h.int8Ms)} ms`, `${fmt(h.fp32Ms)} ms`, `${fmt(h.ratio)}×`])),
    '',
    `DoRA (int4, rank-16 adapters on all 7 projections): load ${fmt(dora.loadMsDora, 0)} ms vs ${fmt(dora.loadMsLora, 0)} ms for LoRA (median; the DoRA scales come from the checkpoint's weights on the loading thread). Step time with every row on a DoRA adapter vs a LoRA one:`,
    '',
    table(['step', 'LoRA rows', 'DoRA rows', 'DoRA / LoRA'], dora.steps.map((s) => [s.step, `${fmt(s.loraMs)} ms`, `${fmt(s.doraMs)} ms`, `${fmt(s.ratio)}×`])),
    '',
    `KV capacity: decode step with ${capacity.live}-token contexts × 8 rows: ${fmt(capacity.stepMsC)} ms at capacity ${capacity.c} tokens, ` +
      `${fmt(capacity.stepMs2C)} ms at ${2 * capacity.c} (2C / C = ${fmt(capacity.ratio)}×)`,
  ].join('\n');
  return { shape: name, decode, lmHead, w8a8, lora, loraGraphOverBase, loraChunk, dora, capacity, markdown };
}
