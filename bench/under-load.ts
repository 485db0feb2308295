/**
 * New constraints under load: a real `loraplex serve` process (the Qwen2.5-0.5B-shaped int4 model
 * with Qwen3's tokenizer; the demo model in quick mode) kept busy by a W8-like load — 8 concurrent
 * streamed completions on 8 rank-16 adapters in a zipf mix, 136-token prompts — while chat requests
 * arrive one after another, each with a tool list or a JSON schema the server has never seen (so
 * each is compiled while the cores are saturated). Rounds alternate (A B B A): the load alone, and
 * the load with arrivals. Reported: how many arrivals were refused (must be 0: a busy machine is no
 * reason to refuse a valid request), their time to first token against the same requests repeated
 * once their constraint is cached (the extra TTFT a new constraint costs), and the unconstrained
 * rows' inter-token latency with and without arrivals.
 */
import { prng } from '../src/util/prng.js';
import { progressBar } from '../src/util/progress.js';
import { fmt, quantile, table, zipfPicker } from './lib.js';
import type { BenchContext } from './runtime.js';
import { servedModel, startServer, stream, streamChat } from './server-process.js';

export interface UnderLoadResult {
  arrivals: number;
  refused: number;
  refusals: string[];
  newTtftP50: number;
  newTtftP99: number;
  cachedTtftP50: number;
  loadItlP50: number;
  loadItlP99: number;
  loadWithArrivalsItlP50: number;
  loadWithArrivalsItlP99: number;
}

/** The i-th never-seen constraint: a tool list (even i) or a response_format JSON schema (odd i), in chat-request fields. */
function newConstraint(i: number): Record<string, unknown> {
  if (i % 2 === 0) {
    return {
      tools: [
        {
          type: 'function',
          function: {
            name: `get_weather_${i}`,
            description: `Weather report ${i}`,
            parameters: { type: 'object', properties: { city: { type: 'string', maxLength: 24 }, unit: { enum: ['c', 'f'] }, [`days_${i}`]: { type: 'integer', minimum: 0 } }, required: ['city', 'unit'] },
          },
        },
        { type: 'function', function: { name: `lookup_${i}`, parameters: { type: 'object', properties: { query: { type: 'string' } }, required: ['query'] } } },
      ],
      tool_choice: 'required',
    };
  }
  return {
    response_format: {
      type: 'json_schema',
      json_schema: {
        name: `record_${i}`,
        schema: { type: 'object', properties: { [`name_${i}`]: { type: 'string', maxLength: 32 }, tags: { type: 'array', items: { type: 'string' }, maxItems: 4 }, ok: { type: 'boolean' } }, required: [`name_${i}`, 'ok'], additionalProperties: false },
      },
    },
  };
}

