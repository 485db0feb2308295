/**
 * Tenant isolation, tried the way a hostile client would from the network: no request may change
 * another tenant's answers, hold on to rows after its client left, leak bookkeeping, or get work
 * done before it is refused. A real server (engine worker, tiny model, Qwen3's real tokenizer).
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { connect } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type RunningServer } from '../../src/server/serve.js';
import { zip } from '../helpers/archives.js';
import { ADMIN, engineIdle, postJson, referenceGreedy, testConfig, tinyQwen, until } from '../helpers/server.js';
import { loadTokenizer } from '../helpers/tokenizers.js';
import { makeTinyAdapter, tempDir } from '../helpers/tiny-model.js';

const tm = tinyQwen(201);
const qwen = loadTokenizer('qwen3');
const storeDir = tempDir('loraplex-iso-store-');
const alpha = makeTinyAdapter(tm, { seed: 202, r: 4 }, join(storeDir, 'alpha'));
const beta = makeTinyAdapter(tm, { seed: 203, r: 8, targets: ['q_proj', 'v_proj'] }, join(storeDir, 'beta'));
// An adapter whose own template is fast for ordinary conversations but loops for ever on "slow".
const slowTemplate = makeTinyAdapter(tm, { seed: 204, r: 2 }, join(storeDir, 'slow-template'));
writeFileSync(
  join(slowTemplate.dir, 'tokenizer_config.json'),
  JSON.stringify({
    chat_template:
      "{% for m in messages %}{% if m.content == 'slow' %}{% for i in range(1000000000) %}{{ '' }}{% endfor %}{% endif %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}<|im_start|>assistant\n",
  }),
);
// Valid headers, NaN weights: discovery (headers only) registers it; loading it must fail cleanly.
const nanAdapter = makeTinyAdapter(tm, { seed: 205, r: 2, targets: ['q_proj'] }, join(storeDir, 'nan-weights'));
{
  const path = join(nanAdapter.dir, 'adapter_model.safetensors');
  const buf = readFileSync(path);
  const headerLen = Number(buf.readBigUInt64LE(0));
  buf.writeFloatLE(NaN, 8 + headerLen);
  writeFileSync(path, buf);
}

let server: RunningServer;
let base: string;

beforeAll(async () => {
  server = await startServer(
    testConfig({ model: tm.dir, adapters: storeDir, adminToken: ADMIN, port: 0, host: '127.0.0.1', servedModelName: 'tiny', promptTimeoutMs: 1500, bodyTimeoutMs: 600, headersTimeoutMs: 600 }),
    { logger: false },
  );
  await server.ready;
  base = server.url;
});
afterAll(async () => {
  await server?.close(0);
});

const post = (path: string, body: unknown, headers: Record<string, string> = {}) => postJson(base, path, body, headers);
const admin = (path: string, init: RequestInit = {}) => fetch(`${base}${path}`, { ...init, headers: { authorization: `Bearer ${ADMIN}`, ...(init.headers as Record<string, string>) } });

async function greedyText(model: string, prompt: number[], n: number): Promise<{ status: number; text: string }> {
  const r = await post('/v1/completions', { model, prompt, max_tokens: n, temperature: 0 });
  const body = (await r.json()) as { choices?: { text: string }[] };
  return { status: r.status, text: body.choices?.[0].text ?? '' };
}

describe('1. non-finite LoRA values cannot reach other rows', () => {
  it('merge weights are bounded with a 400 naming the field', async () => {
    const r = await post('/v1/completions', { model: 'tiny', prompt: 'x', max_tokens: 1, merged_adapters: { ids: ['alpha'], weights: [1e39] } });
    expect(r.status).toBe(400);
    expect(((await r.json()) as { error: { param: string; message: string } }).error).toMatchObject({ param: 'merged_adapters.weights', message: expect.stringMatching(/between -100 and 100; given 1e\+39/) });
  });

  it('a hostile combination batched with other tenants leaves their greedy answers exact, and logprobs keep working', async () => {
    const prompt = [9707, 11, 1879, 13];
    const want = {
      tiny: qwen.decode(referenceGreedy(tm, prompt, null, 6)),
      alpha: qwen.decode(referenceGreedy(tm, prompt, alpha.lora, 6)),
      beta: qwen.decode(referenceGreedy(tm, prompt, beta.lora, 6)),
    };
    for (let round = 0; round < 3; round++) {
      const hostile = post('/v1/completions', { model: 'tiny', prompt, max_tokens: 6, ignore_eos: true, merged_adapters: { ids: ['alpha', 'beta'], weights: [100, -100] } });
      const others = await Promise.all((['tiny', 'alpha', 'beta'] as const).map((m) => greedyText(m, prompt, 6)));
      expect(others.map((o) => o.text)).toEqual([want.tiny, want.alpha, want.beta]);
      expect([200, 500]).toContain((await hostile).status);
    }
    const lp = await post('/v1/completions', { model: 'alpha', prompt, max_tokens: 3, logprobs: 2 });
    expect(lp.status).toBe(200);
  });

  it('an adapter whose weights are not finite fails to load with its own error code; the server keeps serving', async () => {
    const load = await admin('/admin/adapters/nan-weights/load', { method: 'POST' });
    expect(load.status).toBe(422);
    expect(((await load.json()) as { error: { code: string; message: string } }).error).toMatchObject({ code: 'adapter_invalid', message: expect.stringMatching(/is not a finite float32 value/) });
    const r = await post('/v1/completions', { model: 'nan-weights', prompt: 'x', max_tokens: 2 });
    expect(r.status).toBe(424);
    expect((await greedyText('alpha', [1, 2, 3], 2)).status).toBe(200);
  });
});

describe('2. the engine receives only token ids', () => {
  it('a 7.5 MB chat message is refused before anything is tokenized, and never reaches the engine', async () => {
    const before = (await server.ctx.engine!.stats()).submitted;
    const r = await post('/v1/chat/completions', { model: 'tiny', messages: [{ role: 'user', content: 'y'.repeat(7_500_000) }], max_tokens: 1 });
    expect(r.status).toBe(400);
    expect(((await r.json()) as { error: { code: string } }).error.code).toBe('context_length_exceeded');
    expect((await server.ctx.engine!.stats()).submitted).toBe(before);
  });

  it("a template that loops on one input is stopped at its budget with a 400, while other tenants' streams go on", async () => {
    const before = (await server.ctx.engine!.stats()).submitted;
    const stream = post('/v1/completions', { model: 'alpha', prompt: 'a running stream', max_tokens: 40, stream: true, ignore_eos: true }).then((r) => r.text());
    const r = await post('/v1/chat/completions', { model: 'slow-template', messages: [{ role: 'user', content: 'slow' }], max_tokens: 1 });
    expect(r.status).toBe(400);
    expect(((await r.json()) as { error: { code: string; message: string } }).error).toMatchObject({ code: 'prompt_too_expensive', message: expect.stringMatching(/budget of 1500 ms/) });
    expect((await stream).trim().endsWith('data: [DONE]')).toBe(true);
    expect((await server.ctx.engine!.stats()).submitted).toBe(before + 1);
    // The same adapter still serves ordinary conversations.
    const ok = await post('/v1/chat/completions', { model: 'slow-template', messages: [{ role: 'user', content: 'fast' }], max_tokens: 2 });
    expect(ok.status).toBe(200);
  });

  it('free-form fields nested too deep or too large are refused by the cheap caps', async () => {
    // (Written by hand: JSON.stringify itself cannot nest this deep.)
    const deep = `${'['.repeat(5000)}1${']'.repeat(5000)}`;
    const body = `{"model":"alpha","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f","parameters":${deep}}}]}`;
    const r = await fetch(`${base}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
    expect(r.status).toBe(400);
    expect(((await r.json()) as { error: { param: string } }).error.param).toBe('tools');
    const many = await post('/v1/completions', { model: 'tiny', prompt: 'x', logit_bias: Object.fromEntries(Array.from({ length: 5000 }, (_, i) => [String(i), 1])) });
    expect(many.status).toBe(400);
    expect(((await many.json()) as { error: { message: string } }).error.message).toMatch(/at most 1024 entries/);
  });
});

/** Sends a request and drops the connection after `afterMs` (before any response byte for small values). */
function dropAfter(path: string, body: unknown, afterMs: number): Promise<void> {
  return new Promise((resolve) => {
    const data = JSON.stringify(body);
    const req = httpRequest(`${base}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) } });
    req.on('error', () => resolve());
    req.on('close', () => resolve());
    req.on('response', (res) => {
      res.on('error', () => {});
      res.destroy();
    });
    req.end(data);
    setTimeout(() => req.destroy(), afterMs);
  });
}

describe('3. a client that goes away is cancelled, on every route, at every moment', () => {
  it.each([
    ['/v1/completions', { model: 'alpha', prompt: 'tell me a long story', max_tokens: 200, ignore_eos: true, stream: true }],
    ['/v1/completions', { model: 'tiny', prompt: 'tell me a long story', max_tokens: 200, ignore_eos: true }],
    ['/v1/chat/completions', { model: 'beta', messages: [{ role: 'user', content: 'tell me a long story' }], max_tokens: 200, ignore_eos: true, stream: true }],
    ['/v1/chat/completions', { model: 'alpha', messages: [{ role: 'user', content: 'tell me a long story' }], max_tokens: 200, ignore_eos: true, n: 2 }],
    ['/generate_stream', { inputs: 'tell me a long story', parameters: { adapter_id: 'alpha', max_new_tokens: 200 } }],
    ['/generate', { inputs: 'tell me a long story', parameters: { max_new_tokens: 200 } }],
    ['/v1/responses', { model: 'beta', input: 'tell me a long story', max_output_tokens: 200, temperature: 0, stream: true }],
    ['/v1/responses', { model: 'alpha', input: 'tell me a long story', max_output_tokens: 200, temperature: 0 }],
    ['/v1/messages', { model: 'alpha', messages: [{ role: 'user', content: 'tell me a long story' }], max_tokens: 200, temperature: 0, stream: true }],
    ['/v1/messages', { model: 'beta', messages: [{ role: 'user', content: 'tell me a long story' }], max_tokens: 200, temperature: 0 }],
  ] as const)('%s %j', async (path, body) => {
    const n = 'n' in body ? body.n : 1;
    await engineIdle(server);
    const before = await server.ctx.engine!.stats();
    const earlyBefore = server.ctx.cancelledBeforeSubmit;
    const delays = [0, 1, 2, 5, 10, 20, 40, 80];
    await Promise.all(delays.map((d) => dropAfter(path, body, d)));
    const after = await engineIdle(server);
    const reached = after.submitted - before.submitted;
    const cancelled = after.cancelledWaiting + after.cancelledRunning - before.cancelledWaiting - before.cancelledRunning;
    // Every request that reached the engine was cancelled, none ran to its end, and nothing leaks.
    expect(cancelled).toBe(reached);
    expect(after.generatedTokens - before.generatedTokens).toBeLessThan(Math.max(1, reached) * 200);
    expect(reached + (server.ctx.cancelledBeforeSubmit - earlyBefore)).toBeLessThanOrEqual(delays.length * n);
    expect(after).toMatchObject({ running: 0, waiting: 0, kvReservedTokens: 0, kvUsedTokens: 0 });
    await until(() => server.ctx.inflight.of('alpha') === 0 && server.ctx.inflight.of('beta') === 0 && server.ctx.admission.waiting === 0);
  });

  it('a client that disconnects mid-stream is cancelled before it generates its max_tokens', async () => {
    await engineIdle(server);
    const before = await server.ctx.engine!.stats();
    const ac = new AbortController();
    const r = await fetch(`${base}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'alpha', prompt: 'x', max_tokens: 220, stream: true, ignore_eos: true }),
      signal: ac.signal,
    });
    const reader = r.body!.getReader();
    await reader.read();
    ac.abort();
    const after = await engineIdle(server);
    expect(after.cancelledRunning - before.cancelledRunning).toBe(1);
    expect(after.generatedTokens - before.generatedTokens).toBeLessThan(220);
  });
});

