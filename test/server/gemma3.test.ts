/**
 * A Gemma 3 checkpoint served end to end: a tiny random Gemma3ForCausalLM (its 262k vocabulary,
 * (1 + w) norms, q/k norms, sliding and global layers with their own RoPE bases) with Gemma 3's
 * real tokenizer and chat template, an adapter on every projection; greedy chat answers equal the
 * independent reference forward pass on the prompt the template renders (system turn folded into
 * the first user turn, as Gemma's template does).
 */
import { join } from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type RunningServer } from '../../src/server/serve.js';
import { referenceGreedy, testConfig } from '../helpers/server.js';
import { copyTokenizer, loadTokenizer } from '../helpers/tokenizers.js';
import { makeTinyAdapter, makeTinyModel, tempDir } from '../helpers/tiny-model.js';

const tm = makeTinyModel({
  flavour: 'gemma3', seed: 1301, vocabSize: 262208, hiddenSize: 32, numHeads: 2, numKvHeads: 1, headDim: 16, intermediateSize: 64, maxPositionEmbeddings: 512,
  configOverrides: { bos_token_id: 2, eos_token_id: [1, 106] },
});
copyTokenizer('gemma3', tm.dir);
const gemma = loadTokenizer('gemma3');
const store = tempDir('loraplex-gemma3-');
const adapter = makeTinyAdapter(tm, { seed: 1302, r: 4 }, join(store, 'poet'));

let server: RunningServer;
beforeAll(async () => {
  server = await startServer(testConfig({ model: tm.dir, adapters: store, port: 0, host: '127.0.0.1', servedModelName: 'gemma3-tiny' }), { logger: false });
  await server.ready;
}, 600_000);
afterAll(async () => {
  await server?.close(0);
});

describe('Gemma 3 over HTTP', () => {
  it('greedy chat on an adapter and the base equals the reference', async () => {
    const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused' });
    const messages = [
      { role: 'system' as const, content: 'Be brief.' },
      { role: 'user' as const, content: 'Write a haiku about rivers.' },
    ];
    const text = gemma.chatTemplate!.render(messages, { addGenerationPrompt: true });
    expect(text).toBe('<bos><start_of_turn>user\nBe brief.\n\nWrite a haiku about rivers.<end_of_turn>\n<start_of_turn>model\n');
    const prompt = gemma.encode(text, false);
    for (const [model, lora] of [['poet', adapter.lora], ['gemma3-tiny', null]] as const) {
      const r = await client.chat.completions.create({ model, messages, max_tokens: 6, temperature: 0 });
      expect(r.usage!.prompt_tokens).toBe(prompt.length);
      expect(r.choices[0].message.content).toBe(gemma.decode(referenceGreedy(tm, prompt, lora, 6)));
    }
  }, 600_000);
});
