/**
 * The HTTP API end to end: a real server (real engine worker, tiny model with a real tokenizer),
 * app.inject and the official `openai` client, admin uploads, errors and a malformed-input sweep.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type RunningServer } from '../../src/server/serve.js';
import { tarGz, zip } from '../helpers/archives.js';
import { referenceLogits } from '../helpers/reference.js';
import { argmax } from '../helpers/runtime.js';
import { copyTokenizer, loadTokenizer } from '../helpers/tokenizers.js';
import { makeTinyAdapter, makeTinyModel, prng, tempDir } from '../helpers/tiny-model.js';
import { testConfig } from '../helpers/server.js';

const ADMIN = 'test-admin-token';
const vocabSize = 151669;
const tm = makeTinyModel({ flavour: 'qwen2', seed: 101, vocabSize, hiddenSize: 64, numHeads: 4, numKvHeads: 2, intermediateSize: 128, maxPositionEmbeddings: 256 });
copyTokenizer('qwen3', tm.dir);
const qwen = loadTokenizer('qwen3');
const storeDir = tempDir('loraplex-store-');
const alpha = makeTinyAdapter(tm, { seed: 102, r: 4 }, join(storeDir, 'alpha'));
makeTinyAdapter(tm, { seed: 103, r: 8, targets: ['q_proj', 'v_proj'] }, join(storeDir, 'acme', 'beta'));
const upload = makeTinyAdapter(tm, { seed: 104, r: 2 });
const upload2 = makeTinyAdapter(tm, { seed: 105, r: 6 });

let server: RunningServer;
let base: string;

beforeAll(async () => {
  server = await startServer(testConfig({ model: tm.dir, adapters: storeDir, adminToken: ADMIN, port: 0, host: '127.0.0.1', servedModelName: 'tiny' }), { logger: false });
  await server.ready;
  base = server.url;
});
afterAll(async () => {
  await server?.close();
});

const json = (path: string, body: unknown, headers: Record<string, string> = {}) =>
  fetch(`${base}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) });

function peftFiles(a: { dir: string }): { name: string; data: Buffer }[] {
  return ['adapter_config.json', 'adapter_model.safetensors'].map((f) => ({ name: f, data: readFileSync(join(a.dir, f)) }));
}

function form(fields: Record<string, string>, files: { name: string; data: Buffer }[]): FormData {
  const f = new FormData();
  for (const [k, v] of Object.entries(fields)) f.append(k, v);
  for (const file of files) f.append('file', new Blob([file.data]), file.name);
  return f;
}

const admin = (path: string, init: RequestInit = {}) => fetch(`${base}${path}`, { ...init, headers: { authorization: `Bearer ${ADMIN}`, ...(init.headers as Record<string, string>) } });

/** Greedy continuation by the reference forward pass. */
function referenceGreedy(prompt: number[], lora: typeof alpha.lora | null, n: number): number[] {
  const toks = [...prompt];
  for (let i = 0; i < n; i++) toks.push(argmax(referenceLogits(tm.cfg, tm.weights, toks, lora).at(-1)!));
  return toks.slice(prompt.length);
}

