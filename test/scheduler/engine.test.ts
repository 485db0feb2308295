/** The engine in its worker thread: end to end through messages, a free main loop, shutdown. */
import { describe, expect, it } from 'vitest';
import { GREEDY } from '../../src/runtime/sampling.js';
import { Engine } from '../../src/scheduler/engine.js';
import type { EngineEvent, ValidRequest } from '../../src/scheduler/request.js';
import { copyTokenizer, loadTokenizer } from '../helpers/tokenizers.js';
import { makeTinyAdapter, makeTinyModel, tempDir } from '../helpers/tiny-model.js';

const vocabSize = 151669;
const tm = makeTinyModel({ flavour: 'qwen2', seed: 91, vocabSize, hiddenSize: 64, numHeads: 4, numKvHeads: 2, intermediateSize: 128, maxPositionEmbeddings: 2048 });
copyTokenizer('qwen3', tm.dir);
const adapter = makeTinyAdapter(tm, { seed: 92 });

function collect(engine: Engine, req: Omit<ValidRequest, 'id'>): Promise<EngineEvent[]> {
  return new Promise((resolve) => {
    const events: EngineEvent[] = [];
    engine.submit(req, (e) => {
      events.push(e);
      if (e.t === 'end' || e.t === 'error') resolve(events);
    });
  });
}

const request = (ids: number[], maxNewTokens = 8, adapter: ValidRequest['adapter'] = null): Omit<ValidRequest, 'id'> => ({
  promptIds: Int32Array.from(ids),
  adapter,
  sampling: GREEDY,
  stop: { maxNewTokens, stopStrings: [], stopTokenIds: [], ignoreEos: true, minTokens: 0 }, promptLogprobs: null,
  timeoutMs: 60000,
  grammar: null,
  cachePartition: '',
});

describe('Engine (worker thread)', () => {
  it('serves token-id prompts with an adapter, streams text, keeps the main loop free, and shuts down gracefully', async () => {
    const progress: number[] = [];
    const engine = await Engine.start(
      {
        settings: {
          model: tm.dir, quant: 'fp32', activations: 'fp32', device: 'cpu', allowCpuFallback: false, threads: 1, cacheDir: tempDir(),
          maxContext: 0, kvCacheTokens: 4096, maxLoraRank: 64, maxActiveAdapters: 2,
        },
        engine: { maxBatchSize: 4, maxBatchPrefillTokens: 512, maxQueuedRequests: 16, adapterCycleMs: 1000, adapterCacheBytes: 1 << 28, prefixCache: true },
        strictBase: null,
      },
      { onProgress: (d) => progress.push(d) },
    );
    expect(progress.length).toBeGreaterThan(0);
    expect(engine.info).toMatchObject({ device: 'cpu', vocabSize, hasTokenizer: true, hasChatTemplate: true, maxPositions: 2048, slotDtype: 'float32' });

    const qwen = loadTokenizer('qwen3');
    const prompt = qwen.encode('Hello, world');
    const text = await collect(engine, request(prompt, 8, { kind: 'single', key: '1@1', name: 'a', dir: adapter.dir }));
    expect(text[0]).toEqual({ t: 'running', id: expect.any(Number) });
    const tokens = text.filter((e) => e.t === 'token') as Extract<EngineEvent, { t: 'token' }>[];
    expect(tokens).toHaveLength(8);
    expect(tokens.map((e) => e.text).join('')).toBe(qwen.decode(tokens.map((e) => e.token)));
    expect(text.at(-1)).toMatchObject({ t: 'end', promptTokens: prompt.length, completionTokens: 8 });

    // A long generation, with its tokens streamed as they come (one message per step).
    const long = await collect(engine, request([1, 2, 3], 600));
    expect(long.at(-1)).toMatchObject({ t: 'end', completionTokens: 600 });
    expect(long.filter((e) => e.t === 'token')).toHaveLength(600);

    const stats = await engine.stats();
    expect(stats).toMatchObject({ waiting: 0, running: 0, maxLora: 2 });
    expect(stats.cache.loads).toBe(1);

    // Graceful shutdown: a request in flight finishes; new ones are refused at once.
    const inflight = collect(engine, request([4, 5], 30));
    const closing = engine.close(10000);
    expect(() => engine.submit(request([4]), () => {})).toThrow(expect.objectContaining({ code: 'shutting_down' }));
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
        engine: { maxBatchSize: 1, maxBatchPrefillTokens: 64, maxQueuedRequests: 1, adapterCycleMs: 1000, adapterCacheBytes: 1 << 20, prefixCache: true },
        strictBase: null,
      }),
    ).rejects.toThrow(/no config.json/);
  });
});
