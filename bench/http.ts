/**
 * HTTP load benchmark: a real loraplex server (in-process HTTP, engine in its worker) driven over
 * SSE by concurrent clients. For each cell — concurrency × adapter mix × warm/cold adapter cache —
 * it reports aggregate output tokens/s, requests/s, time to first token and inter-token latency
 * (p50/p99). Each token arrives as its own SSE chunk (the requests ask for logprobs, so a chunk is
 * sent per token even where the random-weight model's text is empty).
 */
import { existsSync, linkSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeRandomPeftAdapter } from '../src/adapters/random.js';
import { Checkpoint } from '../src/runtime/checkpoint/checkpoint.js';
import { resolveAllKnobs, serveConfig } from '../src/config.js';
import { startServer } from '../src/server/serve.js';
import { progressBar } from '../src/util/progress.js';
import { fmt, quantile, table, zipfPicker } from './lib.js';
import { stream } from './server-process.js';
import { prng } from '../src/util/prng.js';
import { prepareModel, type BenchContext } from './runtime.js';

export interface Cell {
  concurrency: number;
  adapters: number;
  mix: 'uniform' | 'zipf' | 'base';
  cold: boolean;
  requests: number;
  tokPerS: number;
  reqPerS: number;
  ttftP50: number;
  ttftP99: number;
  itlP50: number;
  itlP99: number;
}

const lcg = prng;

export async function httpBench(ctx: BenchContext): Promise<{ cells: Cell[]; markdown: string; svg: string }> {
  const { modelDir, name } = await prepareModel(ctx);
  const concurrencies = ctx.quick ? [1, 8] : [1, 8, 32];
  const adapterCounts = ctx.quick ? [1, 8] : [1, 8, 64];
  const newTokens = ctx.quick ? 8 : 32;
  const promptLen = 32;

  // An adapter store of 64 adapters: the factors are hard links into a pool of 8, each copy with its
  // own lora_alpha, so every adapter is a distinct version (its own digest, its own scaled weights).
  const store = join(ctx.dir, 'http-store', name);
  const pool = join(ctx.dir, 'adapters');
  const ckpt = Checkpoint.open(modelDir);
  const spec = ckpt.spec;
  ckpt.close();
  for (let i = 0; i < Math.max(...adapterCounts); i++) {
    const dir = join(store, `a${i}`);
    if (existsSync(join(dir, 'adapter_config.json'))) continue;
    const src = join(pool, `${name}-r16-${i % 8}`);
    if (!existsSync(join(src, 'adapter_model.safetensors'))) writeRandomPeftAdapter(src, spec, { rank: 16, seed: 1000 + (i % 8) });
    mkdirSync(dir, { recursive: true });
    linkSync(join(src, 'adapter_model.safetensors'), join(dir, 'adapter_model.safetensors'));
    const cfg = JSON.parse(readFileSync(join(src, 'adapter_config.json'), 'utf8')) as { lora_alpha: number };
    writeFileSync(join(dir, 'adapter_config.json'), JSON.stringify({ ...cfg, lora_alpha: cfg.lora_alpha + i / 64 }));
  }

  const config = serveConfig(
    resolveAllKnobs(
    {
      model: modelDir,
      adapters: store,
      quant: 'int4',
      cacheDir: join(ctx.dir, 'builds'),
      host: '127.0.0.1',
      port: 0,
      maxContext: 4096,
      kvCacheTokens: 32 * (promptLen + newTokens + 16) * 2,
      maxBatchSize: 32,
      maxActiveAdapters: 8,
      adapterCacheBytes: 32 * 64 * 1024 * 1024,
      maxQueuedRequests: 1000,
      logLevel: 'silent',
    },
    {},
    ),
  );
  const server = await startServer(config, { logger: false });
  await server.ready;
  const url = server.url;
  const V = spec.vocabSize;
  const rand = lcg(99);
  const cells: Cell[] = [];
  const plan: { concurrency: number; adapters: number; mix: Cell['mix']; cold: boolean }[] = [];
  for (const adapters of adapterCounts) {
    const mixes: Cell['mix'][] = adapters === 1 ? ['uniform'] : ['uniform', 'zipf'];
    for (const mix of mixes) for (const cold of [false, true]) for (const concurrency of concurrencies) plan.push({ concurrency, adapters, mix, cold });
  }
  for (const concurrency of concurrencies) plan.push({ concurrency, adapters: 0, mix: 'base', cold: false });
  const bar = progressBar('HTTP load');
  let done = 0;
  try {
    for (const p of plan) {
      const names = Array.from({ length: p.adapters }, (_, i) => `a${i}`);
      const engine = server.ctx.requireEngine();
      // Cold: nothing of these adapters in memory. Warm: all of them loaded beforehand.
      for (const n of names) {
        const rec = server.ctx.registry.get(n)!;
        if (p.cold) await engine.unload(rec.digest);
        else await engine.preload({ kind: 'single', key: rec.digest, name: n, dir: rec.dir, verify: true });
      }
      const pick = p.mix === 'zipf' ? zipfPicker(p.adapters, rand) : () => Math.floor(rand() * p.adapters);
      const requests = Math.max(8, p.concurrency * (ctx.quick ? 1 : 2));
      let next = 0;
      const ttfts: number[] = [];
      const gaps: number[] = [];
      let tokens = 0;
      const t0 = performance.now();
      const worker = async (): Promise<void> => {
        while (next < requests) {
          next++;
          const model = p.mix === 'base' ? server.ctx.baseId : names[pick()];
          const prompt = Array.from({ length: promptLen }, () => Math.floor(rand() * Math.min(V, 150000)));
          const r = await stream(url, { model, prompt, max_tokens: newTokens, temperature: 0, ignore_eos: true, stream: true, logprobs: 0 });
          ttfts.push(r.ttft);
          gaps.push(...r.gaps);
          tokens += r.tokens;
        }
      };
      await Promise.all(Array.from({ length: p.concurrency }, worker));
      const seconds = (performance.now() - t0) / 1000;
      cells.push({
        ...p,
        requests,
        tokPerS: tokens / seconds,
        reqPerS: requests / seconds,
        ttftP50: quantile(ttfts, 0.5),
        ttftP99: quantile(ttfts, 0.99),
        itlP50: quantile(gaps, 0.5),
        itlP99: quantile(gaps, 0.99),
      });
      bar(++done, plan.length, `c=${p.concurrency} ${p.adapters} adapters ${p.mix}${p.cold ? ' cold' : ''}`);
    }
  } finally {
    bar.stop();
    await server.close();
  }
  const label = (c: Cell): string => (c.mix === 'base' ? 'base model only' : `${c.adapters} adapter${c.adapters > 1 ? 's' : ''}${c.adapters > 1 ? `, ${c.mix}` : ''}`);
  const markdown = [
    `### HTTP load (${name}, int4, SSE streaming, ${promptLen}-token prompts, ${newTokens} new tokens, rank-16 adapters)`,
    '',
    table(
      ['concurrency', 'adapters', 'cache', 'tok/s', 'req/s', 'TTFT p50 / p99 (ms)', 'ITL p50 / p99 (ms)'],
      cells.map((c) => [c.concurrency, label(c), c.mix === 'base' ? '-' : c.cold ? 'cold' : 'warm', fmt(c.tokPerS, 1), fmt(c.reqPerS, 2), `${fmt(c.ttftP50, 0)} / ${fmt(c.ttftP99, 0)}`, `${fmt(c.itlP50, 0)} / ${fmt(c.itlP99, 0)}`]),
    ),
  ].join('\n');
  return { cells, markdown, svg: plot(cells, concurrencies) };
}