describe('OpenAI API with the official client', () => {
  const client = () => new OpenAI({ baseURL: `${base}/v1`, apiKey: 'unused' });

  it('lists the base model and every adapter with parent = base', async () => {
    const models = await client().models.list();
    const ids = models.data.map((m) => m.id);
    expect(ids).toEqual(['tiny', 'acme/beta', 'alpha']);
    expect((models.data[1] as unknown as { parent: string }).parent).toBe('tiny');
  });

  it('chat completion with an adapter, non-streaming and streaming agree', async () => {
    const req = { model: 'alpha', messages: [{ role: 'user' as const, content: 'Hello there' }], max_tokens: 6, temperature: 0 };
    const full = await client().chat.completions.create(req);
    expect(full.choices[0].finish_reason).toBe('length');
    expect(full.usage).toMatchObject({ completion_tokens: 6, prompt_tokens: qwen.encode(qwen.chatTemplate!.render([{ role: 'user', content: 'Hello there' }]), false).length });
    const stream = await client().chat.completions.create({ ...req, stream: true, stream_options: { include_usage: true } });
    let text = '';
    let usage: unknown = null;
    let finish: string | null = null;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta?.content ?? '';
      finish = chunk.choices[0]?.finish_reason ?? finish;
      if (chunk.usage) usage = chunk.usage;
    }
    expect(text).toBe(full.choices[0].message.content);
    expect(finish).toBe('length');
    expect(usage).toEqual(full.usage);
  });

  it('greedy completions equal the reference forward pass, per adapter and for the base', async () => {
    const prompt = [9707, 11, 1879];
    for (const [model, lora] of [['tiny', null], ['alpha', alpha.lora]] as const) {
      const r = await client().completions.create({ model, prompt, max_tokens: 4, temperature: 0, logprobs: 1 });
      const ids = referenceGreedy(prompt, lora, 4);
      expect(r.choices[0].text).toBe(qwen.decode(ids));
      expect(r.choices[0].logprobs!.tokens).toEqual(ids.map((id) => qwen.decode([id], false)));
    }
  });

  it('seed, n, stop and logprobs behave as OpenAI documents', async () => {
    const req = { model: 'acme/beta', messages: [{ role: 'user' as const, content: 'Tell me' }], max_tokens: 8, temperature: 1.2, seed: 42, n: 2, logprobs: true, top_logprobs: 3 };
    const a = await client().chat.completions.create(req);
    const b = await client().chat.completions.create(req);
    expect(a.choices.map((c) => c.message.content)).toEqual(b.choices.map((c) => c.message.content));
    expect(a.choices).toHaveLength(2);
    const lp = a.choices[0].logprobs!.content!;
    expect(lp.length).toBeGreaterThan(0);
    expect(lp[0].top_logprobs).toHaveLength(3);
    const text = a.choices[0].message.content!;
    // A stop string taken from the answer itself (from its first non-space character on).
    const at = text.search(/\S/);
    expect(at).toBeGreaterThanOrEqual(0);
    const cut = text.slice(at, at + 2);
    const s = await client().chat.completions.create({ ...req, n: 1, stop: [cut] });
    expect(s.choices[0].finish_reason).toBe('stop');
    expect(s.choices[0].message.content).toBe(text.slice(0, text.indexOf(cut)));
  });

  it('an unknown model is a 404 in OpenAI error shape', async () => {
    const err = await client()
      .chat.completions.create({ model: 'nope', messages: [{ role: 'user', content: 'x' }] })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.NotFoundError);
    expect((err as InstanceType<typeof OpenAI.NotFoundError>).error).toMatchObject({ code: 'model_not_found', param: 'model', type: 'invalid_request_error' });
  });
});

