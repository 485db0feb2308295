/**
 * The serving loop in-process: correctness under load with fewer slots than adapters and fewer rows
 * than requests, cancellation, failing adapter loads, combinations, replaced adapters.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { aloneGreedy, greedyRequest, startEngine, tokensOf, until, type EngineHarness } from '../helpers/engine.js';
import { loadAdapterHere } from '../../src/adapters/loader.js';
import { mergeLoraWeights } from '../../src/adapters/merge.js';
import type { DecoderModel } from '../../src/runtime/model.js';
import { EngineCore, type EngineConfig } from '../../src/scheduler/core.js';
import { mergeKey } from '../../src/adapters/spec.js';
import type { AdapterSpec, EngineEvent } from '../../src/scheduler/request.js';
import type { RefLora, RefWeights } from '../helpers/model-types.js';
import { referenceLogits } from '../helpers/reference.js';
import { loadTiny, maxAbsDiff } from '../helpers/runtime.js';
import { makeTinyAdapter, makeTinyModel, moduleShape, prng, type TinyAdapter } from '../helpers/tiny-model.js';

const tm = makeTinyModel({ seed: 81, peaked: 1, residualScale: 0.3 });
const adapters = Array.from({ length: 7 }, (_, i) => makeTinyAdapter(tm, { seed: 100 + i, r: 2 + (i % 4) * 2, bStd: 0.3 }));
const spec = (i: number): Extract<AdapterSpec, { kind: 'single' }> => ({ kind: 'single', key: `${i}@1`, name: `a${i}`, dir: adapters[i].dir });

const CONFIG: EngineConfig = { maxBatchSize: 8, maxBatchPrefillTokens: 24, maxQueuedRequests: 100, adapterCycleMs: 5, adapterCacheBytes: 1 << 30, prefixCache: true };
const open: DecoderModel[] = [];
afterAll(async () => {
  for (const m of open) await m.close();
});

type Harness = EngineHarness;

async function harness(opts: { slots?: number; config?: Partial<EngineConfig>; failDirs?: Set<string>; loadDelayMs?: number; maxRank?: number } = {}): Promise<Harness> {
  const maxRank = opts.maxRank ?? 64;
  const model = await loadTiny(tm, {}, { adapterSlots: opts.slots ?? 3, kvCacheTokens: 2048, maxLoraRank: maxRank });
  open.push(model);
  return startEngine(model, { ...CONFIG, ...opts.config }, { maxRank, failDirs: opts.failDirs, loadDelayMs: opts.loadDelayMs });
}

const request = greedyRequest;

/** The error of a request's last event. */
const errorOf = (events: EngineEvent[] | undefined): { code: string; message: string; param: string | null } | undefined => {
  const e = events?.at(-1);
  return e?.t === 'error' ? e.error : undefined;
};

/** Greedy tokens of one request run alone, directly on a model (no scheduler). */
const alone = (model: DecoderModel, prompt: number[], lora: TinyAdapter | null, n: number): Promise<number[]> =>
  aloneGreedy(model, prompt, lora ? { kind: 'single', key: 'x', name: 'x', dir: lora.dir } : null, n);