describe('4. a request that fails before the engine leaks nothing', () => {
  it('5,000 nested [ in tool_calls is a 400 and the adapter has nothing in flight afterwards', async () => {
    const deep = `${'['.repeat(5000)}${']'.repeat(5000)}`;
    const body = `{"model":"alpha","messages":[{"role":"user","content":"x"},{"role":"assistant","content":null,"tool_calls":${deep}}]}`;
    const r = await fetch(`${base}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
    expect(r.status).toBe(400);
    expect(((await r.json()) as { error: { param: string } }).error.param).toBe('messages[1].tool_calls');
    expect(server.ctx.inflight.of('alpha')).toBe(0);
    expect(server.ctx.admission.waiting).toBe(0);
  });
});

describe('5. admission', () => {
  it('overload is refused at once with 429 and Retry-After; refused requests never reach the engine', async () => {
    const small = await startServer(testConfig({ model: tm.dir, port: 0, host: '127.0.0.1', servedModelName: 'tiny', maxQueuedRequests: 2, maxBatchSize: 1 }), { logger: false });
    try {
      await small.ready;
      const before = (await small.ctx.engine!.stats()).submitted;
      const results = await Promise.all(
        Array.from({ length: 12 }, () => postJson(small.url, '/v1/completions', { model: 'tiny', prompt: 'x', max_tokens: 30, ignore_eos: true }).then(async (r) => ({ status: r.status, retry: r.headers.get('retry-after'), body: await r.text() }))),
      );
      const refused = results.filter((r) => r.status === 429);
      expect(refused.length).toBeGreaterThan(0);
      for (const r of refused) {
        expect(Number(r.retry)).toBeGreaterThanOrEqual(1);
        expect(JSON.parse(r.body)).toMatchObject({ error: { code: 'overloaded', type: 'rate_limit_error' } });
      }
      const served = results.filter((r) => r.status === 200).length;
      expect(served + refused.length).toBe(12);
      expect((await small.ctx.engine!.stats()).submitted - before).toBe(served);
      const tgi = await Promise.all(Array.from({ length: 8 }, () => postJson(small.url, '/generate', { inputs: 'x', parameters: { max_new_tokens: 30 } })));
      const tgiRefused = tgi.filter((r) => r.status === 429);
      expect(tgiRefused.length).toBeGreaterThan(0);
      expect(await tgiRefused[0].json()).toMatchObject({ error_type: 'overloaded' });
    } finally {
      await small.close(0);
    }
  });
});

/** Writes raw bytes on a fresh connection and collects what comes back until the server closes it. */
function raw(bytes: string): Promise<string> {
  return new Promise((resolve) => {
    const url = new URL(base);
    const sock = connect(Number(url.port), url.hostname);
    let got = '';
    sock.on('data', (d) => (got += d.toString()));
    sock.on('close', () => resolve(got));
    sock.on('error', () => resolve(got));
    sock.write(bytes);
  });
}

describe('6. slow clients and shutdown', () => {
  it('a body that stops arriving gets 408 and the connection is closed', async () => {
    const got = await raw('POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{"model":"t');
    expect(got).toMatch(/^HTTP\/1.1 408/);
    expect(got).toMatch(/"code":"request_timeout"/);
  });

  it('headers that stop arriving get 408 and the connection is closed', async () => {
    const got = await raw('POST /v1/completions HTTP/1.1\r\nhost: x\r\n');
    expect(got).toMatch(/^HTTP\/1.1 408/);
  });

  it('while draining, /health answers 503 and new requests are refused while a running stream finishes', async () => {
    const other = await startServer(testConfig({ model: tm.dir, port: 0, host: '127.0.0.1', servedModelName: 'tiny' }), { logger: false });
    await other.ready;
    const stream = postJson(other.url, '/v1/completions', { model: 'tiny', prompt: 'x', max_tokens: 150, ignore_eos: true, stream: true }).then((r) => r.text());
    await until(async () => (await other.ctx.engine!.stats()).running > 0);
    const closing = other.close(20000);
    const health = await fetch(`${other.url}/health`);
    expect(health.status).toBe(503);
    expect(await health.json()).toEqual({ status: 'draining' });
    const refused = await postJson(other.url, '/v1/completions', { model: 'tiny', prompt: 'x', max_tokens: 1 });
    expect(refused.status).toBe(503);
    expect(((await refused.json()) as { error: { code: string } }).error.code).toBe('shutting_down');
    expect((await stream).trim().endsWith('data: [DONE]')).toBe(true);
    await closing;
  });
});

function form(fields: Record<string, string>, files: { name: string; data: Buffer }[]): FormData {
  const f = new FormData();
  for (const [k, v] of Object.entries(fields)) f.append(k, v);
  for (const file of files) f.append('file', new Blob([file.data]), file.name);
  return f;
}

const filesOf = (dir: string, extra: Record<string, Buffer> = {}): { name: string; data: Buffer }[] => [
  { name: 'adapter_config.json', data: readFileSync(join(dir, 'adapter_config.json')) },
  { name: 'adapter_model.safetensors', data: readFileSync(join(dir, 'adapter_model.safetensors')) },
  ...Object.entries(extra).map(([name, data]) => ({ name, data })),
];

describe('7. uploads that could only fail later are refused at upload', () => {
  const upload = (name: string, files: { name: string; data: Buffer }[]) => admin('/admin/adapters', { method: 'POST', body: form({ name }, files) });
  const config = (dir: string, patch: Record<string, unknown>): Buffer => Buffer.from(JSON.stringify({ ...JSON.parse(readFileSync(join(dir, 'adapter_config.json'), 'utf8')), ...patch }));

  it.each([
    ['NaN weights', () => filesOf(nanAdapter.dir), 422, /not a finite float32 value/],
    ['lora_alpha 1e300', () => [{ name: 'adapter_config.json', data: config(alpha.dir, { lora_alpha: 1e300 }) }, filesOf(alpha.dir)[1]], 422, /above the limit of 10000/],
    ['lora_alpha 1e39', () => [{ name: 'adapter_config.json', data: config(alpha.dir, { lora_alpha: 1e39 }) }, filesOf(alpha.dir)[1]], 422, /above the limit of 10000/],
    ['a tokenizer_config.json that is not JSON', () => filesOf(alpha.dir, { 'tokenizer_config.json': Buffer.from('{not json') }), 422, /tokenizer_config.json is not valid JSON/],
    ['a chat template that does not parse', () => filesOf(alpha.dir, { 'tokenizer_config.json': Buffer.from(JSON.stringify({ chat_template: '{% for x in %}' })) }), 422, /does not parse/],
    ['a chat template that always loops', () => filesOf(alpha.dir, { 'tokenizer_config.json': Buffer.from(JSON.stringify({ chat_template: "{% for i in range(1000000000) %}{{ '' }}{% endfor %}" })) }), 422, /takes longer than 1500 ms/],
  ] as const)('%s → %s', async (_what, files, status, message) => {
    const r = await upload('refused', files());
    expect(r.status).toBe(status);
    expect(((await r.json()) as { error: { message: string } }).error.message).toMatch(message);
    expect((await post('/v1/completions', { model: 'refused', prompt: 'x', max_tokens: 1 })).status).toBe(404);
  });

  it('a safetensors header beyond the limit is refused without reading it', async () => {
    const dir = tempDir();
    mkdirSync(dir, { recursive: true });
    const pad = Buffer.alloc(9 * 1024 * 1024, 0x20);
    const file = Buffer.concat([Buffer.alloc(8), Buffer.from('{}'), pad]);
    file.writeBigUInt64LE(BigInt(2 + pad.length), 0);
    const r = await upload('big-header', [{ name: 'adapter_config.json', data: readFileSync(join(alpha.dir, 'adapter_config.json')) }, { name: 'adapter_model.safetensors', data: file }]);
    expect(r.status).toBe(422);
    expect(((await r.json()) as { error: { message: string } }).error.message).toMatch(/header length \d+ is impossible .* limit 8388608/);
  });

  it.each([
    ['smaller', (n: number) => 10 + 0 * n],
    ['larger', (n: number) => n + 1000],
  ])('a zip whose entry claims a %s size than it holds is a 400', async (_what, size) => {
    const lying = Buffer.from(zip(filesOf(alpha.dir)));
    // The first entry's uncompressed size, in its local header and in the central directory.
    const real = lying.readUInt32LE(22);
    lying.writeUInt32LE(size(real), 22);
    const central = lying.indexOf(Buffer.from([0x50, 0x4b, 0x01, 0x02]));
    lying.writeUInt32LE(size(real), central + 24);
    const r = await upload('lying-zip', [{ name: 'a.zip', data: lying }]);
    expect(r.status).toBe(400);
    expect((await r.json()) as object).toHaveProperty('error.message');
  });

  it.each([
    ['no boundary', 'multipart/form-data', '--x\r\ncontent-disposition: form-data; name="name"\r\n\r\nq\r\n--x--\r\n'],
    ['a wrong boundary', 'multipart/form-data; boundary=zzz', '--x\r\ncontent-disposition: form-data; name="name"\r\n\r\nq\r\n--x--\r\n'],
    ['a truncated part', 'multipart/form-data; boundary=x', '--x\r\ncontent-disposition: form-data; name="file"; filename="adapter_config.json"\r\n\r\n{"r":'],
  ])('a multipart body with %s is a 4xx', async (_what, type, body) => {
    const r = await admin('/admin/adapters', { method: 'POST', headers: { 'content-type': type }, body });
    expect(r.status).toBeGreaterThanOrEqual(400);
    expect(r.status).toBeLessThan(500);
    expect((await r.json()) as object).toHaveProperty('error.message');
  });
});

describe('8. small ones', () => {
  it('the wire keeps error codes: a broken adapter on /load answers adapter_invalid, not bad_request', async () => {
    const r = await admin('/admin/adapters/nan-weights/load', { method: 'POST' });
    expect(((await r.json()) as { error: { code: string } }).error.code).toBe('adapter_invalid');
  });

  it('API keys of any length are refused or accepted by value alone', async () => {
    const keyed = await startServer(testConfig({ model: tm.dir, port: 0, host: '127.0.0.1', apiKeys: 'k1,a-much-longer-key' }), { logger: false });
    try {
      await keyed.ready;
      for (const [key, status] of [['k1', 200], ['a-much-longer-key', 200], ['k', 401], ['k2', 401], ['a-much-longer-kez', 401], ['', 401]] as const) {
        expect((await fetch(`${keyed.url}/v1/models`, { headers: { authorization: `Bearer ${key}` } })).status, key).toBe(status);
      }
    } finally {
      await keyed.close(0);
    }
  });
});
