/**
 * Anthropic's Messages API through the official @anthropic-ai/sdk client against a real server:
 * text answers equal the independent reference forward pass on the prompt Qwen3's real chat
 * template renders; a tool call forced by tool_choice and its result sent back; thinking blocks
 * from a thinking-only template; stop sequences; count_tokens; x-api-key; errors in Anthropic's
 * shape, as the client surfaces them.
 */
import Anthropic from '@anthropic-ai/sdk';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type RunningServer } from '../../src/server/serve.js';
import { referenceGreedy, testConfig, tinyQwen } from '../helpers/server.js';
import { loadTokenizer, makeThinkingOnly } from '../helpers/tokenizers.js';
import { makeTinyAdapter, tempDir } from '../helpers/tiny-model.js';

const KEY = 'sk-anthropic-test-key';
const tm = tinyQwen(1401, 1024);
const store = tempDir('loraplex-anthropic-');
makeTinyAdapter(tm, { seed: 1402, r: 4 }, join(store, 'alpha'));
const thinker = tinyQwen(1403, 1024);
makeThinkingOnly(thinker.dir);
const qwen = loadTokenizer('qwen3');

let server: RunningServer;
let thinkServer: RunningServer;
beforeAll(async () => {
  server = await startServer(testConfig({ model: tm.dir, adapters: store, port: 0, host: '127.0.0.1', servedModelName: 'tiny', apiKeys: KEY }), { logger: false });
  thinkServer = await startServer(testConfig({ model: thinker.dir, port: 0, host: '127.0.0.1', servedModelName: 'thinker' }), { logger: false });
  await Promise.all([server.ready, thinkServer.ready]);
});
afterAll(async () => {
  await Promise.all([server?.close(0), thinkServer?.close(0)]);
});

const client = (apiKey = KEY, s = () => server): Anthropic => new Anthropic({ baseURL: s().url, apiKey, maxRetries: 0 });
const render = (messages: unknown[], tools?: unknown[]): number[] =>
  qwen.encode(qwen.chatTemplate!.render(messages as Parameters<NonNullable<typeof qwen.chatTemplate>['render']>[0], { addGenerationPrompt: true, ...(tools ? { tools } : {}) }), false);

const hello = [{ role: 'user' as const, content: 'Hello there' }];
/** Request params with the sampling fields the Messages API documents (temperature, top_p, top_k) but this client's types leave out. */
const params = (p: Record<string, unknown>): Anthropic.MessageCreateParamsNonStreaming => p as unknown as Anthropic.MessageCreateParamsNonStreaming;
const N = 8;
let refText: string | null = null;
/** The base model's greedy answer to `hello`, by the reference forward pass. */
function reference(): string {
  if (refText === null) {
    refText = qwen.decode(referenceGreedy(tm, render(hello), null, N));
    expect(refText).not.toContain('<think>');
  }
  return refText;
}