describe('LoRAX/TGI routes', () => {
  it('/generate with adapter_id returns TGI details; adapter_id overrides nothing else', async () => {
    const r = await json('/generate', { inputs: 'Hello', parameters: { adapter_id: 'alpha', max_new_tokens: 5, details: true } });
    expect(r.status).toBe(200);
    const body = (await r.json()) as { generated_text: string; details: { finish_reason: string; generated_tokens: number; tokens: { id: number; text: string }[] } };
    expect(body.details).toMatchObject({ finish_reason: 'length', generated_tokens: 5 });
    expect(body.generated_text).toBe(qwen.decode(body.details.tokens.map((t) => t.id)));
    const ids = referenceGreedy(qwen.encode('Hello'), alpha.lora, 5);
    expect(body.details.tokens.map((t) => t.id)).toEqual(ids);
  });

  it('/generate_stream sends token events and a final one with generated_text', async () => {
    const r = await json('/generate_stream', { inputs: 'Hello', parameters: { max_new_tokens: 4, details: true } });
    const events = (await r.text())
      .split('\n\n')
      .filter((l) => l.startsWith('data:'))
      .map((l) => JSON.parse(l.slice(5)) as { token: { id: number; text: string }; generated_text: string | null; details: unknown });
    expect(events).toHaveLength(4);
    expect(events.slice(0, 3).every((e) => e.generated_text === null)).toBe(true);
    expect(events[3].generated_text).toBe(events.map((e) => e.token.text).join(''));
    expect(events[3].details).toMatchObject({ finish_reason: 'length', generated_tokens: 4 });
  });

  it('merged_adapters: linear works; an unknown strategy is 422, a ties merge without density names it', async () => {
    const ok = await json('/v1/completions', { model: 'tiny', prompt: 'Hi', max_tokens: 3, merged_adapters: { ids: ['alpha', 'acme/beta'], weights: [0.5, 0.5], merge_strategy: 'linear' } });
    expect(ok.status).toBe(200);
    const bad = await json('/generate', { inputs: 'Hi', parameters: { merged_adapters: { ids: ['alpha'], weights: [1], merge_strategy: 'svd' } } });
    expect(bad.status).toBe(422);
    // TGI routes answer in TGI's error shape.
    expect(await bad.json()).toEqual({ error: expect.stringMatching(/merge_strategy "svd" is not supported/), error_type: 'validation' });
    const noDensity = await json('/v1/completions', { model: 'tiny', prompt: 'Hi', max_tokens: 3, merged_adapters: { ids: ['alpha'], weights: [1], merge_strategy: 'ties' } });
    expect(noDensity.status).toBe(400);
    expect(((await noDensity.json()) as { error: { param: string } }).error.param).toBe('merged_adapters.density');
  });

  it("model 'base:adapter' (SGLang's form) is the adapter; another base's prefix is a 404", async () => {
    const body = { prompt: 'Hi', max_tokens: 4, temperature: 0 };
    const plain = (await (await json('/v1/completions', { ...body, model: 'alpha' })).json()) as { choices: { text: string }[] };
    const r = await json('/v1/completions', { ...body, model: 'tiny:alpha' });
    expect(r.status).toBe(200);
    const aliased = (await r.json()) as { model: string; choices: { text: string }[] };
    expect(aliased.model).toBe('tiny:alpha');
    expect(aliased.choices[0].text).toBe(plain.choices[0].text);
    const other = await json('/v1/completions', { ...body, model: 'llama:alpha' });
    expect(other.status).toBe(404);
    expect(((await other.json()) as { error: { param: string } }).error.param).toBe('model');
  });

  it('lora_scale: 1 is the adapter, 0 the base model, 2 the same as merged_adapters with weight 2; refused on the base, with a merge, or out of range', async () => {
    const body = { prompt: 'Hello there', max_tokens: 6, temperature: 0, logprobs: 1 };
    type Out = { choices: { text: string; logprobs: { token_logprobs: number[] } }[] };
    const run = async (extra: Record<string, unknown>): Promise<Out['choices'][0]> => {
      const r = await json('/v1/completions', { ...body, ...extra });
      expect(r.status).toBe(200);
      return ((await r.json()) as Out).choices[0];
    };
    const base = await run({ model: 'tiny' });
    const alpha = await run({ model: 'alpha' });
    expect(await run({ model: 'alpha', lora_scale: 1 })).toEqual(alpha);
    const zero = await run({ model: 'alpha', lora_scale: 0 });
    expect(zero.text).toBe(base.text);
    zero.logprobs.token_logprobs.forEach((lp, i) => expect(lp).toBeCloseTo(base.logprobs.token_logprobs[i], 4));
    const twice = await run({ model: 'alpha', lora_scale: 2 });
    const merged = await run({ model: 'tiny', merged_adapters: { ids: ['alpha'], weights: [2] } });
    expect(twice.text).toBe(merged.text);
    twice.logprobs.token_logprobs.forEach((lp, i) => expect(lp).toBeCloseTo(merged.logprobs.token_logprobs[i], 4));
    for (const [extra, param] of [
      [{ model: 'tiny', lora_scale: 0.5 }, 'lora_scale'],
      [{ model: 'tiny', merged_adapters: { ids: ['alpha'], weights: [1] }, lora_scale: 0.5 }, 'lora_scale'],
    ] as const) {
      const r = await json('/v1/completions', { ...body, ...extra });
      expect(r.status).toBe(400);
      expect(((await r.json()) as { error: { param: string } }).error.param).toBe(param);
    }
    expect((await json('/v1/completions', { ...body, model: 'alpha', lora_scale: 1000 })).status).toBe(400);
    // LoRAX's adapter_parameters with one id on the TGI route: the same scaled adapter.
    const tgi = async (parameters: Record<string, unknown>): Promise<Response> => json('/generate', { inputs: 'Hello there', parameters: { max_new_tokens: 6, ...parameters } });
    const scaled = (await (await tgi({ adapter_id: 'alpha', lora_scale: 2 })).json()) as { generated_text: string };
    expect(scaled.generated_text).toBe(twice.text);
    const byParameters = await tgi({ adapter_parameters: { ids: ['alpha'], weights: [2], merge_strategy: 'linear' } });
    expect(byParameters.status).toBe(200);
    expect(((await byParameters.json()) as { generated_text: string }).generated_text).toBe(twice.text);
    const both = await tgi({ adapter_parameters: { ids: ['alpha'], weights: [2] }, merged_adapters: { ids: ['alpha'], weights: [2] } });
    expect(both.status).toBe(422);
  });

  it('/info describes the model and the batching limits', async () => {
    const info = (await (await fetch(`${base}/info`)).json()) as Record<string, unknown>;
    expect(info).toMatchObject({ model_id: 'tiny', max_total_tokens: 256, model_device_type: 'cpu', router: 'loraplex', ready: true });
  });
});

