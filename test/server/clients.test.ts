/**
 * Real clients against a real server, unchanged: the official `openai` client, LangChain's
 * ChatOpenAI, @huggingface/inference (TGI routes), the Vercel AI SDK (whose default `openai(id)`
 * speaks the Responses API) and Anthropic's official client (Messages). Each: chat / completions /
 * responses / messages as it offers them, streamed and not, with an adapter and with the base
 * model, and an unknown model, whose error message the client must show. How the clients read a
 * reasoning model's thinking is in reasoning.test.ts; tool calls through Anthropic's client in
 * anthropic.test.ts.
 */
import { createOpenAI } from '@ai-sdk/openai';
import Anthropic from '@anthropic-ai/sdk';
import { InferenceClient } from '@huggingface/inference';
import { ChatOpenAI } from '@langchain/openai';
import { generateText, streamText } from 'ai';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type RunningServer } from '../../src/server/serve.js';
import { ADMIN, testConfig, tinyQwen } from '../helpers/server.js';
import { makeTinyAdapter, tempDir } from '../helpers/tiny-model.js';
import { join } from 'node:path';

const tm = tinyQwen(601, 1024);
const store = tempDir('loraplex-clients-');
makeTinyAdapter(tm, { seed: 602, r: 4 }, join(store, 'alpha'));

let server: RunningServer;
let base: string;
beforeAll(async () => {
  server = await startServer(testConfig({ model: tm.dir, adapters: store, adminToken: ADMIN, port: 0, host: '127.0.0.1', servedModelName: 'tiny' }), { logger: false });
  await server.ready;
  base = server.url;
});
afterAll(async () => {
  await server?.close(0);
});

const UNKNOWN = /The model `no-such-adapter` does not exist/;
const models = ['tiny', 'alpha'] as const;

describe('the official openai client', () => {
  const client = () => new OpenAI({ baseURL: `${base}/v1`, apiKey: 'unused' });

  it.each(models)('chat, completions and responses, streamed and not (%s)', async (model) => {
    const c = client();
    const chat = await c.chat.completions.create({ model, messages: [{ role: 'user', content: 'Hello' }], max_tokens: 6, temperature: 0 });
    let streamed = '';
    for await (const ch of await c.chat.completions.create({ model, messages: [{ role: 'user', content: 'Hello' }], max_tokens: 6, temperature: 0, stream: true })) streamed += ch.choices[0]?.delta?.content ?? '';
    expect(streamed).toBe(chat.choices[0].message.content);

    const comp = await c.completions.create({ model, prompt: 'Once upon', max_tokens: 6, temperature: 0 });
    let compStreamed = '';
    for await (const ch of await c.completions.create({ model, prompt: 'Once upon', max_tokens: 6, temperature: 0, stream: true })) compStreamed += ch.choices[0]?.text ?? '';
    expect(compStreamed).toBe(comp.choices[0].text);

    const resp = await c.responses.create({ model, input: 'Hello', max_output_tokens: 6, temperature: 0 });
    expect(resp.status).toBe('incomplete');
    expect(resp.output_text).toBe(chat.choices[0].message.content);
    expect(resp.usage).toMatchObject({ input_tokens: chat.usage!.prompt_tokens, output_tokens: 6 });
    const events: string[] = [];
    let deltas = '';
    let completed: OpenAI.Responses.Response | null = null;
    for await (const e of await c.responses.create({ model, input: [{ role: 'user', content: 'Hello' }], max_output_tokens: 6, temperature: 0, stream: true })) {
      events.push(e.type);
      if (e.type === 'response.output_text.delta') deltas += e.delta;
      if (e.type === 'response.incomplete' || e.type === 'response.completed') completed = e.response;
    }
    expect(events[0]).toBe('response.created');
    expect(events).toContain('response.output_text.delta');
    expect(deltas).toBe(resp.output_text);
    expect(completed!.output_text ?? (completed!.output[0] as { content: { text: string }[] }).content[0].text).toBe(resp.output_text);
  });

  it('shows the server message for an unknown model', async () => {
    const c = client();
    await expect(c.chat.completions.create({ model: 'no-such-adapter', messages: [{ role: 'user', content: 'x' }] })).rejects.toThrow(UNKNOWN);
    await expect(c.completions.create({ model: 'no-such-adapter', prompt: 'x' })).rejects.toThrow(UNKNOWN);
    await expect(c.responses.create({ model: 'no-such-adapter', input: 'x' })).rejects.toThrow(UNKNOWN);
    const m = await c.models.retrieve('alpha');
    expect(m).toMatchObject({ id: 'alpha', parent: 'tiny' });
    await expect(c.models.retrieve('no-such-adapter')).rejects.toThrow(UNKNOWN);
  });
});

