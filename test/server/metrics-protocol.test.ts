/**
 * The model-server metrics protocol the Gateway API inference extension's endpoint picker scrapes,
 * read with a real Prometheus text-format parser from a real server while requests for two
 * adapters run and wait (one adapter slot, so the second adapter's request waits): queue and
 * running gauges, KV usage as a fraction, the LoRA info gauge (value = the scrape's unix time,
 * labels max_lora / running_lora_adapters / waiting_lora_adapters), the cache-config info gauge,
 * adapter residency, vLLM's names only with --metrics-vllm-names, and the keyless --metrics-port
 * listener beside a main port that wants a key.
 */
import { join } from 'node:path';
import parsePrometheusTextFormat, { type PrometheusFamily } from 'parse-prometheus-text-format';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type RunningServer } from '../../src/server/serve.js';
import { LORAPLEX_PROTOCOL_NAMES, VLLM_PROTOCOL_NAMES, type ProtocolNames } from '../../src/server/metrics-protocol.js';
import { testConfig, tinyQwen, until } from '../helpers/server.js';
import { makeTinyAdapter, tempDir } from '../helpers/tiny-model.js';

const KEY = 'metrics-protocol-key';
const KV_TOKENS = 16384;
const tm = tinyQwen(301, 4096);
const storeDir = tempDir('loraplex-store-');
makeTinyAdapter(tm, { seed: 302 }, join(storeDir, 'alpha'));
makeTinyAdapter(tm, { seed: 303 }, join(storeDir, 'beta'));

let server: RunningServer;

beforeAll(async () => {
  server = await startServer(
    testConfig({
      model: tm.dir,
      adapters: storeDir,
      port: 0,
      host: '127.0.0.1',
      servedModelName: 'tiny',
      apiKeys: KEY,
      metricsPort: 0,
      metricsVllmNames: true,
      maxActiveAdapters: 1,
      maxBatchSize: 4,
      kvCacheTokens: KV_TOKENS,
    }),
    { logger: false },
  );
  await server.ready;
}, 600_000);
afterAll(async () => {
  await server?.close(0);
});

type Families = Map<string, PrometheusFamily>;

async function scrape(url: string, key?: string): Promise<Families> {
  const res = await fetch(`${url}/metrics`, key ? { headers: { authorization: `Bearer ${key}` } } : {});
  expect(res.status).toBe(200);
  return new Map(parsePrometheusTextFormat(await res.text()).map((f) => [f.name, f]));
}

/** The one sample of a gauge without labels. */
function gauge(families: Families, name: string): number {
  const f = families.get(name);
  expect(f, name).toBeDefined();
  expect(f!.type).toBe('GAUGE');
  expect(f!.metrics).toHaveLength(1);
  return Number(f!.metrics[0].value);
}

interface LoraInfo {
  running: string[];
  waiting: string[];
  maxLora: string;
  value: number;
}

/** Checks every protocol gauge under `names` against the picker's expectations; returns the LoRA info. */
function protocol(families: Families, names: ProtocolNames, scrapedAtMs: number): LoraInfo {
  const waiting = gauge(families, names.waiting);
  const running = gauge(families, names.running);
  expect(Number.isInteger(waiting) && waiting >= 0).toBe(true);
  expect(Number.isInteger(running) && running >= 0).toBe(true);
  const kv = gauge(families, names.kvUsage);
  expect(kv).toBeGreaterThanOrEqual(0);
  expect(kv).toBeLessThanOrEqual(1);

  const lora = families.get(names.loraInfo);
  expect(lora?.type).toBe('GAUGE');
  // One series: the picker uses the one with the largest value.
  expect(lora!.metrics).toHaveLength(1);
  const { labels = {}, value } = lora!.metrics[0];
  expect(Object.keys(labels).sort()).toEqual(['max_lora', 'running_lora_adapters', 'waiting_lora_adapters']);
  // The value is the scrape's unix time in seconds (fresh: the picker treats old data as stale).
  expect(Math.abs(Number(value) - scrapedAtMs / 1000)).toBeLessThan(5);

  const cache = families.get(names.cacheInfo);
  expect(cache?.type).toBe('GAUGE');
  expect(cache!.metrics).toHaveLength(1);
  expect(cache!.metrics[0].labels).toEqual({ block_size: '16', num_gpu_blocks: String(KV_TOKENS / 16) });
  expect(Number(cache!.metrics[0].value)).toBe(1);

  const list = (s: string): string[] => (s === '' ? [] : s.split(','));
  return { running: list(labels.running_lora_adapters), waiting: list(labels.waiting_lora_adapters), maxLora: labels.max_lora, value: Number(value) };
}

/** Adapter → locations from loraplex_adapter_residency. */
function residency(families: Families): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const m of families.get('loraplex_adapter_residency')?.metrics ?? []) {
    if (Number(m.value) <= 0) continue;
    const { adapter, location } = m.labels!;
    out.set(adapter, [...(out.get(adapter) ?? []), location].sort());
  }
  return out;
}

/**
 * Starts a long streamed completion for `model` and reads it in the background until aborted
 * (without waiting for the response: its headers come with the first token, after any wait).
 */