describe('EngineCore under load', () => {
  it('steps sized by time: an unreachable target cuts prompts into the smallest chunks, and no answer changes', async () => {
    const rand = prng(9);
    const prompts = Array.from({ length: 6 }, () => Array.from({ length: 90 + Math.floor(rand() * 40) }, () => Math.floor(rand() * tm.cfg.vocabSize)));
    const solo = await loadTiny(tm, {}, { adapterSlots: 1 });
    open.push(solo);
    const steps: number[] = [];
    for (const maxStepMs of [0, 1e-6]) {
      const h = await harness({ slots: 3, config: { maxBatchPrefillTokens: 512, maxStepMs } });
      // A first request teaches the model what a prompt token costs; then the prompts arrive together.
      h.core.submit(request(1, prompts[0].map((t) => (t + 1) % tm.cfg.vocabSize), spec(0), 2));
      await until(() => h.events.get(1)?.some((e) => e.t === 'end') ?? false);
      const before = h.core.stats().steps;
      prompts.forEach((p, i) => h.core.submit(request(10 + i, p, i % 2 === 0 ? spec(i % 3) : null, 3)));
      await until(() => prompts.every((_, i) => h.events.get(10 + i)?.some((e) => e.t === 'end' || e.t === 'error')));
      steps.push(h.core.stats().steps - before);
      for (const [i, p] of prompts.entries()) expect(tokensOf(h.events.get(10 + i)!), `prompt ${i}`).toEqual(await alone(solo, p, i % 2 === 0 ? adapters[i % 3] : null, 3));
      h.core.stop();
      await h.done;
    }
    // ~650 prompt tokens: a few steps by tokens (512 a step); 32-token chunks by time.
    const promptTokens = prompts.reduce((n, p) => n + p.length, 0);
    expect(steps[0]).toBeLessThanOrEqual(6);
    expect(steps[1]).toBeGreaterThanOrEqual(Math.ceil(promptTokens / 32));
  });

  it('36 requests over 6 adapters and the base, 3 slots, 8 rows: each equals the request run alone; none lost or doubled', async () => {
    const h = await harness({ slots: 3 });
    const rand = prng(5);
    const reqs = Array.from({ length: 36 }, (_, i) => {
      const a = i % 7 === 6 ? null : i % 6;
      const prompt = Array.from({ length: 3 + Math.floor(rand() * 12) }, () => Math.floor(rand() * tm.cfg.vocabSize));
      return { id: i + 1, a, prompt, n: 4 + Math.floor(rand() * 8) };
    });
    for (const r of reqs) h.core.submit(request(r.id, r.prompt, r.a === null ? null : spec(r.a), r.n));
    await until(() => reqs.every((r) => h.events.get(r.id)?.some((e) => e.t === 'end' || e.t === 'error')));
    const solo = await loadTiny(tm, {}, { adapterSlots: 1 });
    open.push(solo);
    for (const r of reqs) {
      const ev = h.events.get(r.id)!;
      expect(ev.filter((e) => e.t === 'running')).toHaveLength(1);
      expect(ev.filter((e) => e.t === 'end')).toHaveLength(1);
      expect(ev.filter((e) => e.t === 'error')).toHaveLength(0);
      expect(ev.at(-1)).toMatchObject({ t: 'end', finishReason: 'length', completionTokens: r.n, promptTokens: r.prompt.length });
      expect(tokensOf(ev)).toEqual(await alone(solo, r.prompt, r.a === null ? null : adapters[r.a], r.n));
    }
    const stats = h.core.stats();
    expect(stats.running).toBe(0);
    expect(stats.waiting).toBe(0);
    expect(stats.kvReservedTokens).toBe(0);
    expect(h.core.model.kv.freeTokens).toBe(h.core.model.kv.capacity);
    expect(stats.cache.loads).toBe(6);
    expect(stats.slotLoads).toBeGreaterThan(3);
    h.core.stop();
    await h.done;
  });

  it('cancelled requests leave before the next step and free their rows and cache', async () => {
    const h = await harness({ slots: 2, config: { maxBatchSize: 2 } });
    h.core.submit(request(1, [1, 2, 3], spec(0), 400));
    h.core.submit(request(2, [4, 5, 6], null, 400));
    h.core.submit(request(3, [7, 8], spec(1), 5));
    await until(() => tokensOf(h.events.get(1) ?? []).length >= 3);
    expect(h.events.get(3)?.some((e) => e.t === 'token')).toBeFalsy(); // no free row yet
    h.core.cancel(1);
    h.core.cancel(2);
    await until(() => h.events.get(3)?.some((e) => e.t === 'end') ?? false);
    expect(errorOf(h.events.get(1))).toMatchObject({ code: 'cancelled' });
    expect(errorOf(h.events.get(2))).toMatchObject({ code: 'cancelled' });
    expect(h.core.stats()).toMatchObject({ cancelledRunning: 2, cancelledWaiting: 0 });
    await until(() => h.core.stats().running === 0);
    expect(h.core.model.kv.freeTokens).toBe(h.core.model.kv.capacity);
    h.core.stop();
    await h.done;
  });

  it('a request for an adapter that fails to load gets the error while others continue', async () => {
    const h = await harness({ failDirs: new Set([adapters[2].dir]) });
    h.core.submit(request(1, [1, 2], spec(2), 3));
    h.core.submit(request(2, [3, 4], spec(0), 3));
    h.core.submit(request(3, [5, 6], null, 3));
    h.core.submit(request(4, [7], spec(2), 3));
    await until(() => [1, 2, 3, 4].every((id) => h.events.get(id)?.some((e) => e.t === 'end' || e.t === 'error')));
    for (const id of [1, 4]) {
      expect(errorOf(h.events.get(id))).toMatchObject({ code: 'adapter_load_failed' });
      expect(errorOf(h.events.get(id))!.message).toMatch(/adapter a2 failed to load: disk on fire/);
    }
    for (const id of [2, 3]) expect(h.events.get(id)!.at(-1)).toMatchObject({ t: 'end', completionTokens: 3 });
    expect(h.core.stats().cache.loadFailures).toBe(1);
    h.core.stop();
    await h.done;
  });

  it('refuses beyond the queue limit and beyond the context with clear errors', async () => {
    const h = await harness({ config: { maxQueuedRequests: 1 } });
    h.core.submit(request(1, [1, 2], null, 3));
    h.core.submit(request(2, [1, 2], null, 3));
    expect(errorOf(h.events.get(2))).toMatchObject({ code: 'overloaded' });
    h.core.submit(request(3, Array(10).fill(1), null, 600));
    expect(errorOf(h.events.get(3))).toEqual({
      code: 'context_length_exceeded',
      param: 'max_tokens',
      message: 'max_tokens + prompt tokens must be <= 512 (the context length); given 10 prompt tokens and 600 max_tokens',
    });
    h.core.submit(request(4, [1, 999], null, 3));
    expect(errorOf(h.events.get(4))).toMatchObject({ code: 'invalid_token' });
    h.core.stop();
    await h.done;
  });

  it('a replaced adapter (new version) is used by new requests while the running one keeps its weights', async () => {
    const h = await harness({ slots: 3 });
    const dirV1 = adapters[3].dir;
    const v1: AdapterSpec = { kind: 'single', key: '3@1', name: 'a3', dir: dirV1 };
    const v2: AdapterSpec = { kind: 'single', key: '3@2', name: 'a3', dir: adapters[4].dir };
    h.core.submit(request(1, [9, 8, 7], v1, 12));
    await until(() => tokensOf(h.events.get(1) ?? []).length >= 2);
    h.core.submit(request(2, [9, 8, 7], v2, 12));
    await until(() => [1, 2].every((id) => h.events.get(id)?.some((e) => e.t === 'end')));
    const solo = await loadTiny(tm, {}, { adapterSlots: 1 });
    open.push(solo);
    expect(tokensOf(h.events.get(1)!)).toEqual(await alone(solo, [9, 8, 7], adapters[3], 12));
    expect(tokensOf(h.events.get(2)!)).toEqual(await alone(solo, [9, 8, 7], adapters[4], 12));
    h.core.stop();
    await h.done;
  });
});

