/**
 * A Qwen3 checkpoint served end to end: a tiny random Qwen3ForCausalLM (q/k norms, head_dim of its
 * own) with Qwen3's real tokenizer and chat template, an adapter on every projection, chat over
 * HTTP with `chat_template_kwargs.enable_thinking` passed to the template; greedy answers equal
 * the independent reference forward pass on the prompt the template renders.
 */
import { join } from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type RunningServer } from '../../src/server/serve.js';
import { QWEN_VOCAB, referenceGreedy, testConfig } from '../helpers/server.js';
import { copyTokenizer, loadTokenizer } from '../helpers/tokenizers.js';
import { makeTinyAdapter, makeTinyModel, tempDir } from '../helpers/tiny-model.js';

const tm = makeTinyModel({ flavour: 'qwen3', seed: 1201, vocabSize: QWEN_VOCAB, hiddenSize: 64, numHeads: 4, numKvHeads: 2, headDim: 32, intermediateSize: 128, maxPositionEmbeddings: 512 });
copyTokenizer('qwen3', tm.dir);
const qwen = loadTokenizer('qwen3');
const store = tempDir('loraplex-qwen3-');
const adapter = makeTinyAdapter(tm, { seed: 1202, r: 4 }, join(store, 'writer'));

let server: RunningServer;
beforeAll(async () => {
  server = await startServer(testConfig({ model: tm.dir, adapters: store, port: 0, host: '127.0.0.1', servedModelName: 'qwen3-tiny' }), { logger: false });
  await server.ready;
});
afterAll(async () => {
  await server?.close(0);
});

