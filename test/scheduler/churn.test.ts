/**
 * Churn: thousands of requests over many adapters with tiny slot, cache and KV capacities, adapters
 * replaced (new versions), unloaded and reloaded mid-run, merged combinations in the mix, clients
 * cancelling at random points. Every completed greedy answer must equal the same request run alone
 * on a fresh model; at the end nothing is left behind (rows, KV, reservations, pins, loads).
 * Deterministic for its seed: the same requests, cancels and replacements in the same order.
 *
 * With the prefix cache on: most prompts start with one of a few shared "system prompts", and now
 * and then one prompt is sent to every adapter, every version's neighbour, a combination and the
 * base at once — the requests that a cache keyed on the wrong thing would answer from another
 * adapter's (or an older version's) blocks. Each answer is still checked against the request alone
 * on a fresh model, without any cache.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { loadAdapterHere } from '../../src/adapters/loader.js';
import { mergeKey, type AdapterSpec } from '../../src/adapters/spec.js';
import type { DecoderModel } from '../../src/runtime/model.js';
import { GREEDY } from '../../src/runtime/sampling.js';
import { EngineCore } from '../../src/scheduler/core.js';
import type { EngineEvent } from '../../src/scheduler/request.js';
import { argmax, loadTiny, logitsOf } from '../helpers/runtime.js';
import { makeTinyAdapter, makeTinyModel, prng } from '../helpers/tiny-model.js';

const SEED = 1234;
const REQUESTS = 2400;
const IN_FLIGHT = 24;
/** Most requests are short; a few run long enough to outgrow their KV reservation (preemption). */
const SHORT = 6;
const LONG = 80;

const tm = makeTinyModel({ seed: 77, vocabSize: 64, hiddenSize: 32, numHeads: 2, numKvHeads: 1, headDim: 16, intermediateSize: 48, peaked: 1, residualScale: 0.3 });
/** Ten adapters, each with two versions on disk. */
const versions = Array.from({ length: 10 }, (_, i) => [0, 1].map((v) => makeTinyAdapter(tm, { seed: 500 + 10 * i + v, r: 2 + ((i + v) % 3) * 2, bStd: 0.3 })));
const single = (i: number, v: number): Extract<AdapterSpec, { kind: 'single' }> => ({ kind: 'single', key: `${i}@${v + 1}`, name: `a${i}`, dir: versions[i][v].dir });
const opts = { maxRank: 16, strictBase: null, slotDtype: 'float32' as const };

const open: DecoderModel[] = [];
afterAll(async () => {
  for (const m of open) await m.close();
});

