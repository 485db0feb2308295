/**
 * Prefix caching through the serving loop: greedy answers are the same with the cache on, off, and
 * for the request alone on a fresh model; hits are exactly the blocks that can be reused (whole
 * blocks, never the last prompt token, never across adapters or versions); multi-turn histories,
 * `n > 1` choices, prompt logprobs, preemption and a pool full of cached blocks.
 */
import { afterAll, describe, expect, it } from 'vitest';
import type { AdapterSpec } from '../../src/adapters/spec.js';
import { KV_BLOCK } from '../../src/runtime/kv-cache.js';
import type { DecoderModel } from '../../src/runtime/model.js';
import type { EngineConfig } from '../../src/scheduler/core.js';
import type { EngineEvent } from '../../src/scheduler/request.js';
import { aloneGreedy, endOf, greedyRequest, startEngine, tokensOf, type EngineHarness } from '../helpers/engine.js';
import { loadTiny } from '../helpers/runtime.js';
import { makeTinyAdapter, makeTinyModel, prng } from '../helpers/tiny-model.js';

const tm = makeTinyModel({ seed: 91, peaked: 1, residualScale: 0.3 });
const adapters = Array.from({ length: 3 }, (_, i) => makeTinyAdapter(tm, { seed: 300 + i, r: 4, bStd: 0.3 }));
const single = (i: number, key = `${i}@1`): Extract<AdapterSpec, { kind: 'single' }> => ({ kind: 'single', key, name: `a${i}`, dir: adapters[i].dir });
const CONFIG: EngineConfig = { maxBatchSize: 8, maxBatchPrefillTokens: 24, maxQueuedRequests: 200, adapterCycleMs: 5, adapterCacheBytes: 1 << 30, prefixCache: true };

const open: DecoderModel[] = [];
const engines: EngineHarness[] = [];
afterAll(async () => {
  for (const h of engines) {
    h.core.stop();
    await h.done;
  }
  for (const m of open) await m.close();
});

async function engine(config: Partial<EngineConfig> = {}, kvCacheTokens = 2048): Promise<EngineHarness> {
  const model = await loadTiny(tm, {}, { adapterSlots: 3, kvCacheTokens });
  open.push(model);
  const h = startEngine(model, { ...CONFIG, ...config });
  engines.push(h);
  return h;
}

let solo: DecoderModel | null = null;
async function alone(prompt: number[], adapter: number | null, n: number): Promise<number[]> {
  if (!solo) {
    solo = await loadTiny(tm, {}, { adapterSlots: 1 });
    open.push(solo);
  }
  return aloneGreedy(solo, prompt, adapter === null ? null : single(adapter), n);
}

const rand = prng(17);
const tokens = (n: number): number[] => Array.from({ length: n }, () => Math.floor(rand() * tm.cfg.vocabSize));
/** Blocks of a prompt that may come from the cache: whole blocks, the last token always computed. */
const reusable = (len: number): number => Math.floor((len - 1) / KV_BLOCK) * KV_BLOCK;

let nextId = 1;
/** Submits the requests (all at once) and waits for them; returns each one's events. */
async function run(h: EngineHarness, reqs: { prompt: number[]; adapter: number | null; n: number; promptLogprobs?: number }[]): Promise<EngineEvent[][]> {
  const ids = reqs.map((r) => {
    const id = nextId++;
    h.core.submit(greedyRequest(id, r.prompt, r.adapter === null ? null : single(r.adapter), r.n, { promptLogprobs: r.promptLogprobs ?? null }));
    return id;
  });
  await h.ended(ids);
  return ids.map((id) => h.events.get(id)!);
}

