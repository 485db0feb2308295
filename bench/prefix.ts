/**
 * Prefix caching: a real `loraplex serve` process with the cache on and one with it off (Qwen3's
 * real tokenizer and chat template on the Qwen2.5-0.5B-shaped int4 model; the demo model in quick
 * mode), 8 rank-16 adapters, streamed chat requests at concurrency 8. Three workloads per server:
 *  - system prompt: each adapter has its own ~512-token system prompt, the same for every request to
 *    it; short (~32-token) user turns; adapters in a zipf mix;
 *  - multi-turn: 8 conversations, each turn resends the whole history (system prompt, earlier user
 *    turns and the assistant's answers as text) plus a new user turn;
 *  - unique: every prompt is new (nothing to reuse), to price the cache for a request it cannot help.
 * Reported: output tokens/s, TTFT p50/p99 and the hit rate (cached / prompt tokens, from usage).
 */
import { join } from 'node:path';
import { TextTokenizer } from '../src/runtime/tokenizer.js';
import { prng } from '../src/util/prng.js';
import { progressBar } from '../src/util/progress.js';
import { fmt, quantile, table, zipfPicker } from './lib.js';
import type { BenchContext } from './runtime.js';
import { servedModel, startServer, streamChat, type ChatStreamResult } from './server-process.js';

export interface PrefixCell {
  workload: string;
  cache: boolean;
  requests: number;
  tokPerS: number;
  ttftP50: number;
  ttftP99: number;
  hitRate: number;
  promptTokens: number;
}

type Message = { role: 'system' | 'user' | 'assistant'; content: string };

const WORDS = (
  'the a of to and in is it you that he was for on are with as his they be at one have this from or had by word but what some we can out other were all there when up use your how said an each she which do their time if will way about many then them write would like so these her long make thing see him two has look more day could go come did number sound no most people my over know water than call first who may down side been now find any new work part take get place made live where after back little only round man year came show every good me give our under name very through just form sentence great think say help low line differ turn cause much mean before move right boy old too same tell does set three want air well also play small end put home read hand port large spell add even land here must big high such follow act why ask men change went light kind off need house picture try us again animal point mother world near build self earth father head stand own page should country found answer school grow study still learn plant cover food sun four between state keep eye never last let thought city tree cross farm hard start might story saw far sea draw left late run'
).split(' ');

/** Random words until the text has at least `tokens` tokens (by the model's tokenizer). */
function text(tok: TextTokenizer, tokens: number, rand: () => number): string {
  const words: string[] = [];
  let approx = 0;
  for (;;) {
    while (approx < tokens) {
      words.push(WORDS[Math.floor(rand() * WORDS.length)]);
      approx += 1;
    }
    const s = words.join(' ');
    const n = tok.encode(s, false).length;
    if (n >= tokens) return `${s[0].toUpperCase()}${s.slice(1)}.`;
    approx = n;
  }
}

/** Runs `jobs` with `concurrency` workers; each job is awaited before its worker takes the next. */
async function pool(concurrency: number, jobs: (() => Promise<void>)[]): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (next < jobs.length) await jobs[next++]();
  }));
}

