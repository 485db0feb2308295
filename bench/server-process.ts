/**
 * A real `loraplex serve` process for the serving benchmarks: started on a free port and awaited
 * until ready, its CPU time and resident memory read from /proc, streamed requests timed token by
 * token.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeRandomPeftAdapter } from '../src/adapters/random.js';
import { ensureDemo, qwenTokenizerDir } from '../src/cli/demo.js';
import { Checkpoint } from '../src/runtime/checkpoint/checkpoint.js';
import { prepareModel, type BenchContext } from './runtime.js';

const CLI = join(import.meta.dirname, '../src/cli/index.ts');

/** utime + stime of a process, in seconds. */
export function cpuSeconds(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

export function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : 0;
}

/**
 * Starts `loraplex serve` with these arguments; `checkout` runs another checkout's server instead
 * (a before/after comparison in one run: `npm run bench -- --baseline DIR`).
 */
export async function startServer(args: string[], checkout?: string): Promise<{ url: string; child: ChildProcess }> {
  const cli = checkout ? join(checkout, 'src/cli/index.ts') : CLI;
  if (!existsSync(cli)) throw new Error(`no loraplex checkout at ${checkout}: ${cli} is missing`);
  const child = spawn(process.execPath, ['--import', 'tsx', cli, 'serve', ...args], { env: { ...process.env, LORAPLEX_LOG_LEVEL: 'info' } });
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (out += d));
  const deadline = Date.now() + 600_000;
  while (!/listening on/.test(out)) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`the server did not start (exit ${child.exitCode}): ${out.slice(-2000)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  const url = /listening on (http:\/\/[^ ]+) /.exec(out)![1];
  while ((await fetch(`${url}/health`).catch(() => null))?.status !== 200) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`the server did not get ready: ${out.slice(-2000)}`);
    await new Promise((r) => setTimeout(r, 200));
  }
  return { url, child };
}

/** The JSON data frames of a server-sent-event response, as they arrive; an error frame throws. */
async function* sseData(r: Response): AsyncGenerator<Record<string, unknown>> {
  if (!r.ok || !r.body) throw new Error(`HTTP ${r.status}: ${await r.text()}`);
  const decoder = new TextDecoder();
  let buf = '';
  for await (const chunk of r.body as unknown as AsyncIterable<Uint8Array>) {
    buf += decoder.decode(chunk, { stream: true });
    let at: number;
    while ((at = buf.indexOf('\n\n')) >= 0) {
      const frame = buf.slice(0, at);
      buf = buf.slice(at + 2);
      if (!frame.startsWith('data: {')) continue;
      const data = JSON.parse(frame.slice(6)) as Record<string, unknown> & { error?: { message: string } };
      if (data.error) throw new Error(data.error.message);
      yield data;
    }
  }
}

const post = (url: string, body: unknown): Promise<Response> => fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });

/** One streamed completion (with `logprobs`, so every token is seen as it arrives): time to first token and the gaps between tokens (ms). */
export async function stream(url: string, body: unknown): Promise<{ ttft: number; gaps: number[]; tokens: number }> {
  const t0 = performance.now();
  let last = 0;
  let ttft = 0;
  let tokens = 0;
  const gaps: number[] = [];
  for await (const data of sseData(await post(`${url}/v1/completions`, body))) {
    const n = (data as { choices?: { logprobs?: { tokens?: string[] } | null }[] }).choices?.[0]?.logprobs?.tokens?.length ?? 0;
    if (n === 0) continue;
    const now = performance.now();
    if (tokens === 0) ttft = now - t0;
    else gaps.push(now - last);
    last = now;
    tokens += n;
  }
  return { ttft, gaps, tokens };
}

export interface ChatStreamResult {
  ttft: number;
  tokens: number;
  text: string;
  promptTokens: number;
  cachedTokens: number;
}

/** One streamed chat completion with per-token logprobs (so every token is seen as it arrives) and usage. */
export async function streamChat(url: string, body: Record<string, unknown>): Promise<ChatStreamResult> {
  const t0 = performance.now();
  const out: ChatStreamResult = { ttft: 0, tokens: 0, text: '', promptTokens: 0, cachedTokens: 0 };
  for await (const frame of sseData(await post(`${url}/v1/chat/completions`, { ...body, stream: true, logprobs: true, stream_options: { include_usage: true } }))) {
    const data = frame as {
      choices?: { delta?: { content?: string }; logprobs?: { content?: unknown[] } | null }[];
      usage?: { prompt_tokens: number; completion_tokens: number; prompt_tokens_details?: { cached_tokens?: number } } | null;
    };
    if (data.usage) {
      // The usage chunk comes last; it also counts tokens that had no text (special tokens).
      out.tokens = data.usage.completion_tokens;
      out.promptTokens = data.usage.prompt_tokens;
      out.cachedTokens = data.usage.prompt_tokens_details?.cached_tokens ?? 0;
    }
    const choice = data.choices?.[0];
    const n = choice?.logprobs?.content?.length ?? 0;
    out.text += choice?.delta?.content ?? '';
    if (n === 0) continue;
    if (out.tokens === 0) out.ttft = performance.now() - t0;
    out.tokens += n;
  }
  return out;
}

/**
 * The model a serving bench runs: the Qwen2.5-0.5B-shaped int4 checkpoint with Qwen3's tokenizer and
 * chat template (the demo model in quick mode), and a store of 8 rank-16 random adapters a0..a7.
 */
export async function servedModel(ctx: BenchContext, storeName: string, adapterSeed: number): Promise<{ modelDir: string; name: string; store: string }> {
  let modelDir: string;
  let name: string;
  if (ctx.quick) {
    modelDir = ensureDemo(join(ctx.dir, 'demo'), ctx.log, join(ctx.dir, 'demo', 'adapters')).model;
    name = 'demo model';
  } else {
    const prepared = await prepareModel(ctx);
    modelDir = prepared.modelDir;
    name = prepared.name;
    for (const f of ['tokenizer.json', 'tokenizer_config.json']) if (!existsSync(join(modelDir, f))) copyFileSync(join(qwenTokenizerDir(), f), join(modelDir, f));
  }
  const ckpt = Checkpoint.open(modelDir);
  const spec = ckpt.spec;
  ckpt.close();
  const store = join(ctx.dir, storeName, name.replace(/ /g, '-'));
  for (let i = 0; i < 8; i++) {
    const dir = join(store, `a${i}`);
    if (!existsSync(join(dir, 'adapter_model.safetensors'))) {
      mkdirSync(dir, { recursive: true });
      writeRandomPeftAdapter(dir, spec, { rank: 16, seed: adapterSeed + i });
    }
  }
  return { modelDir, name, store };
}