describe('Qwen3 over HTTP', () => {
  it('greedy chat on an adapter and the base equals the reference; enable_thinking reaches the template', async () => {
    const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused' });
    const messages = [{ role: 'user' as const, content: 'Write a haiku about rivers.' }];
    for (const thinking of [true, false]) {
      const prompt = qwen.encode(qwen.chatTemplate!.render(messages, { addGenerationPrompt: true, extra: { enable_thinking: thinking } }), false);
      for (const [model, lora] of [['writer', adapter.lora], ['qwen3-tiny', null]] as const) {
        const r = await client.chat.completions.create({ model, messages, max_tokens: 8, temperature: 0, chat_template_kwargs: { enable_thinking: thinking } } as OpenAI.ChatCompletionCreateParamsNonStreaming);
        expect(r.usage!.prompt_tokens).toBe(prompt.length);
        expect(r.choices[0].message.content).toBe(qwen.decode(referenceGreedy(tm, prompt, lora, 8)));
      }
    }
    // The two renderings differ (Qwen3's template writes an empty think block when thinking is off).
    const off = qwen.chatTemplate!.render(messages, { addGenerationPrompt: true, extra: { enable_thinking: false } });
    expect(off).toContain('<think>');
    expect(qwen.chatTemplate!.render(messages, { addGenerationPrompt: true, extra: { enable_thinking: true } })).not.toContain('<think>');
  });

  it('thinking is split from the answer, whole and streamed; a prompt with thinking off has none', async () => {
    const THINK = qwen.encode('<think>', false);
    expect(THINK).toHaveLength(1);
    const messages = [{ role: 'user', content: 'Think first.' }];
    // The model is pushed to write <think> at every step: the first opens the block, the rest are its thinking.
    const body = { model: 'qwen3-tiny', messages, max_tokens: 3, temperature: 0, logit_bias: { [THINK[0]]: 100 } };
    const whole = (await (await fetch(`${server.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })).json()) as {
      choices: { message: { content: string | null; reasoning_content: string | null; reasoning: string | null } }[];
      usage: { completion_tokens: number };
    };
    expect(whole.choices[0].message).toMatchObject({ content: '', reasoning_content: '<think><think>', reasoning: '<think><think>' });
    expect(whole.usage.completion_tokens).toBe(3);
    // All three tokens are thinking (the first opened the block).
    expect(whole.usage).toMatchObject({ completion_tokens_details: { reasoning_tokens: 3 } });
    const sse = await (await fetch(`${server.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }) })).text();
    expect(sse).toContain('"completion_tokens_details":{"reasoning_tokens":3}');
    const deltas = sse
      .split('\n\n')
      .filter((l) => l.startsWith('data: {'))
      .map((l) => (JSON.parse(l.slice(6)) as { choices: { delta: { content?: string; reasoning_content?: string; reasoning?: string } }[] }).choices[0]?.delta ?? {});
    expect(deltas.map((d) => d.reasoning_content ?? '').join('')).toBe('<think><think>');
    expect(deltas.map((d) => d.reasoning ?? '').join('')).toBe('<think><think>');
    expect(deltas.map((d) => d.content ?? '').join('')).toBe('');
    // Thinking off: the template closes an empty block in the prompt, and the whole output is the answer.
    const prompt = qwen.encode(qwen.chatTemplate!.render(messages, { addGenerationPrompt: true, extra: { enable_thinking: false } }), false);
    const off = (await (
      await fetch(`${server.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'qwen3-tiny', messages, max_tokens: 6, temperature: 0, chat_template_kwargs: { enable_thinking: false } }) })
    ).json()) as { choices: { message: { content: string; reasoning_content: string | null } }[]; usage: unknown };
    expect(off.choices[0].message.content).toBe(qwen.decode(referenceGreedy(tm, prompt, null, 6)));
    expect(off.choices[0].message.reasoning_content).toBeNull();
    expect(off).toMatchObject({ usage: { completion_tokens_details: { reasoning_tokens: 0 } } });
  });

  it('--reasoning-parser none leaves the thinking in the answer', async () => {
    const plain = await startServer(testConfig({ model: tm.dir, port: 0, host: '127.0.0.1', servedModelName: 'qwen3-tiny', reasoningParser: 'none' }), { logger: false });
    try {
      await plain.ready;
      const THINK = qwen.encode('<think>', false)[0];
      const r = (await (
        await fetch(`${plain.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'qwen3-tiny', messages: [{ role: 'user', content: 'Think first.' }], max_tokens: 3, temperature: 0, logit_bias: { [THINK]: 100 } }) })
      ).json()) as { choices: { message: Record<string, unknown> }[] };
      expect(r.choices[0].message.content).toBe('<think><think><think>');
      expect(r.choices[0].message).not.toHaveProperty('reasoning_content');
    } finally {
      await plain.close(0);
    }
  });

  it("an assistant turn's thinking sent back (reasoning_content or reasoning) is rendered as Qwen3's template shows it", async () => {
    const history = [
      { role: 'user', content: 'Why is the sky blue?' },
      { role: 'assistant', content: 'Rayleigh scattering.' },
    ];
    const want = qwen.encode(qwen.chatTemplate!.render([history[0], { ...history[1], reasoning_content: 'Short light scatters more.' }], { addGenerationPrompt: false }), false);
    const without = qwen.encode(qwen.chatTemplate!.render(history, { addGenerationPrompt: false }), false);
    expect(want).not.toEqual(without);
    const tokenize = async (assistant: Record<string, unknown>): Promise<Response> =>
      fetch(`${server.url}/tokenize`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'qwen3-tiny', messages: [history[0], { ...history[1], ...assistant }], add_generation_prompt: false }) });
    for (const field of ['reasoning_content', 'reasoning']) {
      const r = await tokenize({ [field]: 'Short light scatters more.' });
      expect(r.status).toBe(200);
      expect(((await r.json()) as { tokens: number[] }).tokens).toEqual([...want]);
    }
    const differ = await tokenize({ reasoning_content: 'a', reasoning: 'b' });
    expect(differ.status).toBe(400);
    const onUser = await fetch(`${server.url}/tokenize`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'qwen3-tiny', messages: [{ role: 'user', content: 'x', reasoning_content: 'y' }] }) });
    expect(onUser.status).toBe(400);
  });
});