describe('the official @anthropic-ai/sdk client', () => {
  it('messages.create and messages.stream: the reference answer, stop_reason and usage', async () => {
    const whole = await client().messages.create(params({ model: 'tiny', max_tokens: N, temperature: 0, messages: hello }));
    expect(whole).toMatchObject({ type: 'message', role: 'assistant', model: 'tiny', stop_reason: 'max_tokens', stop_sequence: null, content: [{ type: 'text', text: reference() }] });
    expect(whole.id).toMatch(/^msg_/);
    expect(whole.usage.input_tokens + (whole.usage.cache_read_input_tokens ?? 0)).toBe(render(hello).length);
    expect(whole.usage.output_tokens).toBe(N);

    const stream = client().messages.stream(params({ model: 'tiny', max_tokens: N, temperature: 0, messages: hello }));
    let text = '';
    stream.on('text', (t) => (text += t));
    const final = await stream.finalMessage();
    expect(text).toBe(reference());
    expect(final).toMatchObject({ stop_reason: 'max_tokens', content: [{ type: 'text', text: reference() }], usage: { output_tokens: N } });

    // An adapter answers differently; count_tokens counts the prompt the answer was made from.
    const alpha = await client().messages.create(params({ model: 'alpha', max_tokens: N, temperature: 0, messages: hello }));
    expect(alpha.content).not.toEqual(whole.content);
    const counted = await client().messages.countTokens({ model: 'tiny', messages: hello });
    expect(counted.input_tokens).toBe(render(hello).length);
    const withSystem = await client().messages.countTokens({ model: 'tiny', system: 'Be brief.', messages: hello });
    expect(withSystem.input_tokens).toBe(render([{ role: 'system', content: 'Be brief.' }, ...hello]).length);
  });

  it('stop_sequences end the answer and are reported, whole and streamed', async () => {
    const ref = reference();
    const at = Math.floor(ref.length / 2);
    const stop = ref.slice(at, at + 2);
    const cut = ref.slice(0, ref.indexOf(stop));
    const whole = await client().messages.create(params({ model: 'tiny', max_tokens: N, temperature: 0, messages: hello, stop_sequences: [stop, 'never-generated'] }));
    expect(whole).toMatchObject({ stop_reason: 'stop_sequence', stop_sequence: stop, content: [{ type: 'text', text: cut }] });
    const final = await client().messages.stream(params({ model: 'tiny', max_tokens: N, temperature: 0, messages: hello, stop_sequences: [stop] })).finalMessage();
    expect(final).toMatchObject({ stop_reason: 'stop_sequence', stop_sequence: stop });
  });

  it('a forced tool call comes back as tool_use (whole and streamed), and its result renders as the template shows it', async () => {
    const tools = [{ name: 'get_weather', description: 'The weather in a city', input_schema: { type: 'object' as const, properties: { city: { enum: ['Paris', 'Oslo'] } }, required: ['city'], additionalProperties: false } }];
    const ask = { model: 'tiny', max_tokens: 60, temperature: 0, messages: [{ role: 'user' as const, content: 'Weather in Paris?' }], tools, tool_choice: { type: 'tool' as const, name: 'get_weather' } };
    const whole = await client().messages.create(params(ask));
    expect(whole.stop_reason).toBe('tool_use');
    const use = whole.content.find((b) => b.type === 'tool_use');
    expect(use).toMatchObject({ type: 'tool_use', name: 'get_weather', id: expect.stringMatching(/^toolu_/) });
    expect(['Paris', 'Oslo']).toContain((use as { input: { city: string } }).input.city);
    const streamed = await client().messages.stream(params(ask)).finalMessage();
    expect(streamed.stop_reason).toBe('tool_use');
    expect(streamed.content.find((b) => b.type === 'tool_use')).toMatchObject({ name: 'get_weather', input: (use as { input: unknown }).input });

    const input = (use as { input: Record<string, unknown> }).input;
    const turns = [
      ask.messages[0],
      { role: 'assistant' as const, content: [{ type: 'tool_use' as const, id: 'toolu_1', name: 'get_weather', input }] },
      { role: 'user' as const, content: [{ type: 'tool_result' as const, tool_use_id: 'toolu_1', content: '18 degrees' }] },
    ];
    const answer = await client().messages.create(params({ model: 'tiny', max_tokens: 4, temperature: 0, messages: turns, tools }));
    expect(answer.stop_reason).toBe('max_tokens');
    const templateTools = [{ type: 'function', function: { name: 'get_weather', description: 'The weather in a city', parameters: tools[0].input_schema } }];
    const want = render(
      [ask.messages[0], { role: 'assistant', content: '', tool_calls: [{ id: 'toolu_1', type: 'function', function: { name: 'get_weather', arguments: input } }] }, { role: 'tool', tool_call_id: 'toolu_1', content: '18 degrees' }],
      templateTools,
    );
    expect(answer.usage.input_tokens + (answer.usage.cache_read_input_tokens ?? 0)).toBe(want.length);
    expect((await client().messages.countTokens({ model: 'tiny', messages: turns, tools })).input_tokens).toBe(want.length);
  });

  it('thinking comes back as thinking blocks, whole and streamed', async () => {
    const think = (): Anthropic => client('unused', () => thinkServer);
    // The same answer's reasoning on chat completions (checked against the reference in reasoning.test.ts).
    const chat = (await (
      await fetch(`${thinkServer.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'thinker', messages: hello, max_tokens: N, temperature: 0 }) })
    ).json()) as { choices: { message: { reasoning_content: string } }[] };
    const thinking = chat.choices[0].message.reasoning_content;
    expect(thinking.length).toBeGreaterThan(0);
    const whole = await think().messages.create(params({ model: 'thinker', max_tokens: N, temperature: 0, messages: hello }));
    expect(whole.content[0]).toMatchObject({ type: 'thinking', thinking });
    const stream = think().messages.stream(params({ model: 'thinker', max_tokens: N, temperature: 0, messages: hello }));
    let streamed = '';
    stream.on('thinking', (delta) => (streamed += delta));
    const final = await stream.finalMessage();
    expect(streamed).toBe(thinking);
    expect(final.content[0]).toMatchObject({ type: 'thinking', thinking });
    // display "omitted": the blocks come without their text.
    const omitted = await think().messages.create({ model: 'thinker', max_tokens: N, messages: hello, thinking: { type: 'adaptive', display: 'omitted' } });
    expect(omitted.content[0]).toMatchObject({ type: 'thinking', thinking: '' });
    // A thinking block sent back is the assistant turn's reasoning_content.
    const back = [...hello, { role: 'assistant' as const, content: [{ type: 'thinking' as const, thinking: 'Say hi.', signature: '' }, { type: 'text' as const, text: 'Hi!' }] }, { role: 'user' as const, content: 'Again' }];
    expect((await think().messages.countTokens({ model: 'thinker', messages: back })).input_tokens).toBeGreaterThan(0);
  });

  it('output_config.format constrains the answer to a JSON schema', async () => {
    const schema = { type: 'object', properties: { answer: { enum: ['yes', 'no'] } }, required: ['answer'], additionalProperties: false };
    const r = await client().messages.create(params({ model: 'tiny', max_tokens: 40, temperature: 0, messages: hello, output_config: { format: { type: 'json_schema', schema } } }));
    expect(r.stop_reason).toBe('end_turn');
    const text = (r.content.find((b) => b.type === 'text') as { text: string }).text;
    expect(['yes', 'no']).toContain((JSON.parse(text) as { answer: string }).answer);
  });

  it('x-api-key and bearer keys are accepted; errors come in Anthropic shape, as the client shows them', async () => {
    await expect(client('wrong-key').messages.create({ model: 'tiny', max_tokens: 1, messages: hello })).rejects.toMatchObject({ status: 401, error: { type: 'error', error: { type: 'authentication_error' } } });
    const bearer = await fetch(`${server.url}/v1/messages`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}` }, body: JSON.stringify({ model: 'tiny', max_tokens: 1, messages: hello }) });
    expect(bearer.status).toBe(200);
    const missing = client().messages.create({ model: 'no-such-adapter', max_tokens: 1, messages: hello });
    await expect(missing).rejects.toBeInstanceOf(Anthropic.NotFoundError);
    await expect(client().messages.create({ model: 'no-such-adapter', max_tokens: 1, messages: hello })).rejects.toThrow(/The model `no-such-adapter` does not exist/);
    const cases: [Record<string, unknown>, number, RegExp][] = [
      [{ messages: [{ role: 'user', content: [{ type: 'image', source: { type: 'base64', media_type: 'image/png', data: 'AA==' } }] }] }, 422, /messages\[0\]\.content\[0\]/],
      [{ messages: [...hello, { role: 'assistant', content: 'Hi' }] }, 422, /prefilling/],
      [{ thinking: { type: 'enabled', budget_tokens: 10 } }, 400, /budget_tokens/],
      [{ thinking: { type: 'enabled', budget_tokens: 2000 }, max_tokens: 4000, tools: [{ name: 'f', input_schema: { type: 'object' } }], tool_choice: { type: 'any' } }, 400, /thinking/],
      [{ tools: [{ type: 'web_search_20250305', name: 'web_search' }] }, 422, /tools\[0\]/],
      [{ max_tokens: undefined }, 400, /max_tokens/],
      [{ output_config: { effort: 'high' } }, 422, /output_config\.effort/],
      [{ thinking: { type: 'between_tools' } }, 422, /between_tools/],
      [{ output_config: { format: { type: 'json_schema', schema: { type: 'object' } } }, tools: [{ name: 'f', input_schema: { type: 'object' } }], tool_choice: { type: 'any' } }, 400, /output_config\.format/],
    ];
    // Hostile shapes are refused by the cheap caps before anything is rendered. (Written by hand:
    // JSON.stringify itself cannot nest this deep.)
    const deep = `${'['.repeat(5000)}1${']'.repeat(5000)}`;
    for (const [body, param] of [
      [`{"model":"tiny","max_tokens":1,"messages":[{"role":"user","content":"x"}],"tools":[{"name":"f","input_schema":${deep}}]}`, /tools/],
      [`{"model":"tiny","max_tokens":1,"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"t","content":${deep}}]}]}`, /messages/],
      [`{"model":"tiny","max_tokens":1,"system":${deep},"messages":[{"role":"user","content":"x"}]}`, /system/],
    ] as const) {
      const res = await fetch(`${server.url}/v1/messages`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-api-key': KEY }, body });
      expect(res.status).toBe(400);
      expect(((await res.json()) as { error: { message: string } }).error.message).toMatch(param);
    }
    for (const [patch, status, message] of cases) {
      const res = await fetch(`${server.url}/v1/messages`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-api-key': KEY }, body: JSON.stringify({ model: 'tiny', max_tokens: 1, messages: hello, ...patch }) });
      const body = (await res.json()) as { type: string; error: { type: string; message: string } };
      expect(res.status, JSON.stringify(body)).toBe(status);
      expect(body).toMatchObject({ type: 'error', error: { type: 'invalid_request_error' } });
      expect(body.error.message).toMatch(message);
    }
  });
});