function longStream(model: string): { abort: () => Promise<void> } {
  const ac = new AbortController();
  const reading = (async () => {
    try {
      const res = await fetch(`${server.url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}` },
        body: JSON.stringify({ model, prompt: 'Count:', max_tokens: 3000, ignore_eos: true, stream: true }),
        signal: ac.signal,
      });
      if (res.status !== 200) throw new Error(`${model}: status ${res.status}: ${await res.text()}`);
      const reader = res.body!.getReader();
      while (!(await reader.read()).done);
    } catch (err) {
      if (!ac.signal.aborted) throw err;
    }
  })();
  reading.catch(() => {});
  return {
    abort: async () => {
      ac.abort();
      await reading;
    },
  };
}

/** Scrapes the keyless metrics port until `cond` holds for the LoRA info; returns that scrape. */
async function scrapeUntil(cond: (info: LoraInfo) => boolean): Promise<{ families: Families; info: LoraInfo }> {
  let last: { families: Families; info: LoraInfo } | null = null;
  await until(async () => {
    const at = Date.now();
    const families = await scrape(server.metricsUrl);
    last = { families, info: protocol(families, LORAPLEX_PROTOCOL_NAMES, at) };
    return cond(last.info);
  }, 120_000);
  return last!;
}

describe('the endpoint picker protocol', () => {
  it('serves keyless on --metrics-port while the main port wants a key', async () => {
    expect(server.metricsUrl).not.toBe('');
    expect(server.metricsUrl).not.toBe(server.url);
    expect((await fetch(`${server.url}/metrics`)).status).toBe(401);
    await scrape(server.url, KEY);
    const health = await fetch(`${server.metricsUrl}/health`);
    expect(health.status).toBe(200);
    expect(await health.json()).toEqual({ status: 'ok' });
    // Only the ops routes: no inference on the metrics port.
    const completion = await fetch(`${server.metricsUrl}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'tiny', prompt: 'x', max_tokens: 1 }) });
    expect(completion.status).toBe(404);

    const at = Date.now();
    const idle = protocol(await scrape(server.metricsUrl), LORAPLEX_PROTOCOL_NAMES, at);
    expect(idle).toMatchObject({ running: [], waiting: [], maxLora: '1' });
  });

  it('shows a waiting adapter under waiting_lora_adapters, then under running_lora_adapters', async () => {
    const alpha = longStream('alpha');
    const first = await scrapeUntil((i) => i.running.includes('alpha'));
    expect(gauge(first.families, LORAPLEX_PROTOCOL_NAMES.running)).toBeGreaterThanOrEqual(1);
    expect(gauge(first.families, LORAPLEX_PROTOCOL_NAMES.kvUsage)).toBeGreaterThan(0);
    expect(residency(first.families).get('alpha')).toEqual(['host_cache', 'pinned', 'slot']);

    // One adapter slot: beta's request waits while alpha's runs.
    const beta = longStream('beta');
    const waiting = await scrapeUntil((i) => i.waiting.includes('beta'));
    expect(waiting.info.running).toEqual(['alpha']);
    expect(gauge(waiting.families, LORAPLEX_PROTOCOL_NAMES.waiting)).toBeGreaterThanOrEqual(1);

    // Its turn comes (alpha's time slice ends): beta runs, and alpha stays in the host cache.
    const running = await scrapeUntil((i) => i.running.includes('beta'));
    expect(running.info.running).toEqual(['beta']);
    const resident = residency(running.families);
    expect(resident.get('beta')).toEqual(['host_cache', 'pinned', 'slot']);
    expect(resident.get('alpha')).toContain('host_cache');
    expect(resident.get('alpha')).not.toContain('slot');

    // vLLM's names carry the same numbers and labels in the same scrape.
    const at = Date.now();
    const both = await scrape(server.metricsUrl);
    const own = protocol(both, LORAPLEX_PROTOCOL_NAMES, at);
    const vllm = protocol(both, VLLM_PROTOCOL_NAMES, at);
    expect(vllm).toEqual(own);
    for (const k of ['waiting', 'running', 'kvUsage'] as const) expect(gauge(both, VLLM_PROTOCOL_NAMES[k])).toBe(gauge(both, LORAPLEX_PROTOCOL_NAMES[k]));

    await alpha.abort();
    await beta.abort();
    await scrapeUntil((i) => i.running.length === 0 && i.waiting.length === 0);
  }, 600_000);

  it("exports vLLM's names only with --metrics-vllm-names, and no metrics listener without --metrics-port", async () => {
    const plain = await startServer(testConfig({ model: tm.dir, port: 0, host: '127.0.0.1', servedModelName: 'tiny', maxActiveAdapters: 3, kvCacheTokens: KV_TOKENS }), { logger: false });
    try {
      await plain.ready;
      expect(plain.metricsUrl).toBe('');
      const at = Date.now();
      const families = await scrape(plain.url);
      expect(protocol(families, LORAPLEX_PROTOCOL_NAMES, at)).toMatchObject({ running: [], waiting: [], maxLora: '3' });
      expect([...families.keys()].filter((n) => n.startsWith('vllm:'))).toEqual([]);
    } finally {
      await plain.close(0);
    }
  }, 600_000);
});
