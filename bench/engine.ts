/**
 * Serving-engine benchmarks (in-process EngineCore over the real runtime, adapters loaded from disk
 * by the loader thread):
 * - mixed-adapter batching vs one adapter at a time, 8 adapters;
 * - cold adapter load (rank 16, all projections) from disk to first token, vs a warm adapter;
 * - 1000 registered adapters in a zipf mix with a cache of 32, vs the 8-adapter case.
 */
import { existsSync, linkSync, mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { ThreadLoader } from '../src/adapters/loader.js';
import { writeRandomPeftAdapter } from '../src/adapters/random.js';
import type { BuiltModel } from '../src/runtime/graph/build.js';
import type { DecoderModel } from '../src/runtime/model.js';
import { GREEDY } from '../src/runtime/sampling.js';
import { EngineCore, type EngineConfig } from '../src/scheduler/core.js';
import type { AdapterSpec, EngineEvent } from '../src/scheduler/request.js';
import { progressBar } from '../src/util/progress.js';
import { fmt, table } from './lib.js';
import { prng } from '../src/util/prng.js';
import { buildFor, loadModel, prepareModel, type BenchContext } from './runtime.js';

interface Workload {
  adapter: AdapterSpec | null;
  prompt: number[];
  maxNewTokens: number;
}

export interface EngineBenchResult {
  mixedTokPerS: number;
  oneAtATimeTokPerS: number;
  mixedOverOne: number;
  coldLoadMs: number;
  coldTtftMs: number;
  warmTtftMs: number;
  zipfTokPerS: number;
  eightTokPerS: number;
  zipfOverEight: number;
  zipfCacheHits: number;
  zipfCacheMisses: number;
  zipfLoads: number;
  markdown: string;
}

/** Runs `work` through a fresh engine; returns output tokens/s and per-request time to first token. */
export async function serve(model: DecoderModel, loader: ThreadLoader, config: EngineConfig, work: Workload[], label: string): Promise<{ tokPerS: number; ttft: number[]; core: EngineCore }> {
  const bar = progressBar(label);
  let finished = 0;
  let tokens = 0;
  const first = new Map<number, number>();
  const submitted = new Map<number, number>();
  let resolveAll!: () => void;
  const all = new Promise<void>((r) => (resolveAll = r));
  const errors: string[] = [];
  const core = new EngineCore({
    model,
    tokenizer: null,
    config,
    load: loader.load,
    emit: (events: EngineEvent[]) => {
      for (const e of events) {
        if (e.t === 'token') {
          tokens++;
          if (!first.has(e.id)) first.set(e.id, performance.now());
        } else if (e.t === 'end' || e.t === 'error') {
          if (e.t === 'error') errors.push(`request ${e.id} failed: ${e.error.message}`);
          bar(++finished, work.length);
          if (finished === work.length) resolveAll();
        }
      }
    },
  });
  const loop = core.run();
  const t0 = performance.now();
  work.forEach((w, i) => {
    submitted.set(i + 1, performance.now());
    core.submit({ id: i + 1, promptIds: Int32Array.from(w.prompt), adapter: w.adapter, sampling: GREEDY, stop: { maxNewTokens: w.maxNewTokens, stopStrings: [], stopTokenIds: [], ignoreEos: true, minTokens: 0 }, promptLogprobs: null, timeoutMs: 3_600_000, grammar: null, cachePartition: '' });
  });
  await all;
  if (errors.length > 0) throw new Error(errors.join('; '));
  const seconds = (performance.now() - t0) / 1000;
  core.stop();
  await loop;
  bar.stop();
  // Leave the model clean for the next run.
  while (model.lora.count > 0) model.lora.unload(0);
  return { tokPerS: tokens / seconds, ttft: [...first].map(([id, t]) => t - submitted.get(id)!), core };
}

export function adapterPool(ctx: BenchContext, model: DecoderModel, name: string, count: number): string[] {
  const dirs: string[] = [];
  for (let i = 0; i < count; i++) {
    const dir = join(ctx.dir, 'adapters', `${name}-r16-${i}`);
    if (!existsSync(join(dir, 'adapter_model.safetensors'))) writeRandomPeftAdapter(dir, model.spec, { rank: 16, seed: 1000 + i });
    dirs.push(dir);
  }
  return dirs;
}

/** 1000 adapter directories whose files are hard links into a pool of distinct adapters (disk space). */
function registered(ctx: BenchContext, pool: string[], count: number, name: string): string[] {
  const root = join(ctx.dir, 'adapters', `${name}-registered-${count}`);
  const dirs: string[] = [];
  for (let i = 0; i < count; i++) {
    const dir = join(root, `a${i}`);
    if (!existsSync(join(dir, 'adapter_model.safetensors'))) {
      mkdirSync(dir, { recursive: true });
      const src = pool[i % pool.length];
      for (const f of readdirSync(src)) linkSync(join(src, f), join(dir, f));
    }
    dirs.push(dir);
  }
  return dirs;
}

function zipf(n: number, s: number, rand: () => number): () => number {
  const weights = Array.from({ length: n }, (_, i) => 1 / Math.pow(i + 1, s));
  const total = weights.reduce((a, b) => a + b, 0);
  const cdf: number[] = [];
  let acc = 0;
  for (const w of weights) cdf.push((acc += w / total));
  return () => {
    const u = rand();
    let lo = 0;
    let hi = n - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (cdf[mid] < u) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  };
}

const lcg = prng;

export async function engineBench(ctx: BenchContext): Promise<EngineBenchResult> {
  const { modelDir, name } = await prepareModel(ctx);
  const built: BuiltModel = await buildFor(ctx, modelDir, { weights: 'int4', activations: 'fp32' });
  const model = await loadModel(built, 32 * 256, 8);
  const loader = new ThreadLoader({ spec: model.spec, maxRank: 64, strictBase: null, slotDtype: model.lora.dtype });
  const V = model.spec.vocabSize;
  const rand = lcg(7);
  const prompt = (n: number): number[] => Array.from({ length: n }, () => Math.floor(rand() * V));
  // Decode-heavy requests (short prompt, longer answer): batching is what is being compared.
  const perAdapter = ctx.quick ? 4 : 8;
  const newTokens = ctx.quick ? 16 : 64;
  const promptLen = 32;
  const pool = adapterPool(ctx, model, name, 16);
  const single = (dir: string, i: number): AdapterSpec => ({ kind: 'single', key: `${dir}@1`, name: `a${i}`, dir });
  const eight = pool.slice(0, 8).map(single);
  const base: EngineConfig = { maxBatchSize: 32, maxBatchPrefillTokens: 2048, maxQueuedRequests: 100000, adapterCycleMs: 2000, adapterCacheBytes: 8 * 1024 ** 3, prefixCache: true };

  // Warm the host cache for the 8 adapters so both runs compare batching, not loading.
  for (const a of eight) await loader.load(a);
  const mixedWork: Workload[] = [];
  for (let k = 0; k < perAdapter; k++) for (const a of eight) mixedWork.push({ adapter: a, prompt: prompt(promptLen), maxNewTokens: newTokens });
  ctx.log(`engine: ${mixedWork.length} requests over 8 adapters, mixed batching vs one adapter at a time`);
  // One adapter at a time: a model with a single slot runs one adapter per step. The two runs
  // alternate (after a short warm-up of each) and the better of each is kept, so drift hits both.
  const oneSlot = await loadModel(built, 32 * 256, 1);
  const warmup = mixedWork.slice(0, 8).map((w) => ({ ...w, maxNewTokens: 2 }));
  await serve(model, loader, base, warmup, 'warm-up');
  await serve(oneSlot, loader, { ...base, adapterCycleMs: 50 }, warmup, 'warm-up');
  let mixed = { tokPerS: 0 };
  let oneRun = { tokPerS: 0 };
  for (let round = 0; round < (ctx.quick ? 1 : 2); round++) {
    const o = await serve(oneSlot, loader, { ...base, adapterCycleMs: 50 }, mixedWork, 'one adapter at a time (1 slot)');
    const m = await serve(model, loader, base, mixedWork, 'mixed-adapter batching (8 slots)');
    if (o.tokPerS > oneRun.tokPerS) oneRun = o;
    if (m.tokPerS > mixed.tokPerS) mixed = m;
  }
  await oneSlot.close();

  // Cold load: an adapter never seen, from disk to its first token; then the same adapter warm.
  ctx.log('engine: cold adapter load to first token');
  const coldDir = adapterPool(ctx, model, `${name}-cold`, 1)[0];
  const t0 = performance.now();
  await loader.load(single(coldDir, 99));
  const coldLoadMs = performance.now() - t0;
  const cold = await serve(model, loader, base, [{ adapter: single(`${coldDir}`, 98), prompt: prompt(promptLen), maxNewTokens: 1 }], 'cold adapter');
  const warm = await serve(model, loader, base, [{ adapter: single(`${coldDir}`, 98), prompt: prompt(promptLen), maxNewTokens: 1 }], 'warm adapter');

  // 1000 registered adapters, zipf(1.0), host cache of 32 adapters, vs the 8-adapter case (all cached).
  ctx.log('engine: 1000 registered adapters, zipf mix, cache of 32 adapters');
  const thousand = registered(ctx, pool, 1000, name).map(single);
  const bytesPer = (await loader.load(eight[0])).bytes;
  const pick = zipf(thousand.length, 1.0, lcg(11));
  const zipfWork: Workload[] = mixedWork.map(() => ({ adapter: thousand[pick()], prompt: prompt(promptLen), maxNewTokens: newTokens }));
  const z = await serve(model, loader, { ...base, adapterCacheBytes: 32 * bytesPer + 1 }, zipfWork, 'zipf over 1000 adapters');
  const zstats = z.core.stats().cache;
  const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

  await loader.close();
  await model.close();
  const r = {
    mixedTokPerS: mixed.tokPerS,
    oneAtATimeTokPerS: oneRun.tokPerS,
    mixedOverOne: mixed.tokPerS / oneRun.tokPerS,
    coldLoadMs,
    coldTtftMs: median(cold.ttft),
    warmTtftMs: median(warm.ttft),
    zipfTokPerS: z.tokPerS,
    eightTokPerS: mixed.tokPerS,
    zipfOverEight: z.tokPerS / mixed.tokPerS,
    zipfCacheHits: zstats.hits,
    zipfCacheMisses: zstats.misses,
    zipfLoads: zstats.loads,
  };
  const markdown = [
    `### Serving engine (${name}, int4, rank-16 adapters on all 7 projections)`,
    '',
    table(
      ['measure', 'value'],
      [
        [`mixed-adapter batching, ${mixedWork.length} requests over 8 adapters (${promptLen}-token prompts, ${newTokens} new tokens, 8 slots)`, `${fmt(r.mixedTokPerS, 1)} tok/s`],
        ['one adapter at a time (1 slot), same requests', `${fmt(r.oneAtATimeTokPerS, 1)} tok/s`],
        ['mixed / one-at-a-time', `${fmt(r.mixedOverOne)}×`],
        ['cold adapter load from disk (loader thread, page cache warm)', `${fmt(r.coldLoadMs, 0)} ms`],
        [`time to first token, cold adapter (${promptLen}-token prompt)`, `${fmt(r.coldTtftMs, 0)} ms`],
        ['time to first token, same adapter warm', `${fmt(r.warmTtftMs, 0)} ms`],
        [`1000 registered adapters, zipf(1.0), host cache of 32`, `${fmt(r.zipfTokPerS, 1)} tok/s (cache ${r.zipfCacheHits} hits / ${r.zipfCacheMisses} misses, ${r.zipfLoads} loads)`],
        ['zipf-1000 / 8 adapters', `${fmt(r.zipfOverEight)}×`],
      ],
    ),
  ].join('\n');
  return { ...r, markdown };
}