describe('KV cache pressure', () => {
  it('preempts and resumes requests when the cache fills, with the same tokens as alone', async () => {
    // 192 cache tokens; each request needs 4 + 120 over its life but reserves 4 + 64 up front.
    const model = await loadTiny(tm, {}, { adapterSlots: 2, kvCacheTokens: 192 });
    open.push(model);
    const events = new Map<number, EngineEvent[]>();
    const core = new EngineCore({
      model,
      tokenizer: null,
      config: CONFIG,
      load: async (s) => loadAdapterHere(s, { spec: model.spec, maxRank: 64, strictBase: null, slotDtype: 'float32' }),
      emit: (es) => es.forEach((e) => events.set(e.id, [...(events.get(e.id) ?? []), e])),
    });
    const done = core.run();
    const prompts = [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]];
    prompts.forEach((p, i) => core.submit(request(i + 1, p, i === 1 ? spec(0) : null, 120)));
    await until(() => [1, 2, 3].every((id) => events.get(id)?.some((e) => e.t === 'end' || e.t === 'error')));
    expect(core.stats().preemptions).toBeGreaterThan(0);
    const solo = await loadTiny(tm, {}, { adapterSlots: 1 });
    open.push(solo);
    for (let i = 0; i < 3; i++) {
      expect(events.get(i + 1)!.at(-1)).toMatchObject({ t: 'end', completionTokens: 120 });
      expect(tokensOf(events.get(i + 1)!)).toEqual(await alone(solo, prompts[i], i === 1 ? adapters[0] : null, 120));
    }
    expect(model.kv.freeTokens).toBe(model.kv.capacity);
    core.stop();
    await done;
  });
});

