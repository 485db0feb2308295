/**
 * W8: the CPU serving workload the throughput work is measured on. A real `loraplex serve` process
 * (its own CPU and memory measured from /proc) on the Qwen2.5-0.5B-shaped model (int4, and w8a8) with 8 rank-16
 * adapters (all seven projections) picked in a zipf mix; 64 requests of 136-token prompts and 64
 * output tokens at concurrency 8, streamed over HTTP; and a prefill-heavy mix on the same adapters
 * (1,024-token prompts, 16 output tokens). Reported per workload and configuration: output and
 * prompt tokens/s, time to first token and inter-token latency (p50/p99), the average cores the
 * server used, and its peak resident memory. Configurations run one after the other on the same
 * machine. After the mix, one stream at a time: the base model, then each adapter alone, while the
 * mix's 8 adapters still sit in the slots (what a tenant alone pays for the others' residency).
 * With a baseline checkout (`--baseline DIR`), its server's default configuration runs first and the
 * default configuration here runs again last, so the two compare within one run.
 */
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { writeRandomPeftAdapter } from '../src/adapters/random.js';
import { Checkpoint } from '../src/runtime/checkpoint/checkpoint.js';
import { prng } from '../src/util/prng.js';
import { progressBar } from '../src/util/progress.js';
import { fmt, quantile, table, zipfPicker } from './lib.js';
import { prepareModel, type BenchContext } from './runtime.js';
import { cpuSeconds, rssMiB, startServer, stream } from './server-process.js';

export interface W8Cell {
  workload: string;
  config: string;
  /** Output tokens per second. */
  tokPerS: number;
  /** Prompt tokens per second (prefilled, over the same wall time). */
  promptTokPerS: number;
  ttftP50: number;
  ttftP99: number;
  itlP50: number;
  itlP99: number;
  cores: number;
  peakRssMiB: number;
}

/** Streams run alone after the mix, one configuration. */
export interface W8Alone {
  config: string;
  /** Inter-token p50 of a base-model stream (ms). */
  baseItlP50: number;
  /** Inter-token p50 of each adapter's stream, a7 first (ms). */
  adapterItlP50: number[];
  /** Slot swaps the server made in the whole configuration (`loraplex_adapter_slot_moves`). */
  slotMoves: number;
}

interface Workload {
  name: string;
  requests: number;
  promptLen: number;
  newTokens: number;
}

/** A configuration: its label, the server's extra arguments, and the checkout it runs (default: this one). */
export type W8Config = [label: string, args: string[], checkout?: string];

