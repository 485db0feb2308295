/**
 * TIES / DARE / magnitude-prune combinations in `merged_adapters`, served end to end: greedy
 * completions of a ties and a magnitude_prune merge equal the independent reference forward pass
 * with the adapters merged by a reference of PEFT's add_weighted_adapter; DARE merges are
 * deterministic for a recipe and reduce to their TIES / pruning counterparts at density 1;
 * recipes that cannot be merged are refused by name.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type RunningServer } from '../../src/server/serve.js';
import { referenceMergedLora } from '../helpers/peft-merge-reference.js';
import { referenceGreedy, testConfig, tinyQwen } from '../helpers/server.js';
import { loadTokenizer } from '../helpers/tokenizers.js';
import { makeTinyAdapter, tempDir } from '../helpers/tiny-model.js';

const tm = tinyQwen(1501);
const store = tempDir('loraplex-merges-');
const alpha = makeTinyAdapter(tm, { seed: 1502, r: 4, alpha: 8 }, join(store, 'alpha'));
const gamma = makeTinyAdapter(tm, { seed: 1503, r: 4, alpha: 4, targets: ['q_proj', 'v_proj', 'down_proj'] }, join(store, 'gamma'));
makeTinyAdapter(tm, { seed: 1504, r: 8 }, join(store, 'wide'));
const qwen = loadTokenizer('qwen3');

let server: RunningServer;
beforeAll(async () => {
  server = await startServer(testConfig({ model: tm.dir, adapters: store, port: 0, host: '127.0.0.1', servedModelName: 'tiny' }), { logger: false });
  await server.ready;
});
afterAll(async () => {
  await server?.close(0);
});

const prompt = [9707, 11, 1879];
type Out = { choices: { text: string; logprobs: { token_logprobs: number[] } }[] };
async function complete(merged: Record<string, unknown>): Promise<Response> {
  return fetch(`${server.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'tiny', prompt, max_tokens: 4, temperature: 0, logprobs: 1, merged_adapters: merged }) });
}
async function text(merged: Record<string, unknown>): Promise<Out['choices'][0]> {
  const r = await complete(merged);
  expect(r.status, await r.clone().text()).toBe(200);
  return ((await r.json()) as Out).choices[0];
}

describe('task-arithmetic merges', () => {
  it('ties and magnitude_prune answer as the reference merge does', async () => {
    for (const [method, density, sign] of [['ties', 0.5, 'total'], ['ties', 0.3, 'frequency'], ['magnitude_prune', 0.6, undefined]] as const) {
      const lora = referenceMergedLora([{ lora: alpha.lora, weight: 0.7 }, { lora: gamma.lora, weight: 1.3 }], method, density, sign ?? 'total');
      const want = qwen.decode(referenceGreedy(tm, prompt, lora, 4));
      const got = await text({ ids: ['alpha', 'gamma'], weights: [0.7, 1.3], merge_strategy: method, density, ...(sign ? { majority_sign_method: sign } : {}) });
      expect(got.text, `${method} ${density}`).toBe(want);
      // (The merge matters: its logprobs are not the linear combination's.)
      const linear = await text({ ids: ['alpha', 'gamma'], weights: [0.7, 1.3] });
      expect(Math.max(...got.logprobs.token_logprobs.map((lp, i) => Math.abs(lp - linear.logprobs.token_logprobs[i])))).toBeGreaterThan(1e-3);
    }
  });

  it('dare merges are deterministic for a recipe and equal their counterparts at density 1', async () => {
    const recipe = { ids: ['alpha', 'gamma'], weights: [0.7, 1.3], density: 0.5 };
    const once = await text({ ...recipe, merge_strategy: 'dare_ties' });
    expect(await text({ ...recipe, merge_strategy: 'dare_ties' })).toEqual(once);
    expect(await text({ ...recipe, ids: ['gamma', 'alpha'], weights: [1.3, 0.7], merge_strategy: 'dare_ties' })).toEqual(once);
    const full = { ...recipe, density: 1 };
    expect(await text({ ...full, merge_strategy: 'dare_ties' })).toEqual(await text({ ...full, merge_strategy: 'ties' }));
    expect(await text({ ...full, merge_strategy: 'dare_linear' })).toEqual(await text({ ...full, merge_strategy: 'magnitude_prune' }));
  });

  it('refuses what cannot be merged, naming the field', async () => {
    for (const [merged, status, param] of [
      [{ ids: ['alpha', 'gamma'], weights: [0.7, -1], merge_strategy: 'ties', density: 0.5 }, 400, 'merged_adapters.weights'],
      [{ ids: ['alpha', 'gamma'], weights: [1, 1], merge_strategy: 'ties', density: 1.5 }, 400, 'merged_adapters.density'],
      [{ ids: ['alpha', 'gamma'], weights: [1, 1], merge_strategy: 'dare_linear', density: 0.5, majority_sign_method: 'total' }, 400, 'merged_adapters.majority_sign_method'],
      [{ ids: ['alpha', 'gamma'], weights: [1, 1], merge_strategy: 'linear', density: 0.5 }, 400, 'merged_adapters.density'],
    ] as const) {
      const r = await complete(merged);
      expect(r.status).toBe(status);
      expect(((await r.json()) as { error: { param: string } }).error.param).toBe(param);
    }
    // Different ranks at a module they share: refused when the merge is built.
    const ranks = await complete({ ids: ['alpha', 'wide'], weights: [1, 1], merge_strategy: 'ties', density: 0.5 });
    expect(ranks.status).toBeGreaterThanOrEqual(400);
    expect(ranks.status).toBeLessThan(500);
    expect(((await ranks.json()) as { error: { message: string } }).error.message).toMatch(/share the rank/);
  });
});
