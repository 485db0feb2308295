/**
 * Adapter identity is content: two names with the same files share one load, and a replaced adapter
 * can never be served from the other version — not even to requests that were queued for the old
 * version while its weights were evicted from the host cache.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type RunningServer } from '../../src/server/serve.js';
import { ADMIN, postJson, referenceGreedy, testConfig, tinyQwen } from '../helpers/server.js';
import { loadTokenizer } from '../helpers/tokenizers.js';
import { makeTinyAdapter, tempDir } from '../helpers/tiny-model.js';

const tm = tinyQwen(501);
const qwen = loadTokenizer('qwen3');
const v1 = makeTinyAdapter(tm, { seed: 502, r: 8 });
const v2 = makeTinyAdapter(tm, { seed: 503, r: 8 });
const other = makeTinyAdapter(tm, { seed: 504, r: 8 });

let server: RunningServer;
beforeAll(async () => {
  // One batch row, and a host cache that holds one rank-8 adapter (64 KiB): requests queue, and
  // every other adapter evicts the one before.
  server = await startServer(testConfig({ model: tm.dir, adapters: tempDir('loraplex-id-'), adminToken: ADMIN, port: 0, host: '127.0.0.1', servedModelName: 'tiny', maxBatchSize: 1, adapterCacheBytes: 70_000 }), {
    logger: false,
  });
  await server.ready;
});
afterAll(async () => {
  await server?.close(0);
});

function form(name: string | null, dir: string): FormData {
  const f = new FormData();
  if (name) f.append('name', name);
  for (const file of ['adapter_config.json', 'adapter_model.safetensors']) f.append('file', new Blob([readFileSync(join(dir, file))]), file);
  return f;
}
const admin = (path: string, init: RequestInit) => fetch(`${server.url}${path}`, { ...init, headers: { authorization: `Bearer ${ADMIN}` } });
const text = async (model: string, prompt: number[]) => {
  const r = await postJson(server.url, '/v1/completions', { model, prompt, max_tokens: 5, temperature: 0, ignore_eos: true });
  expect(r.status).toBe(200);
  return ((await r.json()) as { choices: { text: string }[] }).choices[0].text;
};

describe('adapter identity', () => {
  it('two names with the same files are one version and share one load', async () => {
    const a = (await (await admin('/admin/adapters', { method: 'POST', body: form('same-a', other.dir) })).json()) as { digest: string };
    const b = (await (await admin('/admin/adapters', { method: 'POST', body: form('same-b', other.dir) })).json()) as { digest: string };
    expect(a.digest).toBe(b.digest);
    const loads = (await server.ctx.engine!.stats()).cache.loads;
    expect(await text('same-a', [1, 2, 3])).toBe(await text('same-b', [1, 2, 3]));
    expect((await server.ctx.engine!.stats()).cache.loads - loads).toBe(1);
  });

  it('requests queued for the old version get the old weights, even when they were evicted and the name replaced', async () => {
    expect((await admin('/admin/adapters', { method: 'POST', body: form('x', v1.dir) })).status).toBe(201);
    const prompts = Array.from({ length: 6 }, (_, i) => [100 + i, 200, 300]);
    // Six requests for x queue behind one row, interleaved with requests that evict x's weights...
    const queued = prompts.map((p, i) => Promise.all([text('x', p), text(i % 2 ? 'same-a' : 'tiny', p)]));
    // ...and x is replaced while they wait.
    const put = await admin('/admin/adapters/x', { method: 'PUT', body: form(null, v2.dir) });
    expect(put.status).toBe(200);
    const results = await Promise.all(queued);
    prompts.forEach((p, i) => expect(results[i][0], `queued request ${i}`).toBe(qwen.decode(referenceGreedy(tm, p, v1.lora, 5))));
    expect(await text('x', prompts[0])).toBe(qwen.decode(referenceGreedy(tm, prompts[0], v2.lora, 5)));
    expect((await server.ctx.engine!.stats()).cache.evictions).toBeGreaterThan(0);
  });
});

describe('adapter names', () => {
  it('the longest valid names (128 characters, with an org) can be uploaded, inspected and deleted; 129 is a 400', async () => {
    for (const name of [`n${'a'.repeat(127)}`, `org/${'b'.repeat(124)}`]) {
      expect(name.length).toBe(128);
      expect((await admin('/admin/adapters', { method: 'POST', body: form(name, v1.dir) })).status).toBe(201);
      const got = await admin(`/admin/adapters/${name}`, { method: 'GET' });
      expect(got.status).toBe(200);
      expect((await admin(`/admin/adapters/${name}`, { method: 'DELETE' })).status).toBe(202);
    }
    const long = await admin(`/admin/adapters/${'c'.repeat(129)}`, { method: 'GET' });
    expect(long.status).toBe(400);
    expect(((await long.json()) as { error: { param: string } }).error.param).toBe('name');
  });
});
