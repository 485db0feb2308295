/**
 * Prefix caching over HTTP: `usage.prompt_tokens_details.cached_tokens` (chat, completions, streaming,
 * Responses), the Prometheus counters, answers equal to the reference, `--no-prefix-cache`, and an
 * adapter replaced through the admin API never answered from its old blocks.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type RunningServer } from '../../src/server/serve.js';
import { ADMIN, engineIdle, referenceGreedy, testConfig, tinyQwen } from '../helpers/server.js';
import { loadTokenizer } from '../helpers/tokenizers.js';
import { makeTinyAdapter, tempDir } from '../helpers/tiny-model.js';

const tm = tinyQwen(301, 512);
const qwen = loadTokenizer('qwen3');
const storeDir = tempDir('loraplex-store-');
const first = makeTinyAdapter(tm, { seed: 302, r: 4 }, join(storeDir, 'support'));
const second = makeTinyAdapter(tm, { seed: 303, r: 4 });

const SYSTEM = 'You are the support assistant of a company that sells bicycles, spare parts and repairs. Answer politely, briefly, and only about bicycles.';
const messages = (user: string) => [
  { role: 'system' as const, content: SYSTEM },
  { role: 'user' as const, content: user },
];
const promptOf = (user: string): number[] => qwen.encode(qwen.chatTemplate!.render(messages(user), { addGenerationPrompt: true }), false);

let on: RunningServer;
let off: RunningServer;
const client = (s: RunningServer) => new OpenAI({ baseURL: `${s.url}/v1`, apiKey: 'unused' });
const counter = async (s: RunningServer, name: string): Promise<number> => {
  const text = await (await fetch(`${s.url}/metrics`)).text();
  const m = new RegExp(`^${name} (\\d+)`, 'm').exec(text);
  if (!m) throw new Error(`${name} missing from /metrics`);
  return Number(m[1]);
};

beforeAll(async () => {
  const common = { model: tm.dir, adapters: storeDir, adminToken: ADMIN, port: 0, host: '127.0.0.1', servedModelName: 'tiny' };
  on = await startServer(testConfig(common), { logger: false });
  off = await startServer(testConfig({ ...common, prefixCache: false }), { logger: false });
  await Promise.all([on.ready, off.ready]);
});
afterAll(async () => {
  await Promise.all([on?.close(), off?.close()]);
});

describe('prefix cache over HTTP', () => {
  it('a repeated system prompt is reported as cached tokens; the answer equals the reference and the cache off', async () => {
    const prompt = promptOf('My chain skips. Why?');
    expect(prompt.length).toBeGreaterThan(40);
    const req = { model: 'support', messages: messages('My chain skips. Why?'), max_tokens: 8, temperature: 0 };
    const queries0 = await counter(on, 'loraplex_prefix_cache_queries_total');
    const hits0 = await counter(on, 'loraplex_prefix_cache_hits_total');
    const cold = await client(on).chat.completions.create(req);
    const warm = await client(on).chat.completions.create({ ...req, messages: messages('Do you sell helmets?') });
    const again = await client(on).chat.completions.create(req);
    expect(cold.usage!.prompt_tokens_details!.cached_tokens).toBe(0);
    const cached = warm.usage!.prompt_tokens_details!.cached_tokens!;
    // The shared system prompt is cached in whole 16-token blocks; the different user turn is not.
    expect(cached).toBeGreaterThan(0);
    expect(cached % 16).toBe(0);
    expect(cached).toBeLessThan(promptOf('Do you sell helmets?').length);
    // The identical request reuses every full block but the one holding its last prompt token.
    expect(again.usage!.prompt_tokens_details!.cached_tokens).toBe(Math.floor((prompt.length - 1) / 16) * 16);
    const expected = qwen.decode(referenceGreedy(tm, prompt, first.lora, 8));
    expect(cold.choices[0].message.content).toBe(expected);
    expect(again.choices[0].message.content).toBe(expected);
    const plain = await client(off).chat.completions.create(req);
    expect(plain.choices[0].message.content).toBe(expected);
    const plainAgain = await client(off).chat.completions.create(req);
    expect(plainAgain.usage!.prompt_tokens_details!.cached_tokens).toBe(0);
    // Counters in tokens, as vLLM's: every prompt is a query, the cached part a hit.
    const queries = (await counter(on, 'loraplex_prefix_cache_queries_total')) - queries0;
    const hits = (await counter(on, 'loraplex_prefix_cache_hits_total')) - hits0;
    expect(queries).toBe(cold.usage!.prompt_tokens + warm.usage!.prompt_tokens + again.usage!.prompt_tokens);
    expect(hits).toBe(cached + again.usage!.prompt_tokens_details!.cached_tokens!);
    expect(await counter(on, 'loraplex_prefix_cache_blocks')).toBeGreaterThan(0);
    expect(await counter(off, 'loraplex_prefix_cache_hits_total')).toBe(0);
  });

  it('streaming usage, completions and Responses report cached tokens too', async () => {
    const user = 'Can you true a wheel?';
    await client(on).chat.completions.create({ model: 'support', messages: messages(user), max_tokens: 2 });
    const stream = await client(on).chat.completions.create({ model: 'support', messages: messages(user), max_tokens: 2, stream: true, stream_options: { include_usage: true } });
    let cached = -1;
    for await (const chunk of stream) if (chunk.usage) cached = chunk.usage.prompt_tokens_details!.cached_tokens!;
    expect(cached).toBeGreaterThan(0);
    const prompt = `${SYSTEM} ${SYSTEM}`;
    await client(on).completions.create({ model: 'support', prompt, max_tokens: 2 });
    const completion = await client(on).completions.create({ model: 'support', prompt, max_tokens: 2 });
    expect((completion.usage as unknown as { prompt_tokens_details: { cached_tokens: number } }).prompt_tokens_details.cached_tokens).toBeGreaterThan(0);
    await client(on).responses.create({ model: 'support', instructions: SYSTEM, input: user, max_output_tokens: 2 });
    const response2 = await client(on).responses.create({ model: 'support', instructions: SYSTEM, input: user, max_output_tokens: 2 });
    expect(response2.usage!.input_tokens_details.cached_tokens).toBeGreaterThan(0);
  });

  it('another adapter never gets the blocks; a replaced adapter is answered from fresh KV', async () => {
    const req = { model: 'support', messages: messages('Where is my order?'), max_tokens: 6, temperature: 0 };
    await client(on).chat.completions.create(req);
    // The base model with the same prompt: different weights, so no hit.
    const base = await client(on).chat.completions.create({ ...req, model: 'tiny' });
    expect(base.usage!.prompt_tokens_details!.cached_tokens).toBe(0);
    expect(base.choices[0].message.content).toBe(qwen.decode(referenceGreedy(tm, promptOf('Where is my order?'), null, 6)));
    // Replace the adapter's files through the admin API: the next request must not hit the old blocks.
    const form = new FormData();
    for (const f of ['adapter_config.json', 'adapter_model.safetensors']) form.append('file', new Blob([readFileSync(join(second.dir, f))]), f);
    const put = await fetch(`${on.url}/admin/adapters/support`, { method: 'PUT', headers: { authorization: `Bearer ${ADMIN}` }, body: form });
    expect(put.status).toBe(200);
    const replaced = await client(on).chat.completions.create(req);
    expect(replaced.usage!.prompt_tokens_details!.cached_tokens).toBe(0);
    expect(replaced.choices[0].message.content).toBe(qwen.decode(referenceGreedy(tm, promptOf('Where is my order?'), second.lora, 6)));
    const stats = await engineIdle(on);
    expect(stats.kvReservedTokens).toBe(0);
  });
});