describe('adapter combinations', () => {
  /** W' = W + Σ wᵢ·scaleᵢ·Bᵢ·Aᵢ, merged explicitly into the base weights. */
  function mergedWeights(parts: { lora: RefLora; w: number }[]): RefWeights {
    const out: RefWeights = new Map([...tm.weights].map(([k, v]) => [k, { shape: v.shape, data: v.data.slice() }]));
    const path: Record<string, string> = { q_proj: 'self_attn', k_proj: 'self_attn', v_proj: 'self_attn', o_proj: 'self_attn', gate_proj: 'mlp', up_proj: 'mlp', down_proj: 'mlp' };
    for (const { lora, w } of parts) {
      for (const [key, pair] of lora) {
        const [layer, m] = key.split('.');
        const W = out.get(`model.layers.${layer}.${path[m]}.${m}.weight`)!;
        const [din, dout] = moduleShape(tm.cfg, m as 'q_proj');
        const r = pair.a.shape[0];
        for (let o = 0; o < dout; o++) {
          for (let i = 0; i < din; i++) {
            let s = 0;
            for (let k = 0; k < r; k++) s += pair.b.data[o * r + k] * pair.a.data[k * din + i];
            W.data[o * din + i] += w * pair.scale * s;
          }
        }
      }
    }
    return out;
  }

  it('a weighted linear combination equals the base model with the merged weights', async () => {
    const model = await loadTiny(tm, {}, { adapterSlots: 2 });
    open.push(model);
    const parts = [
      { i: 0, w: 0.7 },
      { i: 5, w: -0.4 },
      { i: 2, w: 1.3 },
    ];
    const load = (i: number) => loadAdapterHere(spec(i), { spec: model.spec, maxRank: 64, strictBase: null, slotDtype: 'float32' });
    const merged = mergeLoraWeights(await Promise.all(parts.map(async (p) => ({ weights: await load(p.i), weight: p.w }))), 64);
    expect(merged.maxRank).toBe(parts.reduce((n, p) => n + adapters[p.i].lora.get('0.q_proj')!.a.shape[0], 0));
    const slot = model.lora.load(merged);
    const toks = [3, 1, 4, 1, 5, 9, 2, 6];
    const out = await model.step([{ seq: model.newSequence(), tokens: toks, slot, logits: 'all' }]);
    const ref = referenceLogits(tm.cfg, mergedWeights(parts.map((p) => ({ lora: adapters[p.i].lora, w: p.w }))), toks);
    const V = tm.cfg.vocabSize;
    toks.forEach((_, t) => expect(maxAbsDiff(out.logits.subarray(t * V, (t + 1) * V), ref[t])).toBeLessThan(1e-4));
  });

  it('runs in the engine like any adapter, keyed by its recipe, and refuses a rank sum above the maximum', async () => {
    const h = await harness({ slots: 2 });
    const parts = [
      { ...spec(1), weight: 0.5 },
      { ...spec(2), weight: 0.5 },
    ];
    const combo: AdapterSpec = { kind: 'merge', key: mergeKey(parts), name: 'a1+a2', parts };
    expect(mergeKey([...parts].reverse())).toBe(combo.key);
    h.core.submit(request(1, [1, 2, 3], combo, 4));
    h.core.submit(request(2, [1, 2, 3], spec(0), 4));
    await until(() => [1, 2].every((id) => h.events.get(id)?.some((e) => e.t === 'end' || e.t === 'error')));
    expect(h.events.get(1)!.at(-1)).toMatchObject({ t: 'end', completionTokens: 4 });
    const big = Array.from({ length: 7 }, (_, i) => ({ ...spec(i), weight: 1 }));
    const tooBig = await harness({ slots: 1, maxRank: 16 });
    const small = { kind: 'merge', key: mergeKey(big), name: 'all', parts: big } as AdapterSpec;
    tooBig.core.submit(request(1, [1], small, 2));
    await until(() => tooBig.events.get(1)?.some((e) => e.t === 'end' || e.t === 'error') ?? false);
    expect(errorOf(tooBig.events.get(1))).toMatchObject({ code: 'adapter_load_failed' });
    expect(errorOf(tooBig.events.get(1))!.message).toMatch(/the combination has rank 32 at .* above the maximum LoRA rank 16/);
    h.core.stop();
    tooBig.core.stop();
    await Promise.all([h.done, tooBig.done]);
  });
});

