/**
 * DoRA adapters served end to end: uploaded through the admin API (or found in the adapter
 * directory), loaded on the loader thread against the checkpoint's weights, and answering greedy
 * completions equal to the independent reference's DoRA forward pass, alone and concurrently with
 * LoRA and base requests. A DoRA adapter in merged_adapters is refused by name; an upload with a
 * non-finite magnitude is refused by the upload.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type RunningServer } from '../../src/server/serve.js';
import { referenceGreedy, testConfig, tinyQwen } from '../helpers/server.js';
import { loadTokenizer } from '../helpers/tokenizers.js';
import { makeTinyAdapter, tempDir } from '../helpers/tiny-model.js';
import { SafetensorsFile } from '../../src/runtime/checkpoint/safetensors.js';
import { writeSafetensors } from '../../src/runtime/checkpoint/writer.js';

const ADMIN = 'dora-admin-token';
const tm = tinyQwen(1601);
const store = tempDir('loraplex-dora-');
const plain = makeTinyAdapter(tm, { seed: 1602, r: 4 }, join(store, 'plain'));
const onDisk = makeTinyAdapter(tm, { seed: 1603, r: 8, alpha: 16, useRslora: true, dora: 0.3 }, join(store, 'dora-disk'));
const uploaded = makeTinyAdapter(tm, { seed: 1604, r: 4, targets: ['q_proj', 'k_proj', 'v_proj', 'o_proj'], dora: 0.3 });
const qwen = loadTokenizer('qwen3');

let server: RunningServer;
beforeAll(async () => {
  server = await startServer(testConfig({ model: tm.dir, adapters: store, adminToken: ADMIN, port: 0, host: '127.0.0.1', servedModelName: 'tiny' }), { logger: false });
  await server.ready;
});
afterAll(async () => {
  await server?.close(0);
});

function uploadForm(name: string, dir: string): FormData {
  const f = new FormData();
  f.append('name', name);
  for (const file of ['adapter_config.json', 'adapter_model.safetensors']) f.append('file', new Blob([readFileSync(join(dir, file))]), file);
  return f;
}
const upload = (name: string, dir: string): Promise<Response> => fetch(`${server.url}/admin/adapters`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN}` }, body: uploadForm(name, dir) });

const prompt = [9707, 11, 1879, 0];
async function complete(body: Record<string, unknown>): Promise<Response> {
  return fetch(`${server.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ prompt, max_tokens: 6, temperature: 0, ...body }) });
}
async function text(body: Record<string, unknown>): Promise<string> {
  const r = await complete(body);
  expect(r.status, await r.clone().text()).toBe(200);
  return ((await r.json()) as { choices: { text: string }[] }).choices[0].text;
}

describe('DoRA adapters over HTTP', () => {
  it('an uploaded and an on-disk DoRA adapter answer as the reference DoRA forward pass, concurrently with LoRA and base requests', async () => {
    const up = await upload('dora-up', uploaded.dir);
    expect(up.status, await up.clone().text()).toBeLessThan(300);
    const cases = [
      { model: 'dora-disk', lora: onDisk.lora },
      { model: 'dora-up', lora: uploaded.lora },
      { model: 'plain', lora: plain.lora },
      { model: 'tiny', lora: null },
    ];
    const want = cases.map((c) => qwen.decode(referenceGreedy(tm, prompt, c.lora, 6)));
    const got = await Promise.all([...cases, ...cases].map((c) => text({ model: c.model })));
    expect(got).toEqual([...want, ...want]);
    // The scales matter: the same factors served as plain LoRA answer otherwise.
    const asLora = new Map([...onDisk.lora].map(([k, p]) => [k, { a: p.a, b: p.b, scale: p.scale }]));
    expect(qwen.decode(referenceGreedy(tm, prompt, asLora, 6))).not.toBe(want[0]);
  });

  it('refuses a DoRA adapter in merged_adapters and with lora_scale, naming the field', async () => {
    for (const [body, param, message] of [
      [{ model: 'tiny', merged_adapters: { ids: ['plain', 'dora-disk'], weights: [0.5, 0.5] } }, 'merged_adapters.ids', /adapter dora-disk is a DoRA adapter; merged_adapters combines LoRA adapters only/],
      [{ model: 'tiny', merged_adapters: { ids: ['plain', 'dora-disk'], weights: [0.5, 0.5], merge_strategy: 'ties', density: 0.5 } }, 'merged_adapters.ids', /dora-disk is a DoRA adapter/],
      [{ model: 'dora-disk', lora_scale: 0.5 }, 'lora_scale', /lora_scale scales LoRA adapters; dora-disk is a DoRA adapter/],
    ] as const) {
      const r = await complete(body);
      expect(r.status).toBe(422);
      const err = ((await r.json()) as { error: { message: string; param: string } }).error;
      expect(err.param).toBe(param);
      expect(err.message).toMatch(message);
    }
    // lora_scale 1 is the adapter itself.
    expect(await text({ model: 'dora-disk', lora_scale: 1 })).toBe(qwen.decode(referenceGreedy(tm, prompt, onDisk.lora, 6)));
  });

  it('refuses an upload whose magnitude is not finite', async () => {
    const bad = makeTinyAdapter(tm, { seed: 1605, r: 4, dora: true });
    const path = join(bad.dir, 'adapter_model.safetensors');
    const file = SafetensorsFile.open(path);
    const tensors = [...file.tensors].map(([name, info]) => {
      const data = file.readFloat32(name);
      if (name.endsWith('layers.0.mlp.up_proj.lora_magnitude_vector')) data[7] = Number.NaN;
      return { name, shape: info.shape, dtype: 'F32' as const, data };
    });
    file.close();
    writeSafetensors(path, tensors);
    const r = await upload('dora-bad', bad.dir);
    expect(r.status).toBe(422);
    const err = ((await r.json()) as { error: { message: string; param: string } }).error;
    expect(err.message).toMatch(/up_proj.lora_magnitude_vector holds NaN at index 7/);
  });
});
