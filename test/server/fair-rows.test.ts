/**
 * Batch rows shared between API keys, over HTTP with a real server (engine worker, tiny model):
 * one key's requests with many choices cannot keep another key's small request waiting until they
 * end, and a request may not ask for more rows than --max-rows-per-request.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type RunningServer } from '../../src/server/serve.js';
import { engineIdle, postJson, testConfig, tinyQwen, until } from '../helpers/server.js';

const tm = tinyQwen(311);
const KEY_A = 'key-a-many-choices';
const KEY_B = 'key-b-one-small';

let server: RunningServer;

beforeAll(async () => {
  server = await startServer(testConfig({ model: tm.dir, port: 0, host: '127.0.0.1', servedModelName: 'tiny', apiKeys: `${KEY_A},${KEY_B}`, maxBatchSize: 4, maxRowsPerRequest: 2 }), { logger: false });
  await server.ready;
});
afterAll(async () => {
  await server?.close(0);
});

const post = (key: string, path: string, body: unknown) => postJson(server.url, path, body, { authorization: `Bearer ${key}` });

describe('fair rows', () => {
  it("another key's small request completes while one key's requests hold every row", async () => {
    const order: string[] = [];
    // Key A: two requests of n = 2 fill the 4 rows for 200 tokens each.
    const heavy = [0, 1].map(async (i) => {
      const r = await post(KEY_A, '/v1/completions', { model: 'tiny', prompt: [11, 12, 13 + i], n: 2, max_tokens: 200, ignore_eos: true, temperature: 0 });
      order.push(`a${i}`);
      return { status: r.status, body: (await r.json()) as { choices: { text: string }[]; usage: { completion_tokens: number } } };
    });
    await until(async () => (await server.ctx.engine!.stats()).running === 4);
    const small = await post(KEY_B, '/v1/completions', { model: 'tiny', prompt: [21, 22], max_tokens: 5, ignore_eos: true, temperature: 0 });
    order.push('b');
    expect(small.status).toBe(200);
    expect(((await small.json()) as { usage: { completion_tokens: number } }).usage.completion_tokens).toBe(5);
    const results = await Promise.all(heavy);
    // B finished before either of A's requests.
    expect(order).toEqual(['b', expect.stringMatching(/^a/), expect.stringMatching(/^a/)]);
    // A row of A's was preempted for B, resumed by recomputation, and ended like its twin (greedy).
    expect((await engineIdle(server)).preemptions).toBeGreaterThanOrEqual(1);
    for (const r of results) {
      expect(r.status).toBe(200);
      expect(r.body.usage.completion_tokens).toBe(400);
      expect(r.body.choices[1].text).toBe(r.body.choices[0].text);
    }
  });

  it('a request asking for more rows than --max-rows-per-request is refused, naming n or best_of', async () => {
    const refused = async (path: string, body: unknown): Promise<{ status: number; param: string | null; message: string }> => {
      const r = await post(KEY_A, path, body);
      const b = (await r.json()) as { error: { message: string; param: string | null } };
      return { status: r.status, param: b.error?.param ?? null, message: b.error?.message ?? '' };
    };
    const chat = await refused('/v1/chat/completions', { model: 'tiny', messages: [{ role: 'user', content: 'hi' }], n: 3, max_tokens: 2 });
    expect(chat).toMatchObject({ status: 400, param: 'n' });
    expect(chat.message).toContain('--max-rows-per-request');
    expect(await refused('/v1/completions', { model: 'tiny', prompt: [1, 2], best_of: 3, max_tokens: 2, temperature: 1 })).toMatchObject({ status: 400, param: 'best_of' });
    const prompts = await refused('/v1/completions', { model: 'tiny', prompt: [[1], [2]], n: 2, max_tokens: 2 });
    expect(prompts).toMatchObject({ status: 400, param: 'n' });
    expect(prompts.message).toContain('2 prompts × n=2 asks for 4 sequences');
    const tgi = await post(KEY_A, '/generate', { inputs: 'hi', parameters: { best_of: 3, do_sample: true, max_new_tokens: 2 } });
    expect(tgi.status).toBe(422); // TGI's status for invalid parameters
    expect(((await tgi.json()) as { error: string }).error).toContain('parameters.best_of=3');
    // At the cap is fine.
    expect((await post(KEY_A, '/v1/completions', { model: 'tiny', prompt: [1, 2], n: 2, max_tokens: 2 })).status).toBe(200);
  });
});
