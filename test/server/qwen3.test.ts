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
});
