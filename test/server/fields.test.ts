/**
 * No field is silently ignored: every property of every request schema has a probe here, and each
 * probe shows that setting the field changes the answer (text, logprobs, usage, the stream, the
 * request log, the engine's prefix-cache hits) or that the request is refused with a 4xx naming the field. A schema property
 * without a probe fails the test. Unknown fields are accepted and logged.
 */
import { Writable } from 'node:stream';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ChatCompletionRequest, CompletionRequest, GenerateRequest, ResponsesRequest, TgiParameters } from '../../src/server/schemas.js';
import { MessagesRequest } from '../../src/server/anthropic/schemas.js';
import { startServer, type RunningServer } from '../../src/server/serve.js';
import { ADMIN, testConfig, tinyQwen } from '../helpers/server.js';
import { makeTinyAdapter, tempDir } from '../helpers/tiny-model.js';

const tm = tinyQwen(701);
const store = tempDir('loraplex-fields-');
makeTinyAdapter(tm, { seed: 702, r: 4 }, join(store, 'alpha'));
const EOS = 151645;
const logs: string[] = [];

let server: RunningServer;
beforeAll(async () => {
  const stream = new Writable({
    write(chunk: Buffer, _e, cb) {
      logs.push(chunk.toString());
      cb();
    },
  });
  server = await startServer(testConfig({ model: tm.dir, adapters: store, adminToken: ADMIN, port: 0, host: '127.0.0.1', servedModelName: 'tiny', logLevel: 'info' }), { logStream: stream });
  await server.ready;
});
afterAll(async () => {
  await server?.close(0);
});