export async function prefixBench(ctx: BenchContext): Promise<{ cells: PrefixCell[]; markdown: string }> {
  const { modelDir, name, store } = await servedModel(ctx, 'prefix-store', 3000);
  const tok = TextTokenizer.load(modelDir)!;

  const concurrency = 8;
  const newTokens = ctx.quick ? 8 : 64;
  const systemTokens = 512;
  const userTokens = 32;
  const sysRequests = ctx.quick ? 16 : 64;
  const conversations = 8;
  const turns = ctx.quick ? 2 : 4;
  const uniqueRequests = ctx.quick ? 8 : 32;
  const rand = prng(14);
  const systems = Array.from({ length: 8 }, () => text(tok, systemTokens, rand));
  const pick = zipfPicker(8, rand);
  const sysPlan = Array.from({ length: sysRequests }, () => ({ adapter: pick(), user: text(tok, userTokens, rand) }));
  const convSystems = Array.from({ length: conversations }, () => text(tok, systemTokens, rand));
  const convUsers = Array.from({ length: conversations }, () => Array.from({ length: turns }, () => text(tok, userTokens, rand)));
  const uniquePlan = Array.from({ length: uniqueRequests }, () => ({ adapter: pick(), system: text(tok, systemTokens, rand), user: text(tok, userTokens, rand) }));

  const base = ['--model', modelDir, '--adapters', store, '--quant', 'int4', '--cache-dir', join(ctx.dir, 'builds'), '--port', '0', '--host', '127.0.0.1', '--max-context', '4096', '--store-poll-ms', '0'];
  const body = (adapter: number, messages: Message[]) => ({ model: `a${adapter}`, messages, max_tokens: newTokens, temperature: 0, ignore_eos: true });
  const perServer = sysRequests + conversations * turns + uniqueRequests;
  const bar = progressBar('prefix cache');
  const cells: PrefixCell[] = [];
  let done = 0;
  for (const cache of [false, true]) {
    const { url, child } = await startServer([...base, ...(cache ? [] : ['--no-prefix-cache'])]);
    try {
      // Warm-up: every adapter loaded once, with a prompt no workload shares.
      await Promise.all(Array.from({ length: 8 }, (_, i) => streamChat(url, { ...body(i, [{ role: 'user', content: 'warm up' }]), max_tokens: 2 })));
      const measure = async (workload: string, jobs: ((record: (r: ChatStreamResult) => void) => Promise<void>)[]): Promise<void> => {
        const results: ChatStreamResult[] = [];
        const record = (r: ChatStreamResult): void => {
          results.push(r);
          bar(++done, 2 * perServer, `${workload}, cache ${cache ? 'on' : 'off'}`);
        };
        const t0 = performance.now();
        await pool(concurrency, jobs.map((j) => () => j(record)));
        const seconds = (performance.now() - t0) / 1000;
        const sum = (f: (r: ChatStreamResult) => number): number => results.reduce((a, r) => a + f(r), 0);
        cells.push({
          workload,
          cache,
          requests: results.length,
          tokPerS: sum((r) => r.tokens) / seconds,
          ttftP50: quantile(results.map((r) => r.ttft), 0.5),
          ttftP99: quantile(results.map((r) => r.ttft), 0.99),
          hitRate: sum((r) => r.cachedTokens) / sum((r) => r.promptTokens),
          promptTokens: sum((r) => r.promptTokens) / results.length,
        });
      };
      await measure(
        'system prompt',
        sysPlan.map((p) => async (record) => record(await streamChat(url, body(p.adapter, [{ role: 'system', content: systems[p.adapter] }, { role: 'user', content: p.user }])))),
      );
      // Multi-turn: one job per conversation (its turns are sequential), conversations concurrent.
      await measure(
        'multi-turn',
        convUsers.map((users, c) => async (record) => {
          const history: Message[] = [{ role: 'system', content: convSystems[c] }];
          for (const user of users) {
            history.push({ role: 'user', content: user });
            const r = await streamChat(url, body(c, history));
            record(r);
            history.push({ role: 'assistant', content: r.text });
          }
        }),
      );
      await measure(
        'unique prompts',
        uniquePlan.map((p) => async (record) => record(await streamChat(url, body(p.adapter, [{ role: 'system', content: p.system }, { role: 'user', content: p.user }])))),
      );
    } finally {
      child.kill('SIGKILL');
    }
  }
  bar.stop();
  const workloads = [...new Set(cells.map((c) => c.workload))];
  const cell = (w: string, cache: boolean): PrefixCell => cells.find((c) => c.workload === w && c.cache === cache)!;
  const markdown = [
    `### Prefix cache (${name}, int4, 8 rank-16 adapters, chat with Qwen3's template, ${newTokens} output tokens, concurrency ${concurrency}, a separate server process each)`,
    '',
    `System prompt: ${sysRequests} requests, a ~${systemTokens}-token system prompt per adapter (zipf) and a ~${userTokens}-token user turn. Multi-turn: ${conversations} conversations × ${turns} turns resending the history. Unique: ${uniqueRequests} requests whose prompts share nothing.`,
    '',
    table(
      ['workload', 'cache', 'prompt tokens (mean)', 'tok/s', 'TTFT p50 / p99 (ms)', 'hit rate'],
      cells.map((c) => [c.workload, c.cache ? 'on' : 'off', fmt(c.promptTokens, 0), fmt(c.tokPerS, 1), `${fmt(c.ttftP50, 0)} / ${fmt(c.ttftP99, 0)}`, `${fmt(100 * c.hitRate, 1)}%`]),
    ),
    '',
    ...workloads.map((w) => {
      const on = cell(w, true);
      const off = cell(w, false);
      return `- ${w}: cache on / off = **${fmt(on.tokPerS / off.tokPerS, 2)}×** tokens/s, TTFT p50 **${fmt(on.ttftP50 / off.ttftP50, 2)}×**, p99 ${fmt(on.ttftP99 / off.ttftP99, 2)}×.`;
    }),
  ].join('\n');
  return { cells, markdown };
}