describe("LangChain's ChatOpenAI", () => {
  const chat = (model: string) => new ChatOpenAI({ model, apiKey: 'unused', configuration: { baseURL: `${base}/v1` }, temperature: 0, maxTokens: 6 });

  it.each(models)('invoke and stream (%s)', async (model) => {
    const full = await chat(model).invoke('Hello');
    let streamed = '';
    for await (const ch of await chat(model).stream('Hello')) streamed += ch.content as string;
    expect(streamed).toBe(full.content);
    expect(full.usage_metadata).toMatchObject({ output_tokens: 6 });
  });

  it('shows the server message for an unknown model', async () => {
    await expect(chat('no-such-adapter').invoke('x')).rejects.toThrow(UNKNOWN);
  });
});

describe('@huggingface/inference (TGI routes)', () => {
  const hf = () => new InferenceClient();

  it.each([null, 'alpha'])('textGeneration and textGenerationStream (adapter %s)', async (adapter) => {
    // (Current versions of the client send TGI's parameters to /v1/completions with the endpoint URL as the model.)
    const parameters = { max_new_tokens: 6, temperature: 0, ...(adapter ? { adapter_id: adapter } : {}) };
    const full = await hf().textGeneration({ endpointUrl: base, inputs: 'Hello', parameters });
    let streamed = '';
    // (This path of the client yields the completion chunks as they come.)
    for await (const e of hf().textGenerationStream({ endpointUrl: base, inputs: 'Hello', parameters })) streamed += (e as unknown as { choices: { text: string }[] }).choices[0]?.text ?? '';
    expect(streamed).toBe(full.generated_text);
    expect(full.generated_text.length).toBeGreaterThan(0);
  });

  it.each(models)('chatCompletion and chatCompletionStream (%s)', async (model) => {
    const full = await hf().chatCompletion({ endpointUrl: `${base}/v1/chat/completions`, model, messages: [{ role: 'user', content: 'Hello' }], max_tokens: 6, temperature: 0 });
    let streamed = '';
    for await (const ch of hf().chatCompletionStream({ endpointUrl: `${base}/v1/chat/completions`, model, messages: [{ role: 'user', content: 'Hello' }], max_tokens: 6, temperature: 0 })) streamed += ch.choices[0]?.delta?.content ?? '';
    expect(streamed).toBe(full.choices[0].message.content);
  });

  it('shows the server message for an unknown adapter', async () => {
    await expect(hf().textGeneration({ endpointUrl: base, inputs: 'x', parameters: { adapter_id: 'no-such-adapter' } as never })).rejects.toThrow(UNKNOWN);
    await expect(hf().chatCompletion({ endpointUrl: `${base}/v1/chat/completions`, model: 'no-such-adapter', messages: [{ role: 'user', content: 'x' }] })).rejects.toThrow(UNKNOWN);
  });
});

describe('the Vercel AI SDK', () => {
  const provider = () => createOpenAI({ baseURL: `${base}/v1`, apiKey: 'unused' });

  it.each(models)('generateText and streamText with the default (Responses) model, chat and completion models (%s)', async (model) => {
    const openai = provider();
    for (const m of [openai(model), openai.chat(model), openai.completion(model)]) {
      const full = await generateText({ model: m, prompt: 'Hello', maxOutputTokens: 6, temperature: 0 });
      expect(full.usage.outputTokens).toBe(6);
      const s = streamText({ model: m, prompt: 'Hello', maxOutputTokens: 6, temperature: 0 });
      let streamed = '';
      for await (const t of s.textStream) streamed += t;
      expect(streamed).toBe(full.text);
    }
  });

  it('shows the server message for an unknown model', async () => {
    const openai = provider();
    for (const m of [openai('no-such-adapter'), openai.chat('no-such-adapter')]) {
      await expect(generateText({ model: m, prompt: 'x', maxRetries: 0 })).rejects.toThrow(UNKNOWN);
    }
  });
});

describe("Anthropic's official client", () => {
  const anthropic = () => new Anthropic({ baseURL: base, apiKey: 'unused', maxRetries: 0 });
  /** (Sampling fields the Messages API documents but this client's types leave out.) */
  const params = (p: Record<string, unknown>): Anthropic.MessageCreateParamsNonStreaming => p as unknown as Anthropic.MessageCreateParamsNonStreaming;

  it.each(models)('messages.create, messages.stream and countTokens (%s)', async (model) => {
    const body = params({ model, max_tokens: 6, temperature: 0, messages: [{ role: 'user', content: 'Hello' }] });
    const whole = await anthropic().messages.create(body);
    expect(whole).toMatchObject({ type: 'message', model, stop_reason: 'max_tokens', usage: { output_tokens: 6 } });
    let text = '';
    const stream = anthropic().messages.stream(body);
    stream.on('text', (t) => (text += t));
    const final = await stream.finalMessage();
    expect(final.content).toEqual(whole.content);
    expect(text).toBe((whole.content[0] as { text: string }).text);
    const counted = await anthropic().messages.countTokens({ model, messages: [{ role: 'user', content: 'Hello' }] });
    expect(counted.input_tokens).toBe(whole.usage.input_tokens + (whole.usage.cache_read_input_tokens ?? 0));
  });

  it('shows the server message for an unknown model', async () => {
    await expect(anthropic().messages.create({ model: 'no-such-adapter', max_tokens: 1, messages: [{ role: 'user', content: 'x' }] })).rejects.toThrow(UNKNOWN);
  });
});