/** The answer without what differs on every call (ids, times), as text. */
async function answer(path: string, body: unknown): Promise<{ status: number; text: string }> {
  const r = await fetch(`${server.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  const text = (await r.text()).replace(/"(id|created|created_at|item_id)":("[^"]*"|\d+)/g, '').replace(/(chatcmpl|cmpl|resp|msg|toolu)[-_][a-z0-9]+/g, '');
  return { status: r.status, text };
}

type Probe =
  /** Setting the field (patch applied to `base`, or to `with` first) changes the answer. */
  | { changes: Record<string, unknown>; with?: Record<string, unknown> }
  /** Setting the field is refused with a 4xx naming it. */
  | { refused: Record<string, unknown>; with?: Record<string, unknown> }
  /** Setting the field writes it to the request log. */
  | { logged: Record<string, unknown>; text: string }
  /** With the field set, a repeat of a long prompt (`prompt`: top-level fields) is not served from the prefix cache. */
  | { salted: Record<string, unknown>; prompt: Record<string, unknown> };

/** A prompt of several KV blocks for the prefix-cache probes, one per route. */
const longText = (tag: string): string => `Probe ${tag}: ${'the quick brown fox jumps over the lazy dog. '.repeat(5)}`;

const sampled = { temperature: 1.5, seed: 7, max_tokens: 8 };
const withLogprobs = { logprobs: true, top_logprobs: 2, max_tokens: 4 };
const endsAtOnce = { logit_bias: { [EOS]: 100 }, max_tokens: 6 };

const chatProbes: Record<string, Probe> = {
  model: { changes: { model: 'alpha' } },
  messages: { changes: { messages: [{ role: 'user', content: 'Something else entirely' }] } },
  max_tokens: { changes: { max_tokens: 2 } },
  max_completion_tokens: { changes: { max_completion_tokens: 2 } },
  temperature: { changes: { temperature: 1.5, seed: 1 } },
  top_p: { changes: { top_p: 0.05 }, with: sampled },
  n: { changes: { n: 2 } },
  stream: { changes: { stream: true } },
  stream_options: { changes: { stream_options: { include_usage: true } }, with: { stream: true } },
  stop: { changes: { stop: ['e'] }, with: { max_tokens: 16, logit_bias: { 68: 50 } } },
  seed: { changes: { seed: 99 }, with: sampled },
  presence_penalty: { changes: { presence_penalty: 2 }, with: withLogprobs },
  frequency_penalty: { changes: { frequency_penalty: 2 }, with: withLogprobs },
  logit_bias: { changes: { logit_bias: { 5: 10 } }, with: withLogprobs },
  user: { logged: { user: 'probe-user-1' }, text: '"user":"probe-user-1"' },
  top_k: { changes: { top_k: 1 }, with: sampled },
  min_p: { changes: { min_p: 0.9 }, with: sampled },
  repetition_penalty: { changes: { repetition_penalty: 1.8 }, with: withLogprobs },
  stop_token_ids: { changes: { stop_token_ids: [EOS, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13] }, with: { logit_bias: { 3: 100 } } },
  ignore_eos: { changes: { ignore_eos: true }, with: endsAtOnce },
  min_tokens: { changes: { min_tokens: 3 }, with: endsAtOnce },
  truncate_prompt_tokens: { changes: { truncate_prompt_tokens: 1 } },
  adapter_id: { changes: { adapter_id: 'alpha' } },
  merged_adapters: { changes: { merged_adapters: { ids: ['alpha'], weights: [0.5] } } },
  lora_scale: { changes: { lora_scale: 4 }, with: { model: 'alpha' } },
  logprobs: { changes: { logprobs: true } },
  top_logprobs: { changes: { top_logprobs: 3 }, with: { logprobs: true } },
  tools: { changes: { tools: [{ type: 'function', function: { name: 'get_weather', description: 'Weather', parameters: { type: 'object', properties: {} } } }] } },
  tool_choice: { changes: { tool_choice: 'none' }, with: { tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'object' } } }] } },
  // Under auto, one call at most is a grammar: a call the model starts (<tool_call>, token 151657, pushed by logit_bias) is completed.
  parallel_tool_calls: { changes: { parallel_tool_calls: false }, with: { tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'object', properties: { a: { type: 'string', maxLength: 3 } } } } }], logit_bias: { 151657: 30 }, max_tokens: 40 } },
  response_format: { changes: { response_format: { type: 'json_schema', json_schema: { name: 'c', schema: { enum: ['zq'] } } } } },
  guided_json: { changes: { guided_json: { enum: ['zq'] } } },
  guided_regex: { changes: { guided_regex: 'zq+' } },
  guided_choice: { changes: { guided_choice: ['zq'] } },
  guided_grammar: { changes: { guided_grammar: 'root ::= "zq"' } },
  guided_decoding_backend: { refused: { guided_decoding_backend: 'outlines', guided_choice: ['zq'] } },
  structured_outputs: { changes: { structured_outputs: { choice: ['zq'] } } },
  add_generation_prompt: { changes: { add_generation_prompt: false } },
  chat_template_kwargs: { changes: { chat_template_kwargs: { enable_thinking: false } } },
  cache_salt: { salted: { cache_salt: 'probe-salt' }, prompt: { messages: [{ role: 'user', content: longText('chat') }] } },
};

const completionProbes: Record<string, Probe> = {
  ...Object.fromEntries(
    Object.entries(chatProbes).filter(([k]) => !['messages', 'max_completion_tokens', 'logprobs', 'top_logprobs', 'tools', 'tool_choice', 'parallel_tool_calls', 'add_generation_prompt', 'chat_template_kwargs'].includes(k)),
  ),
  presence_penalty: { changes: { presence_penalty: 2 }, with: { logprobs: 2, max_tokens: 4 } },
  frequency_penalty: { changes: { frequency_penalty: 2 }, with: { logprobs: 2, max_tokens: 4 } },
  logit_bias: { changes: { logit_bias: { 5: 10 } }, with: { logprobs: 2, max_tokens: 4 } },
  repetition_penalty: { changes: { repetition_penalty: 1.8 }, with: { logprobs: 2, max_tokens: 4 } },
  prompt: { changes: { prompt: 'Something else' } },
  logprobs: { changes: { logprobs: 2 } },
  echo: { changes: { echo: true } },
  suffix: { refused: { suffix: 'the end' } },
  best_of: { changes: { best_of: 3 }, with: sampled },
  cache_salt: { salted: { cache_salt: 'probe-salt' }, prompt: { prompt: longText('completions') } },
};

const tgiProbes: Record<string, Probe> = {
  adapter_id: { changes: { adapter_id: 'alpha' } },
  adapter_source: { refused: { adapter_source: 'hub' } },
  merged_adapters: { changes: { merged_adapters: { ids: ['alpha'], weights: [0.5] } } },
  adapter_parameters: { changes: { adapter_parameters: { ids: ['alpha'], weights: [0.5] } } },
  lora_scale: { changes: { lora_scale: 4 }, with: { adapter_id: 'alpha' } },
  max_new_tokens: { changes: { max_new_tokens: 2 } },
  temperature: { changes: { temperature: 1.5, seed: 1 } },
  top_p: { changes: { top_p: 0.05 }, with: { do_sample: true, temperature: 1.5, seed: 7, max_new_tokens: 8 } },
  top_k: { changes: { top_k: 1 }, with: { do_sample: true, temperature: 1.5, seed: 7, max_new_tokens: 8 } },
  repetition_penalty: { changes: { repetition_penalty: 1.8 } },
  frequency_penalty: { changes: { frequency_penalty: 2 } },
  stop: { changes: { stop: ['e'] }, with: { max_new_tokens: 16 } },
  seed: { changes: { seed: 99 }, with: { do_sample: true, seed: 7, max_new_tokens: 8 } },
  do_sample: { changes: { do_sample: true, seed: 3 } },
  details: { changes: { details: false } },
  return_full_text: { changes: { return_full_text: true } },
  decoder_input_details: { changes: { decoder_input_details: true } },
  top_n_tokens: { changes: { top_n_tokens: 2 } },
  truncate: { changes: { truncate: 1 }, with: { decoder_input_details: true } },
  best_of: { changes: { best_of: 2 }, with: { do_sample: true, seed: 7 } },
  typical_p: { refused: { typical_p: 0.5 } },
  watermark: { refused: { watermark: true } },
  grammar: { changes: { grammar: { type: 'regex', value: 'zq+' } } },
  response_format: { changes: { response_format: { type: 'json_object', schema: { enum: ['zq'] } } } },
  cache_salt: { salted: { cache_salt: 'probe-salt' }, prompt: { inputs: longText('generate') } },
};

const responsesProbes: Record<string, Probe> = {
  model: { changes: { model: 'alpha' } },
  lora_scale: { changes: { lora_scale: 4 }, with: { model: 'alpha' } },
  input: { changes: { input: 'Something else entirely' } },
  instructions: { changes: { instructions: 'Be brief.' } },
  max_output_tokens: { changes: { max_output_tokens: 2 } },
  temperature: { changes: { temperature: 1.5 } },
  top_p: { changes: { top_p: 0.05 }, with: { temperature: 1.5 } },
  stream: { changes: { stream: true } },
  store: { refused: { store: true } },
  previous_response_id: { refused: { previous_response_id: 'resp_123' } },
  tools: { changes: { tools: [{ type: 'function', name: 'get_weather', parameters: { type: 'object', properties: {} } }] } },
  tool_choice: { changes: { tool_choice: 'none' }, with: { tools: [{ type: 'function', name: 'f', parameters: { type: 'object' } }] } },
  parallel_tool_calls: { changes: { parallel_tool_calls: false }, with: { tools: [{ type: 'function', name: 'f', parameters: { type: 'object' } }, { type: 'function', name: 'g', parameters: { type: 'object' } }], tool_choice: 'required', max_output_tokens: 60 } },
  text: { changes: { text: { format: { type: 'json_schema', name: 'c', schema: { enum: ['zq'] } } } } },
  reasoning: { changes: { reasoning: { effort: 'none' } } },
  truncation: { refused: { truncation: 'auto' } },
  metadata: { changes: { metadata: { tenant: 'probe' } } },
  user: { logged: { user: 'probe-user-2' }, text: '"user":"probe-user-2"' },
  include: { refused: { include: ['reasoning.encrypted_content'] } },
  cache_salt: { salted: { cache_salt: 'probe-salt' }, prompt: { input: longText('responses') } },
};

const messagesProbes: Record<string, Probe> = {
  model: { changes: { model: 'alpha' } },
  messages: { changes: { messages: [{ role: 'user', content: 'Something else entirely' }] } },
  system: { changes: { system: 'You answer in French.' } },
  tools: { changes: { tools: [{ name: 'get_weather', input_schema: { type: 'object', properties: {} } }] } },
  tool_choice: { changes: { tool_choice: { type: 'none' } }, with: { tools: [{ name: 'f', input_schema: { type: 'object' } }] } },
  thinking: { changes: { thinking: { type: 'disabled' } } },
  output_config: { changes: { output_config: { format: { type: 'json_schema', schema: { enum: ['zq'] } } } } },
  lora_scale: { changes: { lora_scale: 4 }, with: { model: 'alpha' } },
  max_tokens: { changes: { max_tokens: 2 } },
  stop_sequences: { changes: { stop_sequences: [' ', 'e', 'a', 'o', 'i', 'n', 't', 's'] }, with: { max_tokens: 8 } },
  temperature: { changes: { temperature: 1 } },
  top_p: { changes: { top_p: 0.05 }, with: { temperature: 1, max_tokens: 8 } },
  top_k: { changes: { top_k: 1 }, with: { temperature: 1, max_tokens: 8 } },
  stream: { changes: { stream: true } },
  metadata: { logged: { metadata: { user_id: 'probe-user-3' } }, text: '"user":"probe-user-3"' },
  cache_control: { refused: { cache_control: 42 } },
  service_tier: { refused: { service_tier: 'priority' } },
  cache_salt: { salted: { cache_salt: 'probe-salt' }, prompt: { messages: [{ role: 'user', content: longText('messages') }] } },
  container: { refused: { container: 'container_1' } },
  mcp_servers: { refused: { mcp_servers: [{ type: 'url', url: 'http://127.0.0.1:1/mcp', name: 'x' }] } },
  context_management: { refused: { context_management: { edits: [] } } },
};

interface Route {
  path: string;
  schema: { properties: Record<string, unknown> };
  base: Record<string, unknown>;
  probes: Record<string, Probe>;
  /** The probe's fields go here (TGI: inside `parameters`). */
  wrap?: (fields: Record<string, unknown>) => Record<string, unknown>;
}

const ROUTES: Route[] = [
  { path: '/v1/chat/completions', schema: ChatCompletionRequest, base: { model: 'tiny', messages: [{ role: 'user', content: 'Hello there' }], max_tokens: 4, temperature: 0 }, probes: chatProbes },
  { path: '/v1/completions', schema: CompletionRequest, base: { model: 'tiny', prompt: 'Hello there', max_tokens: 4, temperature: 0 }, probes: completionProbes },
  {
    path: '/generate',
    schema: TgiParameters,
    base: { max_new_tokens: 4, details: true },
    probes: tgiProbes,
    wrap: (fields) => ({ inputs: 'Hello there', parameters: fields }),
  },
  { path: '/v1/responses', schema: ResponsesRequest, base: { model: 'tiny', input: 'Hello there', max_output_tokens: 4, temperature: 0 }, probes: responsesProbes },
  { path: '/v1/messages', schema: MessagesRequest, base: { model: 'tiny', messages: [{ role: 'user', content: 'Hello there' }], max_tokens: 4, temperature: 0 }, probes: messagesProbes },
];

describe('every field of every request schema is honoured or refused', () => {
  it('every schema property has a probe', () => {
    for (const r of ROUTES) expect(Object.keys(r.schema.properties).sort(), r.path).toEqual(Object.keys(r.probes).sort());
    expect(Object.keys(GenerateRequest.properties).sort()).toEqual(['inputs', 'parameters', 'stream']);
  });

  for (const r of ROUTES) {
    for (const [field, probe] of Object.entries(r.probes)) {
      it(`${r.path} ${field}`, async () => {
        const wrap = r.wrap ?? ((x: Record<string, unknown>) => x);
        const base = { ...r.base, ...('with' in probe ? probe.with : {}) };
        if ('refused' in probe) {
          const got = await answer(r.path, wrap({ ...base, ...probe.refused }));
          expect(got.status, got.text).toBeGreaterThanOrEqual(400);
          expect(got.status).toBeLessThan(500);
          expect(got.text).toContain(field);
          return;
        }
        if ('logged' in probe) {
          const got = await answer(r.path, wrap({ ...base, ...probe.logged }));
          expect(got.status).toBe(200);
          expect(logs.join('')).toContain(probe.text);
          return;
        }
        if ('salted' in probe) {
          const hits = async (): Promise<number> => (await server.ctx.engine!.stats()).prefixCacheHitTokens;
          const plain = { ...wrap(base), ...probe.prompt };
          expect((await answer(r.path, plain)).status).toBe(200);
          const cold = await hits();
          expect((await answer(r.path, plain)).status).toBe(200);
          const warm = await hits();
          expect(warm).toBeGreaterThan(cold);
          const got = await answer(r.path, { ...wrap({ ...base, ...probe.salted }), ...probe.prompt });
          expect(got.status, got.text).toBe(200);
          expect(await hits()).toBe(warm);
          return;
        }
        const before = await answer(r.path, wrap(base));
        const after = await answer(r.path, wrap({ ...base, ...probe.changes }));
        expect(before.status, before.text).toBe(200);
        expect(after.status, after.text).toBe(200);
        expect(after.text).not.toBe(before.text);
      });
    }
  }

  it('/generate follows inputs and stream too', async () => {
    const a = await answer('/generate', { inputs: 'Hello there', parameters: { max_new_tokens: 3 } });
    expect((await answer('/generate', { inputs: 'Other', parameters: { max_new_tokens: 3 } })).text).not.toBe(a.text);
    expect((await answer('/generate', { inputs: 'Hello there', parameters: { max_new_tokens: 3 }, stream: true })).text).toMatch(/^data: /);
  });

  it('unknown fields are accepted and listed in a warning', async () => {
    const got = await answer('/v1/completions', { model: 'tiny', prompt: 'x', max_tokens: 1, some_new_field: 1 });
    expect(got.status).toBe(200);
    expect(logs.join('')).toMatch(/"unknownFields":\["some_new_field"\]/);
    const refused = await answer('/v1/chat/completions', { model: 'tiny', messages: [{ role: 'user', content: 'x' }], use_beam_search: true });
    expect(refused.status).toBe(422);
    expect(refused.text).toMatch(/use_beam_search is not supported/);
  });
});