describe('churn', () => {
  it(`${REQUESTS} requests, 2 slots, a cache of 3 adapters, replacements, unloads, merges and cancels: every answer equals the request alone`, async () => {
    const rand = prng(SEED);
    const loadDelay = prng(SEED + 1);
    const pick = <T,>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)];
    const tokens = (n: number): number[] => Array.from({ length: n }, () => Math.floor(rand() * tm.cfg.vocabSize));
    // Shared prefixes of 1 to 3 blocks (and a little more); most prompts extend one of them.
    const systems = [16, 23, 32, 41].map(tokens);
    const prompts = Array.from({ length: 24 }, (_, i) => (i % 3 === 2 ? tokens(1 + Math.floor(rand() * 20)) : [...systems[i % 4], ...tokens(Math.floor(rand() * 12))]));

    const model = await loadTiny(tm, {}, { adapterSlots: 2, kvCacheTokens: 208, maxLoraRank: 16 });
    open.push(model);
    // Room for about three adapters (a combination is as large as two or three of them).
    const adapterBytes = Math.max(...(await Promise.all(versions.flatMap((vs, i) => vs.map(async (_, v) => (await loadAdapterHere(single(i, v), { spec: model.spec, ...opts })).bytes)))));
    const events = new Map<number, EngineEvent[]>();
    const ended = new Set<number>();
    const core = new EngineCore({
      model,
      tokenizer: null,
      config: { maxBatchSize: 6, maxBatchPrefillTokens: 24, maxQueuedRequests: 1000, adapterCycleMs: 3, adapterCacheBytes: 3 * adapterBytes, prefixCache: true },
      load: async (s) => {
        // (Load delays have their own generator: the request sequence stays the seed's.)
        await new Promise((r) => setTimeout(r, loadDelay() < 0.5 ? 0 : 2));
        return loadAdapterHere(s, { spec: model.spec, ...opts });
      },
      emit: (es) => {
        for (const e of es) {
          const list = events.get(e.id) ?? [];
          list.push(e);
          events.set(e.id, list);
          if (e.t === 'end' || e.t === 'error') ended.add(e.id);
        }
      },
    });
    const loop = core.run();

    // The current version of each adapter; replacements happen as the run goes.
    const current = versions.map(() => 0);
    const merges = (): AdapterSpec[] => {
      const parts = [
        [{ ...single(1, current[1]), weight: 0.6 }, { ...single(2, current[2]), weight: -0.4 }],
        [{ ...single(3, current[3]), weight: 1.2 }],
      ];
      return parts.map((p) => ({ kind: 'merge' as const, key: mergeKey(p), name: 'combo', parts: p }));
    };
    interface Sent {
      adapter: AdapterSpec | null;
      prompt: number;
      n: number;
      /** Cancel after this many tokens (-1: never; 0: right after submitting). */
      cancelAt: number;
    }
    const sent = new Map<number, Sent>();
    let next = 1;
    let replaced = 0;
    let unloads = 0;
    let bursts = 0;
    const send = (s: Sent): void => {
      const id = next++;
      sent.set(id, s);
      core.submit({ id, promptIds: Int32Array.from(prompts[s.prompt]), adapter: s.adapter, sampling: GREEDY, stop: { maxNewTokens: s.n, stopStrings: [], stopTokenIds: [], ignoreEos: true, minTokens: 0 }, promptLogprobs: null, timeoutMs: 600_000, grammar: null, cachePartition: '' });
      if (s.cancelAt === 0) core.cancel(id);
    };
    const submitOne = (): void => {
      if (rand() < 0.02) {
        // One prompt to every adapter (current and other version), a combination and the base, at once.
        const prompt = Math.floor(rand() * prompts.length);
        const n = 1 + Math.floor(rand() * SHORT);
        const targets: (AdapterSpec | null)[] = [null, pick(merges()), ...versions.flatMap((_, i) => [single(i, current[i]), single(i, 1 - current[i])])];
        for (const adapter of targets) if (next <= REQUESTS) send({ adapter, prompt, n, cancelAt: -1 });
        bursts++;
        return;
      }
      const r = rand();
      const i = Math.floor(rand() * 10);
      const adapter = r < 0.15 ? null : r < 0.25 ? pick(merges()) : single(i, current[i]);
      const n = rand() < 0.04 ? LONG - Math.floor(rand() * 10) : 1 + Math.floor(rand() * SHORT);
      send({ adapter, prompt: Math.floor(rand() * prompts.length), n, cancelAt: rand() < 0.12 ? Math.floor(rand() * 4) : -1 });
      // Now and then an adapter gets a new version, or an idle adapter is unloaded by an operator.
      if (rand() < 0.01) {
        const i = Math.floor(rand() * 10);
        current[i] = 1 - current[i];
        replaced++;
      }
      if (rand() < 0.02 && core.unload(pick([...sent.values()].map((x) => x.adapter?.key).filter((k): k is string => !!k)))) unloads++;
    };
    while (next <= REQUESTS || ended.size < sent.size) {
      while (next <= REQUESTS && next - 1 - ended.size < IN_FLIGHT) submitOne();
      for (const [id, s] of sent) {
        if (s.cancelAt > 0 && !ended.has(id) && (events.get(id)?.filter((e) => e.t === 'token').length ?? 0) >= s.cancelAt) core.cancel(id);
      }
      await new Promise((r) => setTimeout(r, 1));
    }

    // Each request alone, on a fresh model with one slot (greedy: a shorter run is a prefix).
    const solo = await loadTiny(tm, {}, { adapterSlots: 1, maxLoraRank: 16 });
    open.push(solo);
    const memo = new Map<string, number[]>();
    const alone = async (adapter: AdapterSpec | null, prompt: number, n: number): Promise<number[]> => {
      const key = `${adapter?.key ?? 'base'}|${prompt}`;
      if ((memo.get(key)?.length ?? 0) < n) {
        while (solo.lora.count > 0) solo.lora.unload(0);
        const slot = adapter ? solo.lora.load(await loadAdapterHere(adapter, { spec: solo.spec, ...opts })) : -1;
        const seq = solo.newSequence();
        const out: number[] = [];
        let toks = prompts[prompt];
        for (let i = 0; i < Math.max(n, SHORT); i++) {
          const r = await solo.step([{ seq, tokens: toks, slot, logits: 'last' }]);
          out.push(argmax(logitsOf(r, 0)));
          toks = [out[out.length - 1]];
        }
        solo.freeSequence(seq);
        memo.set(key, out);
      }
      return memo.get(key)!;
    };

    let completed = 0;
    let cancelled = 0;
    for (const [id, s] of sent) {
      const ev = events.get(id)!;
      const last = ev.at(-1)!;
      const tokens = ev.filter((e): e is Extract<EngineEvent, { t: 'token' }> => e.t === 'token').map((e) => e.token);
      expect(ev.filter((e) => e.t === 'end' || e.t === 'error'), `request ${id}`).toHaveLength(1);
      if (last.t === 'error') {
        expect(last.error.code, `request ${id}: ${last.error.message}`).toBe('cancelled');
        expect(s.cancelAt).toBeGreaterThanOrEqual(0);
        cancelled++;
      } else {
        expect(last).toMatchObject({ t: 'end', completionTokens: s.n });
        completed++;
      }
      // Cancelled or not, every token a request received is the token it would get alone.
      expect(tokens, `request ${id}`).toEqual((await alone(s.adapter, s.prompt, s.n)).slice(0, tokens.length));
    }
    const stats = core.stats();
    expect(stats).toMatchObject({ running: 0, waiting: 0, kvReservedTokens: 0, kvUsedTokens: 0, submitted: REQUESTS });
    expect(stats.cancelledWaiting + stats.cancelledRunning).toBe(cancelled);
    for (const s of sent.values()) if (s.adapter) expect(core.adapters.slots.isPinned(s.adapter.key)).toBe(false);
    expect(completed + cancelled).toBe(REQUESTS);
    expect(completed).toBeGreaterThan(REQUESTS * 0.8);
    expect(replaced).toBeGreaterThan(5);
    expect(unloads).toBeGreaterThan(0);
    expect(stats.preemptions).toBeGreaterThan(0);
    expect(stats.cache.evictions).toBeGreaterThan(0);
    // The cache was exercised (in a pool this small, mostly between requests running at once).
    expect(bursts).toBeGreaterThan(10);
    expect(stats.prefixCacheHitTokens).toBeGreaterThan(stats.prefixCacheQueryTokens * 0.03);
    expect([...events.values()].filter((ev) => ev.some((e) => e.t === 'end' && e.cachedTokens > 0)).length).toBeGreaterThan(100);
    core.stop();
    await loop;
  });
});
