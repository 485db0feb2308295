/**
 * No cross-tenant oracle by default. A prefix-cache hit shows in `cached_tokens` (and in the time
 * to the first token), so with API keys each key gets a cache of its own unless the operator
 * shares it (--prefix-cache-scope global); `cache_salt` partitions further. /metrics, which shows
 * every tenant's hits and adapters, takes a key once keys are set, and its label sets stay bounded.
 * Real servers (engine worker, tiny model, Qwen3's real tokenizer).
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type RunningServer } from '../../src/server/serve.js';
import { postJson, testConfig, tinyQwen } from '../helpers/server.js';
import { makeTinyAdapter, tempDir } from '../helpers/tiny-model.js';

const tm = tinyQwen(1201, 512);
const storeDir = tempDir('loraplex-cache-iso-');
for (const [name, seed] of [['alpha', 1202], ['beta', 1203], ['gamma', 1204]] as const) makeTinyAdapter(tm, { seed, r: 2 }, join(storeDir, name));

const KEY_A = 'tenant-a-key';
const KEY_B = 'tenant-b-key';
const METRICS_KEY = 'scraper-key';

/** Keys, each its own prefix cache (the default). */
let keyed: RunningServer;
/** Keys sharing one prefix cache, a metrics key of its own, at most 2 adapter labels. */
let shared: RunningServer;

beforeAll(async () => {
  const common = { model: tm.dir, adapters: storeDir, port: 0, host: '127.0.0.1', servedModelName: 'tiny', apiKeys: `${KEY_A},${KEY_B}` };
  keyed = await startServer(testConfig(common), { logger: false });
  shared = await startServer(testConfig({ ...common, prefixCacheScope: 'global', metricsKey: METRICS_KEY, metricsAdapterLabels: 2 }), { logger: false });
  await Promise.all([keyed.ready, shared.ready]);
});
afterAll(async () => {
  await Promise.all([keyed?.close(0), shared?.close(0)]);
});

/** A prompt of several KV blocks that no other test sends. */
const secretPrompt = (tag: string): string => `Internal memo ${tag}. The vault PIN for the north office is 4711; do not share it. `.repeat(6);

interface Usage {
  prompt_tokens: number;
  prompt_tokens_details: { cached_tokens: number };
}

async function complete(s: RunningServer, key: string, body: Record<string, unknown>): Promise<Usage> {
  const r = await postJson(s.url, '/v1/completions', { model: 'tiny', max_tokens: 1, temperature: 0, ...body }, { authorization: `Bearer ${key}` });
  const json = (await r.json()) as { usage: Usage };
  expect(r.status, JSON.stringify(json)).toBe(200);
  return json.usage;
}
const cached = async (s: RunningServer, key: string, body: Record<string, unknown>): Promise<number> => (await complete(s, key, body)).prompt_tokens_details.cached_tokens;
const hitTokens = async (s: RunningServer): Promise<number> => (await s.ctx.engine!.stats()).prefixCacheHitTokens;

describe('the prefix cache is per API key by default', () => {
  it("key B's repeat of key A's prompt computes it afresh, on the base model and on an adapter; A's own repeat hits; --prefix-cache-scope global shares", async () => {
    for (const model of ['tiny', 'alpha']) {
      const prompt = secretPrompt(`scope-${model}`);
      expect(await cached(keyed, KEY_A, { model, prompt })).toBe(0);
      const before = await hitTokens(keyed);
      expect(await cached(keyed, KEY_B, { model, prompt }), model).toBe(0);
      // Not a reporting difference: the engine found nothing for B.
      expect(await hitTokens(keyed)).toBe(before);
      const own = await complete(keyed, KEY_A, { model, prompt });
      expect(own.prompt_tokens).toBeGreaterThan(64);
      expect(own.prompt_tokens_details.cached_tokens, model).toBe(Math.floor((own.prompt_tokens - 1) / 16) * 16);
      // B's own copy is cached for B.
      expect(await cached(keyed, KEY_B, { model, prompt })).toBeGreaterThan(0);
    }
    // The operator's choice: all keys share.
    const prompt = secretPrompt('scope-global');
    expect(await cached(shared, KEY_A, { prompt })).toBe(0);
    expect(await cached(shared, KEY_B, { prompt })).toBeGreaterThan(0);
  });
});

