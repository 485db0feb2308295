/** A real server (engine worker, tiny model with a real tokenizer) for HTTP tests, and helpers. */
import { resolveAllKnobs, serveConfig, type KnobKey, type ServeConfig } from '../../src/config.js';
import type { EngineStats } from '../../src/scheduler/engine-stats.js';
import type { RunningServer } from '../../src/server/serve.js';
import type { RefLora } from './model-types.js';
import { referenceLogits } from './reference.js';
import { argmax } from './runtime.js';
import { copyTokenizer } from './tokenizers.js';
import { makeTinyModel, tempDir, type TinyModel } from './tiny-model.js';

export const ADMIN = 'test-admin-token';
export const QWEN_VOCAB = 151669;

/** The full configuration with test defaults (fp32, one thread, small limits) and `overrides`. */
export function testConfig(overrides: Partial<Record<KnobKey, unknown>>): ServeConfig {
  return serveConfig(resolveAllKnobs({ quant: 'fp32', cacheDir: tempDir(), threads: 1, kvCacheTokens: 4096, maxUploadBytes: 10_000_000, ...overrides }, {}, ['model']));
}

/** A tiny Qwen2-shaped model with Qwen3's real tokenizer and chat template. */
export function tinyQwen(seed: number, maxPositionEmbeddings = 256): TinyModel {
  const tm = makeTinyModel({ flavour: 'qwen2', seed, vocabSize: QWEN_VOCAB, hiddenSize: 64, numHeads: 4, numKvHeads: 2, intermediateSize: 128, maxPositionEmbeddings });
  copyTokenizer('qwen3', tm.dir);
  return tm;
}

/** Greedy continuation by the independent reference forward pass. */
export function referenceGreedy(tm: TinyModel, prompt: number[], lora: RefLora | null, n: number): number[] {
  const toks = [...prompt];
  for (let i = 0; i < n; i++) toks.push(argmax(referenceLogits(tm.cfg, tm.weights, toks, lora).at(-1)!));
  return toks.slice(prompt.length);
}

export const postJson = (base: string, path: string, body: unknown, headers: Record<string, string> = {}): Promise<Response> =>
  fetch(`${base}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) });

/** Waits until the engine has nothing running or waiting; returns its stats. */
export async function engineIdle(server: RunningServer, ms = 120_000): Promise<EngineStats> {
  const deadline = Date.now() + ms;
  for (;;) {
    const s = await server.ctx.engine!.stats();
    if ((s.running === 0 && s.waiting === 0 && s.kvReservedTokens === 0) || Date.now() > deadline) return s;
    await new Promise((r) => setTimeout(r, 20));
  }
}

export async function until(cond: () => boolean | Promise<boolean>, ms = 120_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 10));
  }
}