describe('distinct adapter recipes', () => {
  it('10,000 distinct recipes (loaded, failed, evicted) leave the engine a bounded recipe map and failure memory', async () => {
    // Every merged_adapters mix (and every version of an adapter) is a recipe with a key of its own;
    // an unauthenticated client can send new ones forever. The engine must forget those it no longer holds.
    const failing = makeTinyAdapter(tm, { seed: 999, r: 2 });
    const probe = await loadTiny(tm);
    open.push(probe);
    const oneAdapter = Math.max(...(await Promise.all([0, 1, 2].map(async (i) => (await loadAdapterHere(spec(i), { spec: probe.spec, maxRank: 64, strictBase: null, slotDtype: 'float32' })).bytes))));
    const config = { adapterCacheBytes: 3 * oneAdapter, adapterFailureTtlMs: 1, maxQueuedRequests: 20_000 };
    const h = await harness({ slots: 2, config, failDirs: new Set([failing.dir]), loadDelayMs: 0 });
    const N = 10_000;
    const WAVE = 500;
    const specs = (i: number): AdapterSpec => ({ kind: 'single', key: `recipe-${i}`, name: `r${i}`, dir: i % 4 === 3 ? failing.dir : adapters[i % 3].dir });
    let peakRecipes = 0;
    let peakFailures = 0;
    let peakCached = 0;
    for (let from = 0; from < N; from += WAVE) {
      const ids = Array.from({ length: WAVE }, (_, j) => from + j + 1);
      for (const id of ids) h.core.submit(request(id, [1 + (id % 5)], specs(id - 1), 1));
      await h.ended(ids, 120_000);
      peakRecipes = Math.max(peakRecipes, h.core.adapters.recipes);
      peakFailures = Math.max(peakFailures, h.core.adapters.cache.failureCount);
      peakCached = Math.max(peakCached, h.core.adapters.cache.stats.entries);
      for (const id of ids) h.events.delete(id);
    }
    const stats = h.core.stats();
    expect(stats.cache.loads).toBeGreaterThanOrEqual(N);
    expect(peakCached).toBeLessThanOrEqual(12);
    expect(stats.cache.loadFailures).toBeGreaterThanOrEqual(N * 0.25);
    // Bounded by what one wave keeps in the engine (plus the sweep's doubling), not by the recipes seen.
    expect(peakRecipes).toBeLessThanOrEqual(2 * WAVE + 64);
    expect(peakFailures).toBeLessThanOrEqual(2 * WAVE + 64);
    h.core.stop();
    await h.done;
  }, 300_000);
});

describe('unloading an adapter that waiting requests want', () => {
  it('a request queued for an adapter unloaded before its first step loads it again and answers as alone', async () => {
    const h = await harness({ slots: 2 });
    await h.core.preload(spec(1));
    h.core.submit(request(9001, [3, 1, 4], spec(1), 4));
    // Unloaded while the request waits (not yet pinned by a running row).
    expect(h.core.unload(spec(1).key)).toBe(true);
    await h.ended([9001], 90_000);
    const events = h.events.get(9001)!;
    expect(events.at(-1)?.t).toBe('end');
    expect(tokensOf(events)).toEqual(await alone(await loadTiny(tm, {}, { adapterSlots: 1 }).then((m) => (open.push(m), m)), [3, 1, 4], adapters[1], 4));
    h.core.stop();
    await h.done;
  }, 120_000);
});

describe('adapter slots', () => {
  it("a lone request's steps read only its own adapter's slot, whatever earlier traffic left in the others", async () => {
    const model = await loadTiny(tm, {}, { adapterSlots: 3, kvCacheTokens: 2048, maxLoraRank: 64 });
    open.push(model);
    // The real model runs; the wrapper only records the slots each step's rows use.
    const slotsPerStep: number[][] = [];
    const step = model.step.bind(model);
    model.step = (rows) => {
      slotsPerStep.push(rows.map((r) => r.slot));
      return step(rows);
    };
    const h = startEngine(model, CONFIG, { maxRank: 64 });
    const solo = await loadTiny(tm, {}, { adapterSlots: 1 });
    open.push(solo);
    [0, 1, 2].forEach((a) => h.core.submit(request(a + 1, [1 + a, 2, 3], spec(a), 3)));
    await h.ended([1, 2, 3]);
    // Three adapters sit in the three slots. Each one alone now: its rows use slot 0, so the graph
    // runs one slot's LoRA groups (it runs slots 0..highest used), not the others' too.
    for (const a of [2, 1, 0, 2]) {
      const from = slotsPerStep.length;
      h.core.submit(request(10 + a, [4, 5, 6], spec(a), 3));
      await h.ended([10 + a]);
      const used = slotsPerStep.slice(from).flat();
      expect(used.length, `adapter ${a}`).toBeGreaterThan(0);
      expect(new Set(used), `adapter ${a}`).toEqual(new Set([0]));
      expect(tokensOf(h.events.get(10 + a)!)).toEqual(await alone(solo, [4, 5, 6], adapters[a], 3));
    }
    expect(h.core.stats().slotMoves).toBeGreaterThan(0);
    h.core.stop();
    await h.done;
  });
});
