/**
 * Thinking split from the answer on the Responses API, read by real clients, and how thinking
 * meets a grammar. Two tiny Qwen3 checkpoints with the same weights: one with Qwen3's real chat
 * template (the model opens <think> itself, `enable_thinking` turns it off), one with the
 * thinking-only variant of it (Qwen3 *-Thinking-2507: the prompt opens the block, so the whole
 * greedy answer of a random model is thinking). Expected texts come from the independent reference
 * forward pass on the prompt the template renders.
 */
import { createOpenAI } from '@ai-sdk/openai';
import { ChatOpenAI } from '@langchain/openai';
import { generateText, streamText } from 'ai';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type RunningServer } from '../../src/server/serve.js';
import { QWEN_VOCAB, referenceGreedy, testConfig } from '../helpers/server.js';
import { copyTokenizer, loadTokenizer, makeThinkingOnly } from '../helpers/tokenizers.js';
import { makeTinyModel } from '../helpers/tiny-model.js';
import { TextTokenizer } from '../../src/runtime/tokenizer.js';

const shape = { flavour: 'qwen3', seed: 1301, vocabSize: QWEN_VOCAB, hiddenSize: 64, numHeads: 4, numKvHeads: 2, headDim: 32, intermediateSize: 128, maxPositionEmbeddings: 512 } as const;
const plain = makeTinyModel(shape);
copyTokenizer('qwen3', plain.dir);
const thinker = makeTinyModel(shape);
copyTokenizer('qwen3', thinker.dir);
// The thinking-only variant: the generation prompt opens the block.
makeThinkingOnly(thinker.dir);
const qwen = loadTokenizer('qwen3');
const thinkingOnly = TextTokenizer.load(thinker.dir)!;

let plainServer: RunningServer;
let thinkServer: RunningServer;
beforeAll(async () => {
  plainServer = await startServer(testConfig({ model: plain.dir, port: 0, host: '127.0.0.1', servedModelName: 'qwen3-tiny' }), { logger: false });
  thinkServer = await startServer(testConfig({ model: thinker.dir, port: 0, host: '127.0.0.1', servedModelName: 'qwen3-think' }), { logger: false });
  await Promise.all([plainServer.ready, thinkServer.ready]);
});
afterAll(async () => {
  await Promise.all([plainServer?.close(0), thinkServer?.close(0)]);
});