describe('prefix cache', () => {
  const system = tokens(40);
  // Prompt lengths around block edges: 47, 48 (a whole number of blocks), 49, 33, 56.
  const users = [7, 8, 9, 0, 16].map(tokens);
  const wave = (adapter: number | null) => users.map((u) => ({ prompt: [...system, ...u].slice(0, u.length === 0 ? 33 : undefined), adapter, n: 6 }));

  it('a shared system prompt is computed once per adapter; answers equal the cache off and the request alone', async () => {
    const on = await engine();
    const off = await engine({ prefixCache: false });
    const reqs = [null, 0, 1, 2].flatMap(wave);
    // First one request per adapter (to fill the cache), then everything.
    const warm = [null, 0, 1, 2].map((a) => ({ prompt: [...system, 1, 2, 3], adapter: a, n: 3 }));
    await run(on, warm);
    await run(off, warm);
    const withCache = await run(on, reqs);
    const without = await run(off, reqs);
    for (let i = 0; i < reqs.length; i++) {
      const r = reqs[i];
      expect(tokensOf(withCache[i]), `request ${i}`).toEqual(tokensOf(without[i]));
      expect(tokensOf(withCache[i]), `request ${i}`).toEqual(await alone(r.prompt, r.adapter, r.n));
      // The system prompt's two whole blocks (32 tokens) came from the cache; block 3 holds the user's turn.
      expect(endOf(withCache[i]).cachedTokens, `request ${i}`).toBe(Math.min(32, reusable(r.prompt.length)));
      expect(endOf(without[i]).cachedTokens).toBe(0);
    }
    const s = on.core.stats();
    expect(s.prefixCacheHitTokens).toBe(reqs.reduce((n, r) => n + Math.min(32, reusable(r.prompt.length)), 0));
    expect(s.prefixCacheQueryTokens).toBe([...warm, ...reqs].reduce((n, r) => n + r.prompt.length, 0));
    expect(s.kvCachedBlocks).toBeGreaterThan(0);
    expect(s.kvIdleBlocks).toBe(s.kvCachedBlocks);
    expect(s.kvUsedTokens).toBe(0);
    expect(off.core.stats()).toMatchObject({ prefixCacheHitTokens: 0, prefixCacheQueryTokens: 0, kvCachedBlocks: 0 });
  });

  it('the same prompt to several adapters at once: each computes its own, none sees another adapter`s blocks', async () => {
    const h = await engine();
    const prompt = tokens(50);
    const reqs = [null, 0, 1, 2, null, 0, 1, 2].map((adapter) => ({ prompt, adapter, n: 5 }));
    const out = await run(h, reqs);
    for (let i = 0; i < reqs.length; i++) {
      expect(tokensOf(out[i])).toEqual(await alone(prompt, reqs[i].adapter, 5));
      // The first four compute the prompt; the second four wait a step for it and reuse it.
      expect(endOf(out[i]).cachedTokens, `request ${i}`).toBe(i < 4 ? 0 : reusable(50));
    }
  });

  it('n > 1: the choices share the prompt; the first computes it, the others reuse all of it but the last token', async () => {
    const h = await engine();
    const prompt = tokens(50);
    const out = await run(h, Array.from({ length: 4 }, () => ({ prompt, adapter: 1, n: 8 })));
    const ref = await alone(prompt, 1, 8);
    for (const ev of out) expect(tokensOf(ev)).toEqual(ref);
    expect(out.map((ev) => endOf(ev).cachedTokens)).toEqual([0, 48, 48, 48]);
    expect(h.core.stats().prefixCacheHitTokens).toBe(3 * 48);
  });

  it('a multi-turn conversation reuses its history, the generated turn included', async () => {
    const h = await engine();
    let history = tokens(21);
    /** Positions the previous turn left in the KV cache. */
    let previous = 0;
    for (let turn = 0; turn < 4; turn++) {
      const [ev] = await run(h, [{ prompt: history, adapter: 2, n: 20 }]);
      const reply = tokensOf(ev);
      expect(reply).toEqual(await alone(history, 2, 20));
      if (turn > 0) {
        // Everything the previous turn held in the cache: its prompt and all but its last sampled token.
        expect(endOf(ev).cachedTokens).toBe(Math.min(reusable(history.length), Math.floor(previous / KV_BLOCK) * KV_BLOCK));
        expect(endOf(ev).cachedTokens).toBeGreaterThan(previous - 2 * KV_BLOCK);
      }
      previous = history.length + reply.length - 1;
      history = [...history, ...reply, ...tokens(5)];
    }
  });

  it('a request for prompt logprobs computes its whole prompt (and publishes it)', async () => {
    const on = await engine();
    const off = await engine({ prefixCache: false });
    const prompt = tokens(40);
    await run(on, [{ prompt, adapter: 0, n: 2 }]);
    const [a] = await run(on, [{ prompt, adapter: 0, n: 2, promptLogprobs: 2 }]);
    const [b] = await run(off, [{ prompt, adapter: 0, n: 2, promptLogprobs: 2 }]);
    expect(endOf(a).cachedTokens).toBe(0);
    const logprobs = (ev: EngineEvent[]) => ev.filter((e) => e.t === 'prompt_logprobs').flatMap((e) => (e.t === 'prompt_logprobs' ? e.tokens : []));
    expect(logprobs(a)).toHaveLength(40);
    expect(logprobs(a)).toEqual(logprobs(b));
    const [c] = await run(on, [{ prompt, adapter: 0, n: 2 }]);
    expect(endOf(c).cachedTokens).toBe(reusable(40));
  });

  it('a new version of an adapter never reads the old one`s blocks; unloading drops them', async () => {
    const h = await engine();
    const prompt = tokens(40);
    const send = async (spec: AdapterSpec) => {
      const id = nextId++;
      h.core.submit(greedyRequest(id, prompt, spec, 4));
      await h.ended([id]);
      return h.events.get(id)!;
    };
    // Version 1 of "a0" is adapter 0's weights; version 2, under the same name, adapter 1's.
    const v1 = single(0, 'digest-v1');
    const v2 = { ...single(1, 'digest-v2'), name: 'a0' };
    expect(endOf(await send(v1)).cachedTokens).toBe(0);
    const second = await send(v2);
    expect(endOf(second).cachedTokens).toBe(0);
    expect(tokensOf(second)).toEqual(await alone(prompt, 1, 4));
    const again = await send(v1);
    expect(endOf(again).cachedTokens).toBe(32);
    expect(tokensOf(again)).toEqual(await alone(prompt, 0, 4));
    const before = h.core.stats().kvCachedBlocks;
    expect(h.core.unload('digest-v1')).toBe(true);
    expect(h.core.stats().kvCachedBlocks).toBe(before - 2);
    expect(endOf(await send(v1)).cachedTokens).toBe(0);
    expect(endOf(await send(v2)).cachedTokens).toBe(32);
  });

  it('preempted requests resume from their own cached blocks, with the same tokens as alone', async () => {
    const h = await engine({ maxBatchSize: 4 }, 192);
    const reqs = [0, 1, 2, null].map((adapter) => ({ prompt: tokens(20), adapter, n: 90 }));
    const out = await run(h, reqs);
    for (let i = 0; i < reqs.length; i++) expect(tokensOf(out[i])).toEqual(await alone(reqs[i].prompt, reqs[i].adapter, 90));
    const s = h.core.stats();
    expect(s.preemptions).toBeGreaterThan(0);
    // Nothing was shared at first admission, so every hit is a resumption finding its own blocks.
    expect(out.map((ev) => endOf(ev).cachedTokens)).toEqual([0, 0, 0, 0]);
    expect(s.prefixCacheHitTokens).toBeGreaterThan(0);
    expect(s.kvUsedTokens).toBe(0);
  });

  it('cached blocks never shrink the batch: a pool full of them still admits requests that need all of it', async () => {
    const h = await engine({ maxBatchSize: 4 }, 256);
    // Fill the pool with cached blocks of finished requests (3 blocks each, 8 requests: more than fit).
    await run(h, Array.from({ length: 8 }, (_, i) => ({ prompt: tokens(40), adapter: i % 2, n: 10 })));
    // Each finished request returns its partial tail block as free; the rest of the pool stays cached.
    expect(h.core.stats().kvIdleBlocks).toBeGreaterThanOrEqual(256 / KV_BLOCK - 2);
    // Four requests of 64 tokens each need the whole pool at once.
    const reqs = Array.from({ length: 4 }, (_, i) => ({ prompt: tokens(30), adapter: i % 3, n: 34 }));
    const rows: number[] = [];
    const poll = setInterval(() => rows.push(h.core.stats().running), 1);
    const out = await run(h, reqs);
    clearInterval(poll);
    for (let i = 0; i < reqs.length; i++) expect(tokensOf(out[i])).toEqual(await alone(reqs[i].prompt, reqs[i].adapter, 34));
    expect(h.core.stats().preemptions).toBe(0);
    expect(Math.max(...rows)).toBe(4);
  });
});