describe('admin', () => {
  it('refuses without the token', async () => {
    const r = await fetch(`${base}/admin/adapters`);
    expect(r.status).toBe(401);
    expect(((await r.json()) as { error: { type: string } }).error.type).toBe('authentication_error');
  });

  it('upload → completion with the new adapter → replace → delete', async () => {
    const up = await admin('/admin/adapters', { method: 'POST', body: form({ name: 'fresh' }, peftFiles(upload)) });
    expect(up.status).toBe(201);
    const v1 = (await up.json()) as { digest: string };
    expect(v1).toMatchObject({ name: 'fresh', source: 'upload', rank: 2, digest: expect.stringMatching(/^[0-9a-f]{64}$/) });
    const prompt = [100, 200, 300];
    const first = (await (await json('/v1/completions', { model: 'fresh', prompt, max_tokens: 3, temperature: 0 })).json()) as { choices: { text: string }[] };
    expect(first.choices[0].text).toBe(qwen.decode(referenceGreedy(prompt, upload.lora, 3)));
    const again = await admin('/admin/adapters', { method: 'POST', body: form({ name: 'fresh' }, peftFiles(upload)) });
    expect(again.status).toBe(409);
    const put = await admin('/admin/adapters/fresh', { method: 'PUT', body: form({}, peftFiles(upload2)) });
    expect(put.status).toBe(200);
    const v2 = (await put.json()) as { digest: string };
    expect(v2).toMatchObject({ name: 'fresh', rank: 6 });
    expect(v2.digest).not.toBe(v1.digest);
    const second = (await (await json('/v1/completions', { model: 'fresh', prompt, max_tokens: 3, temperature: 0 })).json()) as { choices: { text: string }[] };
    expect(second.choices[0].text).toBe(qwen.decode(referenceGreedy(prompt, upload2.lora, 3)));
    const list = (await (await admin('/admin/adapters')).json()) as { data: { name: string }[] };
    expect(list.data.map((d) => d.name)).toContain('fresh');
    const del = await admin('/admin/adapters/fresh', { method: 'DELETE' });
    expect(del.status).toBe(202);
    expect(await del.json()).toEqual({ name: 'fresh', digest: v2.digest, deleted: true });
    expect((await json('/v1/completions', { model: 'fresh', prompt, max_tokens: 1 })).status).toBe(404);
  });

  it('accepts a .tar.gz and a .zip upload (org/name), load and unload', async () => {
    const tgz = await tarGz([{ name: 'adapter/', type: 'directory' }, ...peftFiles(upload).map((f) => ({ name: `adapter/${f.name}`, data: f.data }))]);
    const r1 = await admin('/admin/adapters', { method: 'POST', body: form({ name: 'org1/from-tgz' }, [{ name: 'adapter.tar.gz', data: tgz }]) });
    expect(r1.status).toBe(201);
    const r2 = await admin('/admin/adapters', { method: 'POST', body: form({ name: 'from-zip' }, [{ name: 'a.zip', data: zip(peftFiles(upload2)) }]) });
    expect(r2.status).toBe(201);
    expect((await admin('/admin/adapters/org1/from-tgz')).status).toBe(200);
    expect(await (await admin('/admin/adapters/org1/from-tgz/load', { method: 'POST' })).json()).toEqual({ name: 'org1/from-tgz', loaded: true });
    expect(await (await admin('/admin/adapters/from-zip/unload', { method: 'POST' })).json()).toEqual({ name: 'from-zip', unloaded: true });
    expect((await json('/v1/completions', { model: 'org1/from-tgz', prompt: 'x', max_tokens: 2 })).status).toBe(200);
  });

  it.each([
    ['a path with ..', async () => tarGz([{ name: '../adapter_config.json', data: Buffer.from('{}') }]), 'x.tar.gz', /contains '\.\.'/],
    ['an absolute path', async () => tarGz([{ name: '/etc/adapter_config.json', data: Buffer.from('{}') }]), 'x.tar.gz', /absolute path/],
    ['a symlink', async () => tarGz([{ name: 'adapter_config.json', type: 'symlink', linkname: '/etc/passwd' }]), 'x.tar.gz', /is a symlink; only regular files/],
    ['an unexpected file', async () => tarGz([{ name: 'run.sh', data: Buffer.from('rm -rf /') }]), 'x.tar.gz', /unexpected file "run.sh"/],
    ['a zip symlink', async () => zip([{ name: 'adapter_config.json', data: Buffer.from('/etc/passwd'), mode: 0o120777 }]), 'x.zip', /is not a regular file/],
    ['garbage', async () => Buffer.from('not an archive at all'), 'x.tar.gz', /not a valid gzip archive/],
    ['a pickle', async () => tarGz([{ name: 'adapter_model.bin', data: Buffer.from('pickle') }]), 'x.tar.gz', /adapter_model.bin is a pickle/],
  ])('refuses an archive with %s and leaves nothing behind', async (_what, make, filename, message) => {
    const r = await admin('/admin/adapters', { method: 'POST', body: form({ name: 'evil' }, [{ name: filename, data: await make() }]) });
    expect(r.status).toBe(400);
    expect(((await r.json()) as { error: { message: string } }).error.message).toMatch(message);
    expect(existsSync(join(storeDir, 'evil'))).toBe(false);
    expect(readdirSync(join(storeDir, '.loraplex', 'staging'))).toEqual([]);
  });

  it('refuses an adapter that does not fit the base model (422) and a bad name (400)', async () => {
    const other = makeTinyModel({ flavour: 'qwen2', seed: 7, vocabSize: 1000, hiddenSize: 32, numHeads: 2, numKvHeads: 1, intermediateSize: 64 });
    const misfit = makeTinyAdapter(other, { seed: 8 });
    const r = await admin('/admin/adapters', { method: 'POST', body: form({ name: 'misfit' }, peftFiles(misfit)) });
    expect(r.status).toBe(422);
    expect(((await r.json()) as { error: { message: string } }).error.message).toMatch(/has shape \[4,32\], expected \[4,64\]/);
    expect(existsSync(join(storeDir, 'misfit'))).toBe(false);
    const bad = await admin('/admin/adapters', { method: 'POST', body: form({ name: '../etc' }, peftFiles(upload)) });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { error: { param: string } }).error.param).toBe('name');
  });

  it('refuses an upload over the size limit with 413 and keeps serving', async () => {
    const big = Buffer.alloc(11_000_000, 1);
    const r = await admin('/admin/adapters', { method: 'POST', body: form({ name: 'huge' }, [{ name: 'adapter_model.safetensors', data: big }, peftFiles(upload)[0]]) });
    expect(r.status).toBe(413);
    expect((await fetch(`${base}/health`)).status).toBe(200);
  });

  it("vLLM's load/unload_lora_adapter need --lora-roots", async () => {
    const r = await admin('/v1/load_lora_adapter', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ lora_name: 'p', lora_path: upload.dir }) });
    expect(r.status).toBe(400);
    expect(((await r.json()) as { error: { message: string } }).error.message).toMatch(/configure --lora-roots/);
  });
});

