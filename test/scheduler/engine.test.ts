/** The engine in its worker thread: end to end through messages, a free main loop, shutdown. */
import { describe, expect, it } from 'vitest';
import { GREEDY } from '../../src/runtime/sampling.js';
import { Engine } from '../../src/scheduler/engine.js';
import type { EngineEvent, EngineRequest } from '../../src/scheduler/request.js';
import { copyTokenizer, loadTokenizer } from '../helpers/tokenizers.js';
import { makeTinyAdapter, makeTinyModel, tempDir } from '../helpers/tiny-model.js';

const vocabSize = 151669;
const tm = makeTinyModel({ flavour: 'qwen2', seed: 91, vocabSize, hiddenSize: 64, numHeads: 4, numKvHeads: 2, intermediateSize: 128, maxPositionEmbeddings: 2048 });
copyTokenizer('qwen3', tm.dir);
const adapter = makeTinyAdapter(tm, { seed: 92 });

function collect(engine: Engine, req: Omit<EngineRequest, 'id'>): Promise<EngineEvent[]> {
  return new Promise((resolve) => {
    const events: EngineEvent[] = [];
    engine.submit(req, (e) => {
      events.push(e);
      if (e.t === 'end' || e.t === 'error') resolve(events);
    });
  });
}

const base: Omit<EngineRequest, 'id' | 'prompt'> = { adapter: null, sampling: GREEDY, maxNewTokens: 8, stopStrings: [], stopTokenIds: [], ignoreEos: true, timeoutMs: 60000 };

describe('Engine (worker thread)', () => {
  it('serves text and chat prompts with an adapter, keeps the main loop free, and shuts down gracefully', async () => {
    const progress: number[] = [];
    const engine = await Engine.start(
      {
        settings: {
          model: tm.dir, quant: 'fp32', activations: 'fp32', device: 'cpu', allowCpuFallback: false, threads: 1, cacheDir: tempDir(),
          maxContext: 0, kvCacheTokens: 4096, maxLoraRank: 64, maxActiveAdapters: 2,
        },
        engine: { maxBatchSize: 4, maxBatchPrefillTokens: 512, maxQueuedRequests: 16, adapterCycleMs: 1000, adapterCacheBytes: 1 << 28 },
        strictBase: null,
      },
      { onProgress: (d) => progress.push(d) },
    );
    expect(progress.length).toBeGreaterThan(0);
    expect(engine.info).toMatchObject({ device: 'cpu', vocabSize, hasTokenizer: true, hasChatTemplate: true, maxPositions: 2048 });

    const qwen = loadTokenizer('qwen3');
    const text = await collect(engine, { ...base, prompt: { kind: 'text', text: 'Hello, world' }, adapter: { kind: 'single', key: '1@1', name: 'a', dir: adapter.dir } });
    expect(text[0]).toMatchObject({ t: 'start', promptTokens: qwen.encode('Hello, world').length });
    const tokens = text.filter((e) => e.t === 'token') as Extract<EngineEvent, { t: 'token' }>[];
    expect(tokens).toHaveLength(8);
    expect(tokens.map((e) => e.text).join('')).toBe(qwen.decode(tokens.map((e) => e.token)));

    const chat = await collect(engine, { ...base, prompt: { kind: 'chat', messages: [{ role: 'user', content: 'Hi' }], tools: null, addGenerationPrompt: true } });
    expect(chat[0]).toMatchObject({ t: 'start', promptTokens: qwen.encode('<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n', false).length });

    // A long generation: the main thread's timers keep firing while the worker computes.
    let ticks = 0;
    const timer = setInterval(() => ticks++, 5);
    const started = Date.now();
    const long = await collect(engine, { ...base, prompt: { kind: 'ids', ids: [1, 2, 3] }, maxNewTokens: 600 });
    const elapsed = Date.now() - started;
    clearInterval(timer);
    expect(long.at(-1)).toMatchObject({ t: 'end', completionTokens: 600 });
    expect(ticks).toBeGreaterThan(Math.min(10, elapsed / 50));

    const stats = await engine.stats();
    expect(stats).toMatchObject({ waiting: 0, running: 0, maxLora: 2 });
    expect(stats.cache.loads).toBe(1);

    // Graceful shutdown: a request in flight finishes; new ones are refused.
    const inflight = collect(engine, { ...base, prompt: { kind: 'ids', ids: [4, 5] }, maxNewTokens: 30 });
    const closing = engine.close(10000);
    const refused = await collect(engine, { ...base, prompt: { kind: 'ids', ids: [4] } });
    expect(refused.at(-1)).toMatchObject({ t: 'error', code: 'shutting_down', status: 503 });
    expect((await inflight).at(-1)).toMatchObject({ t: 'end', completionTokens: 30 });
    await closing;
  });

  it('fails to start with a clear error for a bad model directory', async () => {
    await expect(
      Engine.start({
        settings: {
          model: tempDir(), quant: 'fp32', activations: 'fp32', device: 'cpu', allowCpuFallback: false, threads: 1, cacheDir: tempDir(),
          maxContext: 0, kvCacheTokens: 256, maxLoraRank: 8, maxActiveAdapters: 1,
        },
        engine: { maxBatchSize: 1, maxBatchPrefillTokens: 64, maxQueuedRequests: 1, adapterCycleMs: 1000, adapterCacheBytes: 1 << 20 },
        strictBase: null,
      }),
    ).rejects.toThrow(/no config.json/);
  });
});