export async function w8Bench(ctx: BenchContext, configs?: W8Config[], baseline?: string): Promise<{ cells: W8Cell[]; alone: W8Alone[]; markdown: string }> {
  const { modelDir, name } = await prepareModel(ctx);
  const store = join(ctx.dir, 'w8-store', name);
  const ckpt = Checkpoint.open(modelDir);
  const spec = ckpt.spec;
  ckpt.close();
  for (let i = 0; i < 8; i++) {
    const dir = join(store, `a${i}`);
    if (!existsSync(join(dir, 'adapter_model.safetensors'))) {
      mkdirSync(dir, { recursive: true });
      writeRandomPeftAdapter(dir, spec, { rank: 16, seed: 2000 + i });
    }
  }
  const workloads: Workload[] = [
    { name: 'W8', requests: ctx.quick ? 16 : 64, promptLen: 136, newTokens: ctx.quick ? 16 : 64 },
    { name: 'prefill-heavy', requests: ctx.quick ? 8 : 32, promptLen: ctx.quick ? 256 : 1024, newTokens: 16 },
  ];
  const concurrency = 8;
  const base = ['--model', modelDir, '--adapters', store, '--quant', 'int4', '--cache-dir', join(ctx.dir, 'builds'), '--port', '0', '--host', '127.0.0.1', '--max-context', '4096', '--store-poll-ms', '0'];
  const plan: W8Config[] = [
    ...(configs ?? [
      ['default (int4, steps sized by time: --max-step-ms 250)', []],
      ['steps sized by tokens (--max-step-ms 0)', ['--max-step-ms', '0']],
      ['w8a8 (--quant w8a8)', ['--quant', 'w8a8']],
      ['w8a8, steps sized by tokens', ['--quant', 'w8a8', '--max-step-ms', '0']],
    ]),
  ];
  if (baseline) {
    const [label, args] = plan[0];
    plan.unshift([`baseline (${baseline}), its default`, [], baseline]);
    plan.push([`${label}, again`, args]);
  }
  const cells: W8Cell[] = [];
  const alone: W8Alone[] = [];
  const aloneTokens = ctx.quick ? 8 : 24;
  const totalRequests = plan.length * workloads.reduce((n, w) => n + w.requests, 0);
  const bar = progressBar('W8');
  let finished = 0;
  for (const [label, args, checkout] of plan) {
    const { url, child } = await startServer([...base, ...args], checkout);
    try {
      for (const w of workloads) {
        const rand = prng(8);
        const zipf = zipfPicker(8, rand);
        const pick = (): string => `a${zipf()}`;
        const bodies = Array.from({ length: w.requests }, () => ({
          model: pick(),
          prompt: Array.from({ length: w.promptLen }, () => Math.floor(rand() * Math.min(spec.vocabSize, 150000))),
          max_tokens: w.newTokens,
          temperature: 0,
          ignore_eos: true,
          stream: true,
          logprobs: 0,
        }));
        // Warm-up: every adapter loaded once.
        await Promise.all(Array.from({ length: 8 }, (_, i) => stream(url, { ...bodies[0], model: `a${i}`, max_tokens: 2 })));
        const pid = child.pid!;
        let peak = rssMiB(pid);
        const sampler = setInterval(() => (peak = Math.max(peak, rssMiB(pid))), 100);
        const cpu0 = cpuSeconds(pid);
        const t0 = performance.now();
        let next = 0;
        let tokens = 0;
        const ttfts: number[] = [];
        const gaps: number[] = [];
        await Promise.all(
          Array.from({ length: concurrency }, async () => {
            while (next < w.requests) {
              const r = await stream(url, bodies[next++]);
              tokens += r.tokens;
              ttfts.push(r.ttft);
              gaps.push(...r.gaps);
              bar(++finished, totalRequests, `${w.name}, ${label}`);
            }
          }),
        );
        const seconds = (performance.now() - t0) / 1000;
        clearInterval(sampler);
        peak = Math.max(peak, rssMiB(pid));
        cells.push({
          workload: w.name,
          config: label,
          tokPerS: tokens / seconds,
          promptTokPerS: (w.requests * w.promptLen) / seconds,
          ttftP50: quantile(ttfts, 0.5),
          ttftP99: quantile(ttfts, 0.99),
          itlP50: quantile(gaps, 0.5),
          itlP99: quantile(gaps, 0.99),
          cores: (cpuSeconds(pid) - cpu0) / seconds,
          peakRssMiB: peak,
        });
      }
      const rand = prng(9);
      // The base model's id: the one entry of /v1/models without a parent.
      const models = (await (await fetch(`${url}/v1/models`)).json()) as { data: { id: string; parent: string | null }[] };
      const baseId = models.data.find((m) => m.parent === null)?.id;
      if (!baseId) throw new Error(`${label}: /v1/models lists no base model (an entry without a parent)`);
      const lone = async (model: string): Promise<number> => {
        const prompt = Array.from({ length: 136 }, () => Math.floor(rand() * Math.min(spec.vocabSize, 150000)));
        const r = await stream(url, { model, prompt, max_tokens: aloneTokens, temperature: 0, ignore_eos: true, stream: true, logprobs: 0 });
        return quantile(r.gaps, 0.5);
      };
      const baseItlP50 = await lone(baseId);
      const adapterItlP50: number[] = [];
      for (let i = 7; i >= 0; i--) adapterItlP50.push(await lone(`a${i}`));
      const metrics = await (await fetch(`${url}/metrics`)).text();
      alone.push({ config: label, baseItlP50, adapterItlP50, slotMoves: Number(/^loraplex_adapter_slot_moves (\d+)/m.exec(metrics)?.[1] ?? NaN) });
    } finally {
      child.kill('SIGKILL');
    }
  }
  bar.stop();
  const markdown = workloads
    .flatMap((w) => {
      const own = cells.filter((c) => c.workload === w.name);
      return [
        `### ${w.name} (${name}, int4 unless the configuration says otherwise, 8 rank-16 adapters zipf, ${w.requests} requests × ${w.promptLen}-token prompts → ${w.newTokens} tokens, concurrency ${concurrency}, a separate server process)`,
        '',
        table(
          ['configuration', 'tok/s', 'prompt tok/s', 'TTFT p50 / p99 (ms)', 'ITL p50 / p99 (ms)', 'cores used', 'peak RSS (MiB)'],
          own.map((c) => [c.config, fmt(c.tokPerS, 1), fmt(c.promptTokPerS, 0), `${fmt(c.ttftP50, 0)} / ${fmt(c.ttftP99, 0)}`, `${fmt(c.itlP50, 0)} / ${fmt(c.itlP99, 0)}`, fmt(c.cores, 2), fmt(c.peakRssMiB, 0)]),
        ),
        '',
        own.length > 1 ? `Tokens/s over the first configuration's: ${own.slice(1).map((c) => `${c.config} **${fmt(c.tokPerS / own[0].tokPerS, 2)}×**`).join(', ')}.` : '',
        '',
      ];
    })
    .join('\n');
  const aloneMarkdown = [
    `### One stream at a time after the mix (${aloneTokens} tokens each; the mix left its 8 adapters in the slots)`,
    '',
    table(
      ['configuration', 'base model ITL p50 (ms)', 'each adapter alone, ITL p50 (ms, a7 … a0)', 'mean over adapters (ms)', 'slot moves (whole run)'],
      alone.map((a) => [a.config, fmt(a.baseItlP50, 0), a.adapterItlP50.map((x) => fmt(x, 0)).join(' '), fmt(a.adapterItlP50.reduce((s, x) => s + x, 0) / a.adapterItlP50.length, 1), String(a.slotMoves)]),
    ),
    '',
  ].join('\n');
  return { cells, alone, markdown: `${markdown}\n${aloneMarkdown}` };
}
