/**
 * The edges of the API contract: chat validation as strict as OpenAI's, OpenAI tool histories
 * rendered through the model's real chat template, /tokenize and /detokenize in vLLM's and TGI's
 * shapes, and framework-level failures in the route's error shape.
 */
import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type RunningServer } from '../../src/server/serve.js';
import { postJson, testConfig, tinyQwen } from '../helpers/server.js';
import { loadTokenizer } from '../helpers/tokenizers.js';

const tm = tinyQwen(801);
const qwen = loadTokenizer('qwen3');
let server: RunningServer;
beforeAll(async () => {
  server = await startServer(testConfig({ model: tm.dir, port: 0, host: '127.0.0.1', servedModelName: 'tiny' }), { logger: false });
  await server.ready;
});
afterAll(async () => {
  await server?.close(0);
});

const post = (path: string, body: unknown) => postJson(server.url, path, body);
const messagesOf = (m: unknown[]) => ({ model: 'tiny', messages: m, max_tokens: 1 });

describe('chat validation', () => {
  it.each([
    ['an unknown role', [{ role: 'wizard', content: 'x' }], 'messages[0].role'],
    ['no user or assistant turn', [{ role: 'system', content: 'x' }], 'messages'],
    ['a tool message without tool_call_id', [{ role: 'user', content: 'x' }, { role: 'tool', content: '1' }], 'messages[1].tool_call_id'],
    ['tool_calls on a user message', [{ role: 'user', content: 'x', tool_calls: [] }], 'messages[0].tool_calls'],
    ['a tool call whose arguments are not JSON', [{ role: 'user', content: 'x' }, { role: 'assistant', content: null, tool_calls: [{ id: 'c1', type: 'function', function: { name: 'f', arguments: '{oops' } }] }], 'messages[1].tool_calls[0].function.arguments'],
    ['null content without tool calls', [{ role: 'user', content: null }], 'messages[0].content'],
  ])('refuses %s with a 400 naming the field', async (_what, messages, param) => {
    const r = await post('/v1/chat/completions', messagesOf(messages));
    expect(r.status).toBe(400);
    expect(((await r.json()) as { error: { param: string } }).error.param).toBe(param);
  });

  it("renders a valid OpenAI tool history (null content + tool_calls, tool results) through the model's template", async () => {
    const tools = [{ type: 'function', function: { name: 'get_weather', description: 'Current weather', parameters: { type: 'object', properties: { city: { type: 'string' } } } } }];
    const messages = [
      { role: 'developer', content: 'You answer about weather.' },
      { role: 'user', content: 'Weather in Paris?' },
      { role: 'assistant', content: null, tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris"}' } }] },
      { role: 'tool', tool_call_id: 'call_1', content: '{"temp": 21}' },
    ];
    const chat = await post('/v1/chat/completions', { ...messagesOf(messages), tools });
    expect(chat.status, await chat.clone().text()).toBe(200);
    const tok = (await (await post('/tokenize', { model: 'tiny', messages, tools })).json()) as { tokens: number[]; count: number };
    const text = qwen.decode(tok.tokens, false);
    expect(text).toContain('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>');
    expect(text).toContain('<tool_response>\n{"temp": 21}\n</tool_response>');
    expect(text).toContain('You answer about weather.');
    expect(((await chat.json()) as { usage: { prompt_tokens: number } }).usage.prompt_tokens).toBe(tok.count);
  });
});

describe('/tokenize and /detokenize', () => {
  it("vLLM's shape: a prompt, chat messages (with the template), token strings; detokenize round-trips", async () => {
    const r = (await (await post('/tokenize', { model: 'tiny', prompt: 'Hello, wörld', return_token_strs: true })).json()) as { tokens: number[]; count: number; max_model_len: number; token_strs: string[] };
    expect(r.tokens).toEqual(qwen.encode('Hello, wörld'));
    expect(r).toMatchObject({ count: r.tokens.length, max_model_len: 256 });
    expect(r.token_strs.length).toBe(r.count);
    const back = (await (await post('/detokenize', { model: 'tiny', tokens: r.tokens })).json()) as { prompt: string };
    expect(back.prompt).toBe('Hello, wörld');
    const chat = (await (await post('/tokenize', { model: 'tiny', messages: [{ role: 'user', content: 'Hi' }] })).json()) as { tokens: number[] };
    expect(chat.tokens).toEqual(qwen.encode(qwen.chatTemplate!.render([{ role: 'user', content: 'Hi' }]), false));
    const bad = await post('/detokenize', { model: 'tiny', tokens: [1, 999999999] });
    expect(bad.status).toBe(400);
  });

  it("TGI's shape: tokens with their text and offsets; errors in TGI's shape", async () => {
    const r = (await (await post('/tokenize', { inputs: 'Hello world' })).json()) as { id: number; text: string; start: number; stop: number }[];
    expect(r.map((t) => t.id)).toEqual(qwen.encode('Hello world'));
    expect(r.map((t) => 'Hello world'.slice(t.start, t.stop)).join('')).toBe('Hello world');
    const bad = await post('/tokenize', { inputs: 'x', parameters: { adapter_id: 'nope' } });
    expect(bad.status).toBe(404);
    expect(await bad.json()).toMatchObject({ error: expect.stringMatching(/does not exist/), error_type: 'not_found' });
  });
});

/** Raw bytes on a fresh connection; what came back before the server closed it. */
function raw(bytes: string): Promise<string> {
  return new Promise((resolve) => {
    const url = new URL(server.url);
    const sock = connect(Number(url.port), url.hostname);
    let got = '';
    sock.on('data', (d) => (got += d.toString()));
    sock.on('close', () => resolve(got));
    sock.on('error', () => resolve(got));
    sock.end(bytes);
  });
}

describe('framework-level failures in the route shape', () => {
  it('oversized headers: 431 with an error body (TGI shape on TGI routes)', async () => {
    const big = 'x'.repeat(20_000);
    const openai = await raw(`POST /v1/completions HTTP/1.1\r\nhost: x\r\nx-big: ${big}\r\n\r\n`);
    expect(openai).toMatch(/^HTTP\/1.1 431/);
    expect(openai).toMatch(/"code":"header_too_large"/);
    const tgi = await raw(`POST /generate HTTP/1.1\r\nhost: x\r\nx-big: ${big}\r\n\r\n`);
    expect(tgi).toMatch(/^HTTP\/1.1 431/);
    expect(tgi).toMatch(/"error_type":"validation"/);
  });

  it('a malformed request line is a 400 with an error body', async () => {
    const got = await raw('BLAH\r\n\r\n');
    expect(got).toMatch(/^HTTP\/1.1 400/);
    expect(got).toMatch(/"error":/);
  });
});
