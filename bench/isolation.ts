/**
 * Isolation under abuse: the step cadence of a running stream must not change because somebody
 * sends huge or expensive requests. A real server on the demo model (real Qwen3 tokenizer and chat
 * template) streams one long generation twice: alone, then while other clients keep sending 7.5 MB
 * chat messages, ~1 MB prompts that must be tokenized to be refused, chat requests whose adapter's
 * template loops until its budget, 1024-entry logit_bias requests and deeply nested tools. Reported:
 * the stream's inter-token gap (p50, p99, max) in both phases, and what the abusive requests got.
 */
import { once } from 'node:events';
import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { resolveAllKnobs, serveConfig } from '../src/config.js';
import { ensureDemo } from '../src/cli/demo.js';
import { startServer } from '../src/server/serve.js';
import { progressBar } from '../src/util/progress.js';
import { fmt, table } from './lib.js';
import type { BenchContext } from './runtime.js';

export interface IsolationResult {
  quiet: GapStats;
  abused: GapStats;
  abusive: Record<string, { sent: number; statuses: Record<string, number> }>;
  markdown: string;
}

interface GapStats {
  tokens: number;
  p50: number;
  p99: number;
  max: number;
}

function stats(gaps: number[], tokens: number): GapStats {
  const s = [...gaps].sort((a, b) => a - b);
  const q = (p: number): number => s[Math.min(s.length - 1, Math.floor(p * s.length))] ?? NaN;
  return { tokens, p50: q(0.5), p99: q(0.99), max: s.at(-1) ?? NaN };
}

/** Streams one completion from its own thread and records the gaps between token chunks (ms). */
async function stream(url: string, tokens: number): Promise<GapStats> {
  const w = new Worker(STREAMER, { eval: true, workerData: { url, tokens } });
  const [{ gaps, n, error }] = (await once(w, 'message')) as [{ gaps: number[]; n: number; error?: string }];
  await w.terminate();
  if (error) throw new Error(error);
  return stats(gaps, n);
}

export async function isolationBench(ctx: BenchContext): Promise<IsolationResult> {
  const root = join(ctx.dir, 'demo');
  const adapters = join(ctx.dir, 'isolation-adapters');
  const demo = ensureDemo(root, ctx.log, adapters);
  // An adapter whose own chat template loops for a long time on one particular message.
  const slow = join(adapters, 'slow-template');
  mkdirSync(slow, { recursive: true });
  for (const f of ['adapter_config.json', 'adapter_model.safetensors']) copyFileSync(join(adapters, 'support-bot', f), join(slow, f));
  writeFileSync(
    join(slow, 'tokenizer_config.json'),
    JSON.stringify({ chat_template: "{% for m in messages %}{% if m.content == 'slow' %}{% for i in range(1000000000) %}{{ '' }}{% endfor %}{% endif %}{{ m.content }}{% endfor %}" }),
  );
  const config = serveConfig(
    resolveAllKnobs(
    { model: demo.model, adapters, quant: 'int4', cacheDir: join(ctx.dir, 'builds'), host: '127.0.0.1', port: 0, servedModelName: 'loraplex-demo', logLevel: 'silent' },
    {},
    ),
  );
  const server = await startServer(config, { logger: false });
  await server.ready;
  const url = server.url;
  const tokens = ctx.quick ? 120 : 400;
  const bar = progressBar('isolation');
  try {
    await stream(url, 16); // warm-up
    bar(1, 3, 'alone');
    const quiet = await stream(url, tokens);
    bar(2, 3, 'under abuse');
    // The abusive clients run in their own thread (their own event loop), as they would on
    // another machine: what is measured is the server's cost, not the clients'.
    const abuser = new Worker(ABUSER, { eval: true, workerData: { url } });
    await new Promise((r) => setTimeout(r, 300));
    const abused = await stream(url, tokens);
    abuser.postMessage('stop');
    const abusive = (await once(abuser, 'message'))[0] as IsolationResult['abusive'];
    await abuser.terminate();
    bar(3, 3, 'done');
    const row = (label: string, s: GapStats): (string | number)[] => [label, s.tokens, fmt(s.p50, 1), fmt(s.p99, 1), fmt(s.max, 1)];
    const markdown = [
      `### Isolation under abuse (demo model, int4, one stream of ${tokens} tokens)`,
      '',
      table(['the stream ran', 'tokens', 'inter-token p50 (ms)', 'p99 (ms)', 'max gap (ms)'], [row('alone', quiet), row('while abusive requests arrive', abused)]),
      '',
      `Max gap under abuse / alone: ${fmt(abused.max / quiet.max, 2)}×; p50: ${fmt(abused.p50 / quiet.p50, 2)}×.`,
      '',
      table(
        ['abusive request', 'sent', 'answers'],
        Object.entries(abusive).map(([k, v]) => [k, v.sent, Object.entries(v.statuses).map(([s, n]) => `${n}× ${s}`).join(', ')]),
      ),
    ].join('\n');
    return { quiet, abused, abusive, markdown };
  } finally {
    bar.stop();
    await server.close(0);
  }
}