describe('errors and malformed input', () => {
  it('prompt + max_tokens beyond the context is a 400 naming both numbers', async () => {
    const r = await json('/v1/completions', { model: 'tiny', prompt: [1, 2, 3], max_tokens: 300 });
    expect(r.status).toBe(400);
    expect(await r.json()).toEqual({
      error: {
        message: 'max_tokens + prompt tokens must be <= 256 (the context length); given 3 prompt tokens and 300 max_tokens',
        type: 'invalid_request_error',
        param: 'max_tokens',
        code: 'context_length_exceeded',
      },
      message: 'max_tokens + prompt tokens must be <= 256 (the context length); given 3 prompt tokens and 300 max_tokens',
    });
  });

  const cases: [string, string, unknown, number, RegExp][] = [
    ['missing messages', '/v1/chat/completions', { model: 'tiny' }, 400, /messages is required/],
    ['empty messages', '/v1/chat/completions', { model: 'tiny', messages: [] }, 400, /^invalid request: messages must NOT have fewer than 1 items$/],
    ['wrong type', '/v1/chat/completions', { model: 'tiny', messages: 'hi' }, 400, /^invalid request: messages must be array$/],
    ['negative max_tokens', '/v1/completions', { model: 'tiny', prompt: 'x', max_tokens: -5 }, 400, /max_tokens/],
    ['huge max_tokens', '/v1/completions', { model: 'tiny', prompt: 'x', max_tokens: 1e15 }, 400, /max_tokens/],
    ['temperature too high', '/v1/completions', { model: 'tiny', prompt: 'x', temperature: 9 }, 400, /temperature/],
    ['NaN-like top_p', '/v1/completions', { model: 'tiny', prompt: 'x', top_p: 'NaN' }, 400, /top_p/],
    ['token id outside the vocabulary', '/v1/completions', { model: 'tiny', prompt: [1, 99999999] }, 400, /outside the vocabulary/],
    ['logit_bias key not a token', '/v1/completions', { model: 'tiny', prompt: 'x', logit_bias: { abc: 1 } }, 400, /logit_bias/],
    ['image content', '/v1/chat/completions', { model: 'tiny', messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'x' } }] }] }, 422, /only text/],
    ['n too large', '/v1/completions', { model: 'tiny', prompt: 'x', n: 100 }, 400, /^invalid request: n must be <= 16$/],
    ['empty stop string', '/v1/completions', { model: 'tiny', prompt: 'x', stop: [''] }, 400, /stop/],
    ['generate without inputs', '/generate', { parameters: {} }, 422, /inputs is required/],
  ];
  it.each(cases)('%s → %s', async (_name, path, body, status, message) => {
    const r = await json(path, body);
    expect(r.status).toBe(status);
    const e = (await r.json()) as { error: { message: string; type: string } | string; error_type?: string };
    if (path === '/generate') {
      expect(e.error).toMatch(message);
      expect(e.error_type).toBe('validation');
    } else {
      expect((e.error as { message: string }).message).toMatch(message);
      expect(typeof (e.error as { type: string }).type).toBe('string');
    }
  });

  it('invalid JSON, invalid UTF-8, wrong content type and oversized bodies are 4xx; the server stays healthy', async () => {
    const raw = (body: string | Buffer, type = 'application/json') => fetch(`${base}/v1/completions`, { method: 'POST', headers: { 'content-type': type }, body });
    expect((await raw('{"model": "tiny", "prompt": ')).status).toBe(400);
    expect((await raw(Buffer.from([0x7b, 0x22, 0x6d, 0xff, 0xfe, 0x22, 0x3a, 0x31, 0x7d]))).status).toBe(400);
    expect((await raw('model=tiny', 'text/plain')).status).toBe(415);
    expect((await raw(JSON.stringify({ model: 'tiny', prompt: 'x'.repeat(9 * 1024 * 1024) }))).status).toBe(413);
    const r = await json('/v1/completions', { model: 'tiny', prompt: 'still fine', max_tokens: 2 });
    expect(r.status).toBe(200);
    expect((await fetch(`${base}/health`)).status).toBe(200);
  });

  it('60 concurrent requests with random disconnects: every survivor completes, nothing leaks', async () => {
    const rand = prng(12345);
    const models = ['tiny', 'alpha', 'acme/beta'];
    const results = await Promise.all(
      Array.from({ length: 60 }, async (_, i) => {
        const ac = new AbortController();
        const abortAfter = rand() < 0.35 ? Math.floor(rand() * 200) : -1;
        if (abortAfter >= 0) setTimeout(() => ac.abort(), abortAfter);
        try {
          const r = await fetch(`${base}/v1/completions`, {
            method: 'POST',
            headers: { 'content-type': 'application/json' },
            body: JSON.stringify({ model: models[i % 3], prompt: `request ${i}`, max_tokens: 8, stream: i % 2 === 0, ignore_eos: true }),
            signal: ac.signal,
          });
          const text = await r.text();
          return { status: r.status, text, aborted: false };
        } catch {
          return { status: 0, text: '', aborted: true };
        }
      }),
    );
    for (const r of results.filter((x) => !x.aborted)) {
      expect(r.status).toBe(200);
      if (r.text.startsWith('data:')) expect(r.text.trim().endsWith('data: [DONE]')).toBe(true);
      else expect((JSON.parse(r.text) as { usage: { completion_tokens: number } }).usage.completion_tokens).toBe(8);
    }
    const deadline = Date.now() + 120_000;
    let stats = await server.ctx.engine!.stats();
    while ((stats.running > 0 || stats.waiting > 0 || stats.kvReservedTokens > 0 || stats.kvUsedTokens > 0) && Date.now() < deadline) {
      await new Promise((res) => setTimeout(res, 50));
      stats = await server.ctx.engine!.stats();
    }
    expect(stats).toMatchObject({ running: 0, waiting: 0, kvReservedTokens: 0, kvUsedTokens: 0 });
    expect((await fetch(`${base}/health`)).status).toBe(200);
  });

  it('a client that disconnects mid-stream is cancelled: it stops before its max_tokens', async () => {
    const before = await server.ctx.engine!.stats();
    const r = await json('/v1/completions', { model: 'alpha', prompt: 'x', max_tokens: 250, stream: true, ignore_eos: true });
    const reader = r.body!.getReader();
    await reader.read();
    await reader.cancel();
    const deadline = Date.now() + 120_000;
    let stats = await server.ctx.engine!.stats();
    while ((stats.running > 0 || stats.waiting > 0) && Date.now() < deadline) {
      await new Promise((res) => setTimeout(res, 20));
      stats = await server.ctx.engine!.stats();
    }
    expect(stats.running).toBe(0);
    expect(stats.cancelledRunning - before.cancelledRunning).toBe(1);
    expect(stats.generatedTokens - before.generatedTokens).toBeLessThan(250);
  });
});

