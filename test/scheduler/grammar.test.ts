/**
 * Constrained rows in the serving loop, with the real grammar thread: a mixed batch where rows on
 * different adapters ask for different schemas, a regex, a choice or nothing, sampled at temperature
 * 1 from a random-weight model with Qwen3's real tokenizer. Each constrained answer satisfies its
 * constraint (checked by ajv / the regex), ends with finish reason "stop" when its grammar
 * completes, and every unconstrained greedy row is token for token what it is alone.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Ajv2020 } from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AdapterSpec } from '../../src/adapters/spec.js';
import type { DecoderModel } from '../../src/runtime/model.js';
import { GREEDY } from '../../src/runtime/sampling.js';
import { TextTokenizer } from '../../src/runtime/tokenizer.js';
import type { EngineConfig } from '../../src/scheduler/core.js';
import { GrammarHost } from '../../src/scheduler/grammar-host.js';
import { aloneGreedy, endOf, greedyRequest, startEngine, tokensOf, type EngineHarness } from '../helpers/engine.js';
import { loadTiny } from '../helpers/runtime.js';
import { tinyQwen } from '../helpers/server.js';
import { makeTinyAdapter } from '../helpers/tiny-model.js';

const tm = tinyQwen(401, 512);
const tok = TextTokenizer.load(tm.dir)!;
const adapters = Array.from({ length: 2 }, (_, i) => makeTinyAdapter(tm, { seed: 402 + i, r: 4 }));
const single = (i: number): Extract<AdapterSpec, { kind: 'single' }> => ({ kind: 'single', key: `g${i}@1`, name: `g${i}`, dir: adapters[i].dir });
const CONFIG: EngineConfig = { maxBatchSize: 16, maxBatchPrefillTokens: 256, maxQueuedRequests: 100, adapterCycleMs: 5, adapterCacheBytes: 1 << 30, prefixCache: true };

let model: DecoderModel;
let solo: DecoderModel;
let h: EngineHarness;
let host: GrammarHost | null = null;
beforeAll(async () => {
  model = await loadTiny(tm, {}, { adapterSlots: 2, kvCacheTokens: 8192 });
  solo = await loadTiny(tm, {}, { adapterSlots: 1 });
  h = startEngine(model, CONFIG, {
    tokenizer: tok,
    // (No per-mask limit here: the slow-mask test below needs a row whose masks are slow but allowed.)
    grammar: () => (host = new GrammarHost({ tokenizer: JSON.parse(readFileSync(join(tm.dir, 'tokenizer.json'), 'utf8')) as Record<string, unknown>, vocabSize: tm.cfg.vocabSize, stopIds: [...h.core.eosIds] }, { maskTimeoutMs: 600_000 })),
  });
}, 600_000);
afterAll(async () => {
  h?.core.stop();
  await h?.done;
  await host?.terminate();
  await model?.close();
  await solo?.close();
});

const schemaA = { type: 'object', properties: { name: { type: 'string', maxLength: 10 }, n: { type: 'integer', minimum: 0 }, ok: { type: 'boolean' } }, required: ['name', 'n', 'ok'], additionalProperties: false };
const ajv = addFormats.default(new Ajv2020());
const schemaB = { type: 'array', items: { enum: ['x', 'y', 'z'] }, minItems: 1, maxItems: 5 };
const schemaC = { anyOf: [{ type: 'null' }, { type: 'object', properties: { kind: { enum: ['a', 'b'] }, id: { type: 'string', format: 'uuid' } }, required: ['kind', 'id'], additionalProperties: false }] };

describe('constrained rows in a mixed batch', () => {
  it('every row gets what it asked for; unconstrained greedy rows are unchanged by their neighbours', async () => {
    const prompt = tok.encode('Give me the data', false);
    const free = tok.encode('Once upon a time', false);
    const sampled = { ...GREEDY, temperature: 1, seed: 5 };
    const jobs = [
      { grammar: { type: 'json_schema' as const, schema: JSON.stringify(schemaA) }, adapter: single(0), check: (t: string) => ajv.compile(schemaA)(JSON.parse(t)) },
      { grammar: { type: 'json_schema' as const, schema: JSON.stringify(schemaB) }, adapter: single(1), check: (t: string) => ajv.compile(schemaB)(JSON.parse(t)) },
      { grammar: { type: 'json_schema' as const, schema: JSON.stringify(schemaC) }, adapter: null, check: (t: string) => ajv.compile(schemaC)(JSON.parse(t)) },
      { grammar: { type: 'regex' as const, pattern: '[0-9]{4}-[0-9]{2}' }, adapter: single(0), check: (t: string) => /^[0-9]{4}-[0-9]{2}$/.test(t) },
      { grammar: { type: 'choice' as const, choices: ['alpha', 'beta', 'gamma ray'] }, adapter: single(1), check: (t: string) => ['alpha', 'beta', 'gamma ray'].includes(t) },
    ];
    await Promise.all(jobs.map((j) => h.core.compileGrammar(j.grammar)));
    let id = 1;
    const constrained: number[] = [];
    const plain: { id: number; adapter: Extract<AdapterSpec, { kind: 'single' }> | null }[] = [];
    for (let seed = 0; seed < 3; seed++) {
      for (const j of jobs) {
        constrained.push(id);
        h.core.submit(greedyRequest(id++, prompt, j.adapter, 200, { sampling: { ...sampled, seed: seed * 7 + id }, grammar: j.grammar, stop: { maxNewTokens: 200, stopStrings: [], stopTokenIds: [], ignoreEos: false, minTokens: 0 } }));
      }
      for (const adapter of [null, single(0), single(1)]) {
        plain.push({ id, adapter });
        h.core.submit(greedyRequest(id++, free, adapter, 12));
      }
    }
    await h.ended([...constrained, ...plain.map((p) => p.id)], 120_000);
    for (let k = 0; k < constrained.length; k++) {
      const events = h.events.get(constrained[k])!;
      const error = events.find((e) => e.t === 'error');
      expect(error, JSON.stringify(error)).toBeUndefined();
      const ids = tokensOf(events).filter((t) => !h.core.eosIds.has(t));
      const text = tok.decode(ids);
      expect(jobs[k % jobs.length].check(text), text).toBe(true);
      expect(endOf(events)?.finishReason).toBe('stop');
    }
    for (const p of plain) expect(tokensOf(h.events.get(p.id)!)).toEqual(await aloneGreedy(solo, free, p.adapter, 12));
  }, 600_000);

  it('a grammar the decoder refuses is an error before anything runs; other rows are unaffected', async () => {
    await expect(h.core.compileGrammar({ type: 'json_schema', schema: JSON.stringify({ type: 'integer', multipleOf: 3 }) })).rejects.toMatchObject({ code: 'invalid_grammar' });
    await expect(h.core.compileGrammar({ type: 'ebnf', grammar: 'root ::= ' })).rejects.toMatchObject({ code: 'invalid_grammar' });
    h.core.submit(greedyRequest(900, tok.encode('hello', false), null, 5));
    await h.ended([900]);
    expect(tokensOf(h.events.get(900)!)).toEqual(await aloneGreedy(solo, tok.encode('hello', false), null, 5));
  });

  it('a constrained request cancelled mid-answer frees its row and its matcher', async () => {
    const grammar = { type: 'regex' as const, pattern: '[a-z]{100}' };
    await h.core.compileGrammar(grammar);
    h.core.submit(greedyRequest(950, tok.encode('spell', false), null, 100, { grammar, stop: { maxNewTokens: 100, stopStrings: [], stopTokenIds: [], ignoreEos: false, minTokens: 0 } }));
    await new Promise((r) => setTimeout(r, 50));
    h.core.cancel(950);
    await h.ended([950]);
    expect(h.core.stats().running).toBe(0);
    expect(host!.has(950)).toBe(false);
  });

  it('a row whose masks are slow never holds back the others: they sample at once, it sits out steps until its mask is ready', async () => {
    // Each mask of this grammar costs more than the last (over a second by the 11th token).
    const growing = { type: 'ebnf' as const, grammar: 'root ::= (e)+\ne ::= e2 | e2 e2 | e2 e2 e2\ne2 ::= [a-z]* | [a-m]* [n-z]*' };
    const free = tok.encode('Once upon a time', false);
    const late = h.core.stats().grammarLateMasks;
    h.core.submit(greedyRequest(970, tok.encode('spell', false), null, 10, { grammar: growing }));
    h.core.submit(greedyRequest(971, free, single(0), 40));
    await h.ended([971]);
    // Waiting for every mask, the victim would have gone at the slow row's pace: 10 tokens each by then.
    expect(tokensOf(h.events.get(970) ?? []).length).toBeLessThan(10);
    expect(tokensOf(h.events.get(971)!)).toEqual(await aloneGreedy(solo, free, single(0), 40));
    await h.ended([970], 300_000);
    expect(h.events.get(970)!.find((e) => e.t === 'error')).toBeUndefined();
    expect(tok.decode(tokensOf(h.events.get(970)!).filter((t) => !h.core.eosIds.has(t)))).toMatch(/^[a-z]+$/);
    expect(h.core.stats().grammarLateMasks).toBeGreaterThan(late);
  }, 600_000);

  it('an engine that cannot run grammars refuses the request alone and keeps serving', async () => {
    const bare = startEngine(solo, CONFIG);
    try {
      bare.core.submit(greedyRequest(1, tok.encode('x', false), null, 4, { grammar: { type: 'json_object' } }));
      bare.core.submit(greedyRequest(2, tok.encode('hello', false), null, 5));
      await bare.ended([1, 2]);
      expect(bare.events.get(1)!.find((e) => e.t === 'error')).toMatchObject({ error: { code: 'invalid_grammar' } });
      expect(tokensOf(bare.events.get(2)!).length).toBe(5);
      expect(bare.core.stats().waiting).toBe(0);
    } finally {
      bare.core.stop();
      await bare.done;
    }
  });
});