const post = (server: RunningServer, path: string, body: unknown): Promise<Response> => fetch(`${server.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
const render = (messages: Record<string, unknown>[], extra?: Record<string, unknown>, template = qwen.chatTemplate!): number[] => qwen.encode(template.render(messages as unknown as Parameters<typeof template.render>[0], { addGenerationPrompt: true, ...(extra ? { extra } : {}) }), false);

const question = [{ role: 'user', content: 'Why is the sky blue?' }];
const N = 8;
/** The thinking-only server's greedy answer to `question`: all of it thinking. */
let thinkingText: string | null = null;
function expectedThinking(): string {
  return (thinkingText ??= referenceThinking());
}
function referenceThinking(): string {
  const opened = render(question, undefined, thinkingOnly.chatTemplate!);
  expect(qwen.decode(opened, false).endsWith('<|im_start|>assistant\n<think>\n')).toBe(true);
  const text = qwen.decode(referenceGreedy(thinker, opened, null, N));
  expect(text).not.toContain('</think>');
  return text;
}

describe('Responses: reasoning items', () => {
  it('whole and streamed through the official client: a reasoning item (content and summary), then the answer; usage counts the thinking', async () => {
    const thinking = expectedThinking();
    const client = new OpenAI({ baseURL: `${thinkServer.url}/v1`, apiKey: 'unused' });
    const whole = await client.responses.create({ model: 'qwen3-think', input: question[0].content, max_output_tokens: N, temperature: 0 });
    expect(whole.output[0]).toMatchObject({ type: 'reasoning', content: [{ type: 'reasoning_text', text: thinking }], summary: [{ type: 'summary_text', text: thinking }] });
    expect(whole.output[1]).toMatchObject({ type: 'message', content: [{ type: 'output_text', text: '' }] });
    expect(whole.output_text).toBe('');
    expect(whole.usage).toMatchObject({ output_tokens: N, output_tokens_details: { reasoning_tokens: N } });

    const events: { type: string; delta?: string; response?: unknown }[] = [];
    for await (const e of await client.responses.create({ model: 'qwen3-think', input: question[0].content, max_output_tokens: N, temperature: 0, stream: true })) events.push(e);
    const joined = (type: string) => events.filter((e) => e.type === type).map((e) => e.delta).join('');
    expect(joined('response.reasoning_text.delta')).toBe(thinking);
    expect(joined('response.reasoning_summary_text.delta')).toBe(thinking);
    const types = events.map((e) => e.type);
    // The reasoning item is done before the message opens.
    expect(types.indexOf('response.reasoning_text.done')).toBeLessThan(types.lastIndexOf('response.output_item.added'));
    const last = events.at(-1) as { type: string; response: { output: unknown[]; usage: unknown } };
    expect(last.type).toBe('response.incomplete');
    expect(last.response.output).toEqual([{ ...whole.output[0], id: expect.any(String) }, { ...whole.output[1], id: expect.any(String) }]);
    expect(last.response.usage).toMatchObject({ output_tokens_details: { reasoning_tokens: N } });
  });

  it('the AI SDK and LangChain read the thinking as reasoning', async () => {
    const thinking = expectedThinking();
    const provider = createOpenAI({ baseURL: `${thinkServer.url}/v1`, apiKey: 'unused' });
    const full = await generateText({ model: provider.responses('qwen3-think'), prompt: question[0].content, maxOutputTokens: N, temperature: 0 });
    expect(full.reasoningText).toBe(thinking);
    expect(full.text).toBe('');
    const s = streamText({ model: provider.responses('qwen3-think'), prompt: question[0].content, maxOutputTokens: N, temperature: 0 });
    let streamed = '';
    for await (const part of s.fullStream) if (part.type === 'reasoning-delta') streamed += part.text;
    expect(streamed).toBe(thinking);

    const lc = new ChatOpenAI({ model: 'qwen3-think', apiKey: 'unused', configuration: { baseURL: `${thinkServer.url}/v1` }, temperature: 0, maxTokens: N, useResponsesApi: true });
    const msg = await lc.invoke(question[0].content);
    expect(msg.contentBlocks.filter((b) => b.type === 'reasoning').map((b) => (b as { reasoning: string }).reasoning).join('')).toBe(thinking);
    let lcStreamed = '';
    for await (const chunk of await lc.stream(question[0].content)) for (const b of chunk.contentBlocks) if (b.type === 'reasoning') lcStreamed += (b as { reasoning: string }).reasoning;
    expect(lcStreamed).toBe(thinking);
  });

  it('chat completions split a prompt-opened block too, as the official client reads them', async () => {
    const client = new OpenAI({ baseURL: `${thinkServer.url}/v1`, apiKey: 'unused' });
    const whole = await client.chat.completions.create({ model: 'qwen3-think', messages: question as OpenAI.ChatCompletionMessageParam[], max_tokens: N, temperature: 0 });
    expect(whole.choices[0].message).toMatchObject({ content: '', reasoning_content: expectedThinking(), reasoning: expectedThinking() });
    let streamed = '';
    for await (const chunk of await client.chat.completions.create({ model: 'qwen3-think', messages: question as OpenAI.ChatCompletionMessageParam[], max_tokens: N, temperature: 0, stream: true })) {
      streamed += (chunk.choices[0]?.delta as { reasoning_content?: string } | undefined)?.reasoning_content ?? '';
    }
    expect(streamed).toBe(expectedThinking());
  });

  it('a reasoning input item is the thinking of the assistant turn after it, rendered as the template shows it', async () => {
    const call = { id: 'call_1', type: 'function', function: { name: 'lookup', arguments: '{"q":"sky"}' } };
    const history = [question[0], { role: 'assistant', content: '', tool_calls: [call] }, { role: 'tool', tool_call_id: 'call_1', content: 'Rayleigh scattering' }];
    // (The server hands templates arguments as objects, as Hugging Face templates expect.)
    const rendered = [history[0], { ...history[1], tool_calls: [{ ...call, function: { name: 'lookup', arguments: { q: 'sky' } } }] }, history[2]];
    const want = render([rendered[0], { ...rendered[1], reasoning_content: 'I should look it up.' }, rendered[2]]);
    expect(want).not.toEqual(render(rendered));
    const input = [
      { role: 'user', content: question[0].content },
      { type: 'reasoning', id: 'rs_1', summary: [], content: [{ type: 'reasoning_text', text: 'I should look it up.' }] },
      { type: 'function_call', call_id: 'call_1', name: 'lookup', arguments: '{"q":"sky"}' },
      { type: 'function_call_output', call_id: 'call_1', output: 'Rayleigh scattering' },
    ];
    const r = (await (await post(plainServer, '/v1/responses', { model: 'qwen3-tiny', input, max_output_tokens: 1 })).json()) as { usage: { input_tokens: number } };
    expect(r.usage.input_tokens).toBe(want.length);
    // The same thinking as a summary only.
    const bySummary = [input[0], { type: 'reasoning', id: 'rs_1', summary: [{ type: 'summary_text', text: 'I should look it up.' }] }, input[2], input[3]];
    expect(((await (await post(plainServer, '/v1/responses', { model: 'qwen3-tiny', input: bySummary, max_output_tokens: 1 })).json()) as { usage: { input_tokens: number } }).usage.input_tokens).toBe(want.length);

    for (const [bad, param, status] of [
      [[input[0], input[1]], 'input[1]', 400],
      [[input[1], input[0]], 'input[0]', 400],
      [[input[0], { ...input[1], encrypted_content: 'xyz' }, input[2], input[3]], 'input[1].encrypted_content', 422],
    ] as const) {
      const res = await post(plainServer, '/v1/responses', { model: 'qwen3-tiny', input: bad, max_output_tokens: 1 });
      expect(res.status).toBe(status);
      expect(((await res.json()) as { error: { param: string } }).error.param).toBe(param);
    }
  });

  it('reasoning.effort turns thinking on or off; refused where the model cannot honour it', async () => {
    const inputTokens = async (server: RunningServer, body: Record<string, unknown>): Promise<number> => {
      const res = await post(server, '/v1/responses', { model: 'qwen3-tiny', input: question[0].content, max_output_tokens: 1, ...body });
      expect(res.status).toBe(200);
      return ((await res.json()) as { usage: { input_tokens: number } }).usage.input_tokens;
    };
    const on = render(question);
    const off = render(question, { enable_thinking: false });
    expect(off.length).toBeGreaterThan(on.length);
    expect(await inputTokens(plainServer, {})).toBe(on.length);
    for (const effort of ['none', 'minimal']) expect(await inputTokens(plainServer, { reasoning: { effort } })).toBe(off.length);
    for (const effort of ['low', 'medium', 'high', 'xhigh']) expect(await inputTokens(plainServer, { reasoning: { effort, summary: 'auto' } })).toBe(on.length);
    const r = await post(plainServer, '/v1/responses', { model: 'qwen3-tiny', input: 'x', reasoning: { effort: 'high' }, text: { format: { type: 'json_object' } } });
    expect(r.status).toBe(400);
    expect(((await r.json()) as { error: { param: string } }).error.param).toBe('reasoning.effort');
    const unknown = await post(plainServer, '/v1/responses', { model: 'qwen3-tiny', input: 'x', reasoning: { effort: 'extreme' } });
    expect(unknown.status).toBe(400);
  });
});

describe('thinking and grammars', () => {
  it('a constrained chat answer is rendered with thinking off; asking for thinking with a grammar is refused by name', async () => {
    const off = render(question, { enable_thinking: false });
    for (const constraint of [{ response_format: { type: 'json_object' } }, { tools: [{ type: 'function', function: { name: 'lookup', parameters: { type: 'object' } } }], tool_choice: 'required' }]) {
      const res = await post(plainServer, '/v1/chat/completions', { model: 'qwen3-tiny', messages: question, max_tokens: 2, ...constraint });
      expect(res.status).toBe(200);
      const body = (await res.json()) as { usage: { prompt_tokens: number }; choices: { message: Record<string, unknown> }[] };
      const expected = 'tools' in constraint ? qwen.encode(qwen.chatTemplate!.render(question, { addGenerationPrompt: true, tools: constraint.tools, extra: { enable_thinking: false } }), false) : off;
      expect(body.usage.prompt_tokens).toBe(expected.length);
      expect(body.choices[0].message.reasoning_content).toBeNull();
      const asked = await post(plainServer, '/v1/chat/completions', { model: 'qwen3-tiny', messages: question, max_tokens: 2, ...constraint, chat_template_kwargs: { enable_thinking: true } });
      expect(asked.status).toBe(400);
      expect(((await asked.json()) as { error: { param: string } }).error.param).toBe('chat_template_kwargs.enable_thinking');
    }
    // Unconstrained tools (tool_choice auto) keep thinking: calls are read from the answer after it.
    const auto = (await (await post(plainServer, '/v1/chat/completions', { model: 'qwen3-tiny', messages: question, max_tokens: 2, tools: [{ type: 'function', function: { name: 'lookup' } }] })).json()) as { usage: { prompt_tokens: number } };
    expect(auto.usage.prompt_tokens).toBe(qwen.encode(qwen.chatTemplate!.render(question, { addGenerationPrompt: true, tools: [{ type: 'function', function: { name: 'lookup', parameters: { type: 'object', properties: {} } } }] }), false).length);
  });

  it('a template that opens the thinking block cannot take a grammar: refused by the grammar field', async () => {
    const chat = await post(thinkServer, '/v1/chat/completions', { model: 'qwen3-think', messages: question, response_format: { type: 'json_object' } });
    expect(chat.status).toBe(400);
    expect(((await chat.json()) as { error: { param: string } }).error.param).toBe('response_format');
    const resp = await post(thinkServer, '/v1/responses', { model: 'qwen3-think', input: 'x', text: { format: { type: 'json_object' } } });
    expect(resp.status).toBe(400);
    expect(((await resp.json()) as { error: { param: string } }).error.param).toBe('text.format');
  });
});