describe('ops', () => {
  it('advertises a keep-alive timeout well below the one it enforces, so a client never reuses a connection the server is closing', async () => {
    const res = await fetch(`${base}/health`);
    await res.text();
    const advertised = Number(/timeout=(\d+)/.exec(res.headers.get('keep-alive') ?? '')?.[1]);
    const enforced = server.app.server.keepAliveTimeout / 1000;
    // Clients (undici, proxies) keep an idle connection until just before the advertised timeout;
    // on a busy machine their timer fires late, so the margin must cover a stalled event loop.
    expect(enforced - advertised).toBeGreaterThanOrEqual(10);
    expect(advertised).toBeGreaterThanOrEqual(30);
  });

  it('/metrics exports requests, latency, tokens, cache counters and lora_requests_info', async () => {
    const text = await (await fetch(`${base}/metrics`)).text();
    for (const name of [
      'loraplex_requests_total',
      'loraplex_request_duration_seconds_bucket',
      'loraplex_time_to_first_token_seconds_bucket',
      'loraplex_generated_tokens_total',
      'loraplex_queue_depth',
      'loraplex_running_requests',
      'loraplex_adapter_cache_hits_total',
      'loraplex_adapter_loads_total',
      'loraplex_adapter_cache_evictions_total',
      'loraplex_grammar_late_masks',
    ]) {
      expect(text).toContain(name);
    }
    expect(text).toMatch(/lora_requests_info\{running_lora_adapters="[^"]*",waiting_lora_adapters="[^"]*",max_lora="8"\} \d/);
    // TGI requests are labelled with their adapter too.
    expect(text).toMatch(/loraplex_requests_total\{route="\/generate",status="200",adapter="alpha"\} \d/);
  });

  it('counts a streamed request once', async () => {
    const count = async (): Promise<number> => {
      const text = await (await fetch(`${base}/metrics`)).text();
      const m = /loraplex_requests_total\{route="\/v1\/chat\/completions",status="200",adapter="acme\/beta"\} (\d+)/.exec(text);
      return m ? Number(m[1]) : 0;
    };
    const before = await count();
    const r = await json('/v1/chat/completions', { model: 'acme/beta', messages: [{ role: 'user', content: 'x' }], max_tokens: 2, stream: true });
    await r.text();
    await new Promise((res) => setTimeout(res, 50));
    expect(await count()).toBe(before + 1);
  });

  it('/openapi.json is served and equals the committed openapi/openapi.json', async () => {
    const served = await (await fetch(`${base}/openapi.json`)).json();
    const committed = JSON.parse(readFileSync(join(import.meta.dirname, '../../openapi/openapi.json'), 'utf8')) as { paths: object };
    // The whole document, not only its paths (a server with the admin routes serves all of it).
    expect(served).toEqual(committed);
    expect((await fetch(`${base}/docs`)).status).toBe(200);
  });
});