/** Throughput vs concurrency, one line per adapter configuration (warm cache). */
function plot(cells: Cell[], xs: number[]): string {
  const series = new Map<string, Cell[]>();
  for (const c of cells) {
    if (c.cold) continue;
    const key = c.mix === 'base' ? 'base model' : c.adapters === 1 ? '1 adapter' : `${c.adapters} adapters (${c.mix})`;
    series.set(key, [...(series.get(key) ?? []), c]);
  }
  const W = 640;
  const H = 400;
  const m = { l: 60, r: 190, t: 30, b: 50 };
  const maxY = Math.max(1, ...cells.map((c) => c.tokPerS)) * 1.1;
  const x = (v: number): number => m.l + (xs.indexOf(v) / Math.max(1, xs.length - 1)) * (W - m.l - m.r);
  const y = (v: number): number => H - m.b - (v / maxY) * (H - m.t - m.b);
  const colors = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2'];
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${m.l}" y="18" font-size="14">loraplex: output tokens/s vs concurrency (warm adapters)</text>`,
    `<line x1="${m.l}" y1="${H - m.b}" x2="${W - m.r}" y2="${H - m.b}" stroke="black"/>`,
    `<line x1="${m.l}" y1="${m.t}" x2="${m.l}" y2="${H - m.b}" stroke="black"/>`,
    `<text x="${(m.l + W - m.r) / 2}" y="${H - 12}" text-anchor="middle">concurrent clients</text>`,
    `<text x="16" y="${(m.t + H - m.b) / 2}" transform="rotate(-90 16 ${(m.t + H - m.b) / 2})" text-anchor="middle">tokens/s</text>`,
  ];
  for (const v of xs) parts.push(`<text x="${x(v)}" y="${H - m.b + 16}" text-anchor="middle">${v}</text>`);
  for (let i = 0; i <= 4; i++) {
    const v = (maxY / 4) * i;
    parts.push(`<text x="${m.l - 6}" y="${y(v) + 4}" text-anchor="end">${v.toFixed(0)}</text>`, `<line x1="${m.l}" y1="${y(v)}" x2="${W - m.r}" y2="${y(v)}" stroke="#ddd"/>`);
  }
  let k = 0;
  for (const [label, cs] of series) {
    const color = colors[k % colors.length];
    const pts = cs.sort((a, b) => a.concurrency - b.concurrency).map((c) => `${x(c.concurrency)},${y(c.tokPerS)}`);
    parts.push(`<polyline fill="none" stroke="${color}" stroke-width="2" points="${pts.join(' ')}"/>`);
    for (const p of pts) parts.push(`<circle cx="${p.split(',')[0]}" cy="${p.split(',')[1]}" r="3" fill="${color}"/>`);
    parts.push(`<rect x="${W - m.r + 12}" y="${m.t + k * 20}" width="12" height="12" fill="${color}"/>`, `<text x="${W - m.r + 30}" y="${m.t + k * 20 + 10}">${label}</text>`);
    k++;
  }
  parts.push('</svg>');
  return parts.join('\n');
}