describe('cache_salt', () => {
  it('only requests with the same salt share cached prefixes, on every prompt route', async () => {
    const prompt = secretPrompt('salted');
    expect(await cached(keyed, KEY_A, { prompt, cache_salt: 'salt-one' })).toBe(0);
    expect(await cached(keyed, KEY_A, { prompt, cache_salt: 'salt-two' })).toBe(0);
    expect(await cached(keyed, KEY_A, { prompt })).toBe(0);
    expect(await cached(keyed, KEY_A, { prompt, cache_salt: 'salt-one' })).toBeGreaterThan(0);
    // Salted requests of another key stay apart even with the same salt; under the global scope the salt alone decides.
    expect(await cached(keyed, KEY_B, { prompt, cache_salt: 'salt-one' })).toBe(0);
    expect(await cached(shared, KEY_A, { prompt, cache_salt: 'salt-one' })).toBe(0);
    expect(await cached(shared, KEY_B, { prompt, cache_salt: 'salt-one' })).toBeGreaterThan(0);
    expect(await cached(shared, KEY_B, { prompt, cache_salt: 'salt-three' })).toBe(0);
    // Chat, Responses and /generate take it too (the engine's hit counter shows it for /generate, which reports no usage).
    const auth = { authorization: `Bearer ${KEY_A}` };
    const messages = [{ role: 'user', content: secretPrompt('salted-chat') }];
    const chat = async (salt: string): Promise<number> => {
      const r = await postJson(keyed.url, '/v1/chat/completions', { model: 'tiny', messages, max_tokens: 1, cache_salt: salt }, auth);
      return ((await r.json()) as { usage: Usage }).usage.prompt_tokens_details.cached_tokens;
    };
    await chat('x');
    expect(await chat('y')).toBe(0);
    expect(await chat('x')).toBeGreaterThan(0);
    const responses = async (salt: string): Promise<number> => {
      const r = await postJson(keyed.url, '/v1/responses', { model: 'tiny', input: secretPrompt('salted-responses'), max_output_tokens: 1, cache_salt: salt }, auth);
      return ((await r.json()) as { usage: { input_tokens_details: { cached_tokens: number } } }).usage.input_tokens_details.cached_tokens;
    };
    await responses('x');
    expect(await responses('y')).toBe(0);
    expect(await responses('x')).toBeGreaterThan(0);
    const generate = async (salt: string): Promise<number> => {
      const before = await hitTokens(keyed);
      const r = await postJson(keyed.url, '/generate', { inputs: secretPrompt('salted-generate'), parameters: { max_new_tokens: 1, cache_salt: salt } }, auth);
      expect(r.status).toBe(200);
      return (await hitTokens(keyed)) - before;
    };
    await generate('x');
    expect(await generate('y')).toBe(0);
    expect(await generate('x')).toBeGreaterThan(0);
  });

  it('a salt that is not a string, empty or over 256 characters is refused naming cache_salt', async () => {
    const auth = { authorization: `Bearer ${KEY_A}` };
    for (const salt of [42, '', 's'.repeat(257)]) {
      const r = await postJson(keyed.url, '/v1/completions', { model: 'tiny', prompt: 'hi', max_tokens: 1, cache_salt: salt }, auth);
      expect(r.status).toBe(400);
      expect(((await r.json()) as { error: { param: string } }).error.param).toBe('cache_salt');
    }
    const tgi = await postJson(keyed.url, '/generate', { inputs: 'hi', parameters: { max_new_tokens: 1, cache_salt: 's'.repeat(257) } }, auth);
    expect(tgi.status).toBe(422);
    expect(((await tgi.json()) as { error: string }).error).toMatch(/parameters\.cache_salt/);
    expect(await cached(keyed, KEY_A, { prompt: 'hi', cache_salt: 's'.repeat(256) })).toBe(0);
  });
});

describe('/metrics', () => {
  const scrape = (s: RunningServer, key?: string): Promise<Response> => fetch(`${s.url}/metrics`, key ? { headers: { authorization: `Bearer ${key}` } } : {});

  it('takes an API key when keys are set, or only --metrics-key when that is set', async () => {
    const open = await scrape(keyed);
    expect(open.status).toBe(401);
    expect(((await open.json()) as { error: { code: string } }).error.code).toBe('invalid_api_key');
    expect((await scrape(keyed, 'wrong')).status).toBe(401);
    const withKey = await scrape(keyed, KEY_B);
    expect(withKey.status).toBe(200);
    expect(await withKey.text()).toMatch(/^loraplex_prefix_cache_hits_total \d+/m);
    expect((await scrape(shared)).status).toBe(401);
    expect((await scrape(shared, KEY_A)).status).toBe(401);
    expect((await scrape(shared, METRICS_KEY)).status).toBe(200);
  });

  it('every ordering of a merge is one adapter label; adapters beyond the cap count as _other', async () => {
    // Request series (residency says where adapters sit now, so its series come and go).
    const adapterSeries = async (): Promise<string[]> =>
      (await (await scrape(shared, METRICS_KEY)).text()).split('\n').filter((l) => /^loraplex_\w+\{.*adapter="/.test(l) && !l.startsWith('loraplex_adapter_residency'));
    /** Adapter label values of the request counter (besides the base model's). */
    const adapterLabels = async (): Promise<string[]> => {
      const labels = (await adapterSeries()).map((l) => /^loraplex_requests_total\{.*adapter="([^"]*)"/.exec(l)?.[1]);
      return [...new Set(labels.filter((l): l is string => l !== undefined && l !== 'base'))].sort();
    };
    const series = async (): Promise<number> => (await adapterSeries()).length;
    const ids = ['alpha', 'beta', 'gamma'];
    const weights: Record<string, number> = { alpha: 0.5, beta: 0.3, gamma: 0.2 };
    const merge = async (order: string[]): Promise<void> => {
      await complete(shared, KEY_A, { prompt: 'hi', merged_adapters: { ids: order, weights: order.map((id) => weights[id]) } });
    };
    await merge(ids);
    const lines = await series();
    for (const order of [['alpha', 'gamma', 'beta'], ['beta', 'alpha', 'gamma'], ['beta', 'gamma', 'alpha'], ['gamma', 'alpha', 'beta'], ['gamma', 'beta', 'alpha']]) await merge(order);
    expect(await series()).toBe(lines);
    expect(await adapterLabels()).toEqual(['alpha+beta+gamma']);
    for (const model of ['alpha', 'beta', 'gamma', 'tiny']) await complete(shared, KEY_A, { model, prompt: 'hi' });
    expect(await adapterLabels()).toEqual(['_other', 'alpha', 'alpha+beta+gamma']);
  });
});