describe('every route through app.inject', () => {
  it.each([
    ['GET', '/health', undefined, 200],
    ['GET', '/v1/models', undefined, 200],
    ['POST', '/v1/chat/completions', { model: 'alpha', messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 }, 200],
    ['POST', '/v1/completions', { model: 'tiny', prompt: 'hi', max_tokens: 2 }, 200],
    ['POST', '/generate', { inputs: 'hi', parameters: { max_new_tokens: 2 } }, 200],
    ['POST', '/generate_stream', { inputs: 'hi', parameters: { max_new_tokens: 2 } }, 200],
    ['GET', '/info', undefined, 200],
    ['GET', '/metrics', undefined, 200],
    ['GET', '/openapi.json', undefined, 200],
    ['GET', '/admin/adapters', undefined, 200],
    ['GET', '/admin/adapters/alpha', undefined, 200],
    ['GET', '/admin/adapters/acme/beta', undefined, 200],
    ['POST', '/admin/adapters/alpha/load', undefined, 200],
    ['POST', '/admin/adapters/alpha/unload', undefined, 200],
    ['POST', '/admin/adapters', undefined, 400],
    ['PUT', '/admin/adapters/alpha', undefined, 400],
    ['DELETE', '/admin/adapters/does-not-exist', undefined, 404],
    ['POST', '/v1/load_lora_adapter', { lora_name: 'x', lora_path: '/tmp' }, 400],
    ['POST', '/v1/unload_lora_adapter', { lora_name: 'does-not-exist' }, 404],
    ['GET', '/no/such/route', undefined, 404],
  ] as const)('%s %s → %s', async (method, url, payload, status) => {
    const r = await server.app.inject({ method, url, payload: payload as object | undefined, headers: { authorization: `Bearer ${ADMIN}` } });
    expect(r.statusCode, r.body).toBe(status);
    if (status >= 400) expect(r.json()).toHaveProperty('error');
  });
});