export async function underLoadBench(ctx: BenchContext): Promise<{ result: UnderLoadResult; markdown: string }> {
  const { modelDir, name, store } = await servedModel(ctx, 'grammar-store', 4000);
  const concurrency = 8;
  const promptLen = 136;
  const newTokens = ctx.quick ? 16 : 64;
  const perRound = ctx.quick ? 8 : 24;
  const rounds = ctx.quick ? 2 : 4;
  const arrivalTokens = 8;
  const { url, child } = await startServer(['--model', modelDir, '--adapters', store, '--quant', 'int4', '--cache-dir', `${ctx.dir}/builds`, '--port', '0', '--host', '127.0.0.1', '--max-context', '2048', '--store-poll-ms', '0']);
  const bar = progressBar('under load');
  const rand = prng(22);
  const zipf = zipfPicker(8, rand);
  const loadBody = () => ({ model: `a${zipf()}`, prompt: Array.from({ length: promptLen }, () => Math.floor(rand() * 150000)), max_tokens: newTokens, temperature: 0, ignore_eos: true, stream: true, logprobs: 0 });
  const arrival = (i: number) => ({ model: `a${i % 8}`, messages: [{ role: 'user', content: `Request ${i}: what is the weather in Paris?` }], max_tokens: arrivalTokens, temperature: 0, ...newConstraint(i) });
  const gaps = { load: [] as number[], arrivals: [] as number[] };
  const newTtft: number[] = [];
  const cachedTtft: number[] = [];
  const refusals: string[] = [];
  let arrivals = 0;
  let nextConstraint = 0;
  try {
    // Warm-up: every adapter loaded once.
    await Promise.all(Array.from({ length: 8 }, (_, i) => stream(url, { ...loadBody(), model: `a${i}`, max_tokens: 2 })));
    for (let round = 0; round < rounds; round++) {
      const withArrivals = round % 4 === 1 || round % 4 === 2;
      let left = perRound;
      let loadDone = false;
      const load = Promise.all(
        Array.from({ length: concurrency }, async () => {
          while (left-- > 0) (withArrivals ? gaps.arrivals : gaps.load).push(...(await stream(url, loadBody())).gaps);
        }),
      ).finally(() => (loadDone = true));
      if (withArrivals) {
        // One arrival at a time while the load runs: a new constraint, then the same request again (cached).
        while (!loadDone) {
          const i = nextConstraint++;
          arrivals++;
          try {
            newTtft.push((await streamChat(url, arrival(i))).ttft);
            cachedTtft.push((await streamChat(url, arrival(i))).ttft);
          } catch (err) {
            refusals.push(`${i}: ${(err as Error).message.slice(0, 200)}`);
          }
        }
      }
      await load;
      bar(round + 1, rounds, withArrivals ? 'load + new constraints' : 'load alone');
    }
  } finally {
    child.kill('SIGKILL');
    bar.stop();
  }
  const result: UnderLoadResult = {
    arrivals,
    refused: refusals.length,
    refusals,
    newTtftP50: quantile(newTtft, 0.5),
    newTtftP99: quantile(newTtft, 0.99),
    cachedTtftP50: quantile(cachedTtft, 0.5),
    loadItlP50: quantile(gaps.load, 0.5),
    loadItlP99: quantile(gaps.load, 0.99),
    loadWithArrivalsItlP50: quantile(gaps.arrivals, 0.5),
    loadWithArrivalsItlP99: quantile(gaps.arrivals, 0.99),
  };
  const r = result;
  const markdown = [
    `### New constraints under load (${name}, int4; a W8-like load of ${concurrency} concurrent streams on 8 adapters, ${promptLen}-token prompts → ${newTokens} tokens; chat requests with never-seen tool lists and JSON schemas arriving one at a time; ${rounds} rounds of ${perRound} load requests, ${rounds >= 4 ? 'A B B A' : 'A B'})`,
    '',
    table(
      ['measure', 'value'],
      [
        ['arrivals with a new constraint', r.arrivals],
        ['refused (must be 0)', r.refused],
        ['TTFT with a new constraint p50 / p99 (ms)', `${fmt(r.newTtftP50, 0)} / ${fmt(r.newTtftP99, 0)}`],
        ['TTFT of the same request, constraint cached, p50 (ms)', fmt(r.cachedTtftP50, 0)],
        ['extra TTFT of a new constraint, p50 (ms)', fmt(r.newTtftP50 - r.cachedTtftP50, 0)],
        ['unconstrained ITL p50 / p99, load alone (ms)', `${fmt(r.loadItlP50, 1)} / ${fmt(r.loadItlP99, 1)}`],
        ['unconstrained ITL p50 / p99, load + arrivals (ms)', `${fmt(r.loadWithArrivalsItlP50, 1)} / ${fmt(r.loadWithArrivalsItlP99, 1)}`],
      ],
    ),
    '',
    `- Unconstrained rows' inter-token latency with arrivals / without: p50 **${fmt(r.loadWithArrivalsItlP50 / r.loadItlP50, 2)}×**, p99 ${fmt(r.loadWithArrivalsItlP99 / r.loadItlP99, 2)}×.`,
    ...(r.refused ? ['', `Refusals: ${r.refusals.join('; ')}`] : []),
  ].join('\n');
  return { result, markdown };
}