const STREAMER = `
const { parentPort, workerData } = require('node:worker_threads');
const { url, tokens } = workerData;
(async () => {
  const r = await fetch(url + '/v1/completions', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'support-bot', prompt: 'Once upon a time', max_tokens: tokens, ignore_eos: true, stream: true, logprobs: 0, temperature: 0 }),
  });
  if (!r.ok) return parentPort.postMessage({ error: 'HTTP ' + r.status });
  const decoder = new TextDecoder();
  let buf = '', last = 0, n = 0;
  const gaps = [];
  for await (const chunk of r.body) {
    buf += decoder.decode(chunk, { stream: true });
    let at;
    while ((at = buf.indexOf('\\n\\n')) >= 0) {
      const frame = buf.slice(0, at);
      buf = buf.slice(at + 2);
      if (!frame.startsWith('data: ') || frame === 'data: [DONE]') continue;
      const now = performance.now();
      if (n > 0) gaps.push(now - last);
      last = now;
      n++;
    }
  }
  parentPort.postMessage({ gaps, n });
})();
`;

/** The abusive clients (plain JS, run as a worker thread): each kind in a loop until 'stop'. */
const ABUSER = `
const { parentPort, workerData } = require('node:worker_threads');
const { url } = workerData;
const deep = '['.repeat(5000) + '1' + ']'.repeat(5000);
const kinds = {
  '7.5 MB chat message': ['/v1/chat/completions', JSON.stringify({ model: 'support-bot', messages: [{ role: 'user', content: 'y'.repeat(7500000) }], max_tokens: 1 })],
  '1 MB prompt (tokenized, then refused)': ['/v1/completions', JSON.stringify({ model: 'loraplex-demo', prompt: 'the quick brown fox '.repeat(50000), max_tokens: 1 })],
  'template that loops to its budget': ['/v1/chat/completions', JSON.stringify({ model: 'slow-template', messages: [{ role: 'user', content: 'slow' }], max_tokens: 1 })],
  '1024-entry logit_bias': ['/v1/completions', JSON.stringify({ model: 'loraplex-demo', prompt: 'x', max_tokens: 2, logit_bias: Object.fromEntries(Array.from({ length: 1024 }, (_, i) => [String(i), -1])) })],
  'tools nested 5000 deep': ['/v1/chat/completions', '{"model":"support-bot","messages":[{"role":"user","content":"x"}],"tools":' + deep + '}'],
};
let stop = false;
const out = {};
parentPort.on('message', () => { stop = true; });
Promise.all(Object.entries(kinds).map(async ([name, [path, body]]) => {
  const rec = (out[name] = { sent: 0, statuses: {} });
  while (!stop) {
    const r = await fetch(url + path, { method: 'POST', headers: { 'content-type': 'application/json' }, body }).catch(() => null);
    const status = r ? String(r.status) : 'failed';
    if (r) await r.arrayBuffer().catch(() => null);
    rec.sent++;
    rec.statuses[status] = (rec.statuses[status] || 0) + 1;
  }
})).then(() => parentPort.postMessage(out));
`;