describe('a second server', () => {
  it('answers 503 on /health until the model is ready, and requires API keys when configured', async () => {
    const other = await startServer(testConfig({ model: tm.dir, port: 0, host: '127.0.0.1', apiKeys: 'k1,k2' }), { logger: false });
    try {
      // The server listens before the engine worker has built and loaded the model.
      const early = await fetch(`${other.url}/health`);
      expect(early.status).toBe(503);
      expect(await early.json()).toEqual({ status: 'loading' });
      await other.ready;
      expect((await fetch(`${other.url}/health`)).status).toBe(200);
      const no = await fetch(`${other.url}/v1/models`);
      expect(no.status).toBe(401);
      const yes = await fetch(`${other.url}/v1/models`, { headers: { authorization: 'Bearer k2' } });
      expect(yes.status).toBe(200);
      expect((await fetch(`${other.url}/admin/adapters`)).status).toBe(404);
      // Once the engine stops (shutdown or crash), health says so and requests get 503.
      await other.ctx.engine!.close(1000);
      const down = await fetch(`${other.url}/health`);
      expect(down.status).toBe(503);
      expect(await down.json()).toEqual({ status: 'stopped' });
      const refused = await fetch(`${other.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: 'Bearer k1' }, body: JSON.stringify({ model: other.ctx.baseId, prompt: 'x' }) });
      expect(refused.status).toBe(503);
    } finally {
      await other.close();
    }
  });

  it('logs request id, adapter and token counts, and prompt text only with --log-prompts', async () => {
    for (const logPrompts of [false, true]) {
      const lines: string[] = [];
      const stream = new Writable({
        write(chunk: Buffer, _enc, cb) {
          lines.push(chunk.toString());
          cb();
        },
      });
      const other = await startServer(testConfig({ model: tm.dir, port: 0, host: '127.0.0.1', logPrompts }), { logStream: stream });
      try {
        await other.ready;
        const r = await fetch(`${other.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: other.ctx.baseId, prompt: 'SECRET-PROMPT-TEXT', max_tokens: 2 }) });
        expect(r.status).toBe(200);
      } finally {
        await other.close();
      }
      const gen = lines.map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l.msg === 'generation')!;
      expect(gen).toMatchObject({ adapter: 'base', completionTokens: 2 });
      expect(typeof gen.reqId).toBe('string');
      expect(lines.join('').includes('SECRET-PROMPT-TEXT')).toBe(logPrompts);
    }
  });

  it("vLLM's load_lora_adapter registers an adapter under --lora-roots and unload removes it", async () => {
    const root = tempDir('loraplex-roots-');
    const dir = join(root, 'a1');
    mkdirSync(dir);
    makeTinyAdapter(tm, { seed: 111 }, dir);
    const other = await startServer(testConfig({ model: tm.dir, port: 0, host: '127.0.0.1', adminToken: ADMIN, loraRoots: root }), { logger: false });
    try {
      await other.ready;
      const post = (path: string, body: unknown) =>
        fetch(`${other.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${ADMIN}` }, body: JSON.stringify(body) });
      const r = await post('/v1/load_lora_adapter', { lora_name: 'dyn', lora_path: dir });
      expect(r.status).toBe(200);
      expect(await r.text()).toBe("Success: LoRA adapter 'dyn' added successfully.");
      expect((await post('/v1/load_lora_adapter', { lora_name: 'outside', lora_path: upload.dir })).status).toBe(400);
      const c = await fetch(`${other.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'dyn', prompt: 'x', max_tokens: 2 }) });
      expect(c.status).toBe(200);
      expect((await post('/v1/unload_lora_adapter', { lora_name: 'dyn' })).status).toBe(200);
      expect(existsSync(dir)).toBe(true);
    } finally {
      await other.close();
    }
  });
});
