/**
 * Constrained rows in a served batch: a real `loraplex serve` process (the Qwen2.5-0.5B-shaped int4
 * model with Qwen3's tokenizer; the demo model in quick mode), 8 rank-16 adapters, batches of 8
 * concurrent streamed completions, each row on its own adapter. Two mixes, in A B B A order so
 * drift hits both alike: every row unconstrained, and half the rows constrained to a JSON schema that
 * cannot complete within the token budget (so every row decodes the same number of tokens).
 * Reported: tokens/s of the whole batch and of its unconstrained rows, and the unconstrained rows'
 * inter-token latency — what the masks cost rows that do not use them.
 */
import { join } from 'node:path';
import { progressBar } from '../src/util/progress.js';
import { fmt, quantile, table } from './lib.js';
import type { BenchContext } from './runtime.js';
import { servedModel, startServer, stream } from './server-process.js';

export interface GrammarBatchCell {
  mix: string;
  batches: number;
  tokPerS: number;
  freeTokPerS: number;
  freeItlP50: number;
  freeItlP99: number;
}

/** An array of short words that needs far more tokens than the budget to complete. */
const LONG_SCHEMA = { type: 'array', items: { type: 'string', pattern: '^[a-z]{1,8}$' }, minItems: 400 };

export async function grammarBatchBench(ctx: BenchContext): Promise<{ cells: GrammarBatchCell[]; markdown: string }> {
  const { modelDir, name, store } = await servedModel(ctx, 'grammar-store', 4000);
  const rows = 8;
  const newTokens = ctx.quick ? 16 : 64;
  const rounds = ctx.quick ? 2 : 6;
  const mixes = ['none constrained', 'half constrained'] as const;
  const { url, child } = await startServer(['--model', modelDir, '--adapters', store, '--quant', 'int4', '--cache-dir', join(ctx.dir, 'builds'), '--port', '0', '--host', '127.0.0.1', '--max-context', '2048', '--store-poll-ms', '0', '--no-prefix-cache']);
  const bar = progressBar('constrained batch');
  const acc = new Map<string, { tokens: number; free: number; seconds: number; gaps: number[]; batches: number }>(mixes.map((m) => [m, { tokens: 0, free: 0, seconds: 0, gaps: [], batches: 0 }]));
  try {
    const body = (i: number, constrained: boolean, n = newTokens) => ({
      model: `a${i}`,
      prompt: `Request ${i}: list some words.`,
      max_tokens: n,
      temperature: 1,
      seed: i,
      logprobs: 0,
      stream: true,
      ...(constrained ? { guided_json: LONG_SCHEMA } : { ignore_eos: true }),
    });
    // Warm-up: every adapter loaded, the schema compiled, a whole batch decoded once.
    await Promise.all(Array.from({ length: rows }, (_, i) => stream(url, body(i, i % 2 === 1))));
    let done = 0;
    for (let round = 0; round < rounds; round++) {
      // A B B A …: neither mix always runs first.
      for (const mix of round % 2 === 0 ? mixes : [...mixes].reverse()) {
        const t0 = performance.now();
        const results = await Promise.all(Array.from({ length: rows }, (_, i) => stream(url, body(i, mix === 'half constrained' && i % 2 === 1)).then((r) => ({ ...r, constrained: mix === 'half constrained' && i % 2 === 1 }))));
        const a = acc.get(mix)!;
        a.seconds += (performance.now() - t0) / 1000;
        a.batches++;
        for (const r of results) {
          if (r.tokens !== newTokens) throw new Error(`a row decoded ${r.tokens} tokens, not ${newTokens}`);
          a.tokens += r.tokens;
          if (!r.constrained) {
            a.free += r.tokens;
            a.gaps.push(...r.gaps);
          }
        }
        bar(++done, rounds * mixes.length, mix);
      }
    }
  } finally {
    child.kill('SIGKILL');
    bar.stop();
  }
  const cells: GrammarBatchCell[] = mixes.map((mix) => {
    const a = acc.get(mix)!;
    return { mix, batches: a.batches, tokPerS: a.tokens / a.seconds, freeTokPerS: a.free / a.seconds, freeItlP50: quantile(a.gaps, 0.5), freeItlP99: quantile(a.gaps, 0.99) };
  });
  const [none, half] = cells;
  const markdown = [
    `### Constrained rows in a served batch (${name}, int4, ${rows} concurrent completions on ${rows} adapters, ${newTokens} tokens each, ${rounds} batches per mix, in A B B A order)`,
    '',
    table(
      ['mix', 'batch tok/s', 'unconstrained rows tok/s', 'unconstrained ITL p50 / p99 (ms)'],
      cells.map((c) => [c.mix, fmt(c.tokPerS, 1), fmt(c.freeTokPerS, 1), `${fmt(c.freeItlP50, 1)} / ${fmt(c.freeItlP99, 1)}`]),
    ),
    '',
    `- Half the rows constrained / none: batch throughput **${fmt(half.tokPerS / none.tokPerS, 2)}×**; unconstrained rows' inter-token latency p50 **${fmt(half.freeItlP50 / none.freeItlP50, 2)}×**, p99 ${fmt(half.freeItlP99 / none.freeItlP99, 2)}×.`,
  ].join('\n');
  return { cells, markdown };
}
