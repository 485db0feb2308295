/**
 * Tool calling over HTTP, from the clients people use: the official openai client (chat, whole and
 * streamed through its stream helper, which assembles `delta.tool_calls`; the Responses API),
 * LangChain's bindTools, the AI SDK's generateText with tools on chat and Responses models — on a
 * random-weight model with Qwen3's real tokenizer and chat template (hermes format), an adapter
 * whose own template uses Mistral's format, and a Llama 3 model whose template shows none
 * (`--tool-call-parser llama3_json`). `required` and named functions are enforced by a grammar, so
 * even random weights return valid calls; every call's arguments are checked by ajv against the
 * tool's schema. `auto` parses what the model writes and keeps anything else as content.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createOpenAI } from '@ai-sdk/openai';
import { ChatOpenAI } from '@langchain/openai';
import { tool } from '@langchain/core/tools';
import { generateText, jsonSchema, tool as aiTool } from 'ai';
import { Ajv2020 } from 'ajv/dist/2020.js';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { startServer, type RunningServer } from '../../src/server/serve.js';
import { postJson, testConfig, tinyQwen } from '../helpers/server.js';
import { makeTinyAdapter, makeTinyModel, tempDir } from '../helpers/tiny-model.js';
import { copyTokenizer } from '../helpers/tokenizers.js';

const tm = tinyQwen(801, 1024);
const store = tempDir('loraplex-tools-');
makeTinyAdapter(tm, { seed: 802, r: 4 }, join(store, 'agent'));
// An adapter trained on Mistral's tool format brings its own chat template.
makeTinyAdapter(tm, { seed: 803, r: 4 }, join(store, 'mistral-agent'));
const MISTRAL_STYLE =
  '{% if tools %}[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]{% endif %}' +
  '{% for m in messages %}{% if m.role == "user" %}[INST]{{ m.content }}[/INST]{% elif m.role == "assistant" %}{% if m.tool_calls %}[TOOL_CALLS]{{ m.tool_calls | tojson }}{% else %}{{ m.content }}{% endif %}{% elif m.role == "tool" %}[TOOL_RESULTS]{{ m.content }}[/TOOL_RESULTS]{% endif %}{% endfor %}';
writeFileSync(join(store, 'mistral-agent', 'tokenizer_config.json'), JSON.stringify({ chat_template: MISTRAL_STYLE }));

const weatherParams = { type: 'object', properties: { city: { type: 'string', maxLength: 12 }, unit: { enum: ['celsius', 'fahrenheit'] } }, required: ['city', 'unit'], additionalProperties: false };
const searchParams = { type: 'object', properties: { query: { type: 'string', maxLength: 10 } }, required: ['query'], additionalProperties: false };
const tools: OpenAI.ChatCompletionTool[] = [
  { type: 'function', function: { name: 'get_weather', description: 'Weather in a city', parameters: weatherParams } },
  { type: 'function', function: { name: 'search', description: 'Search the web', parameters: searchParams } },
];
const ajv = new Ajv2020({ strict: false });
const valid: Record<string, ReturnType<typeof ajv.compile>> = { get_weather: ajv.compile(weatherParams), search: ajv.compile(searchParams) };
const checkCall = (name: string, args: string): void => {
  expect(Object.keys(valid)).toContain(name);
  expect(valid[name](JSON.parse(args)), `${name}(${args}): ${JSON.stringify(valid[name].errors)}`).toBe(true);
};
const messages: OpenAI.ChatCompletionMessageParam[] = [{ role: 'user', content: 'What is the weather in Paris?' }];

let server: RunningServer;
let base: string;
const client = () => new OpenAI({ baseURL: `${base}/v1`, apiKey: 'unused' });
beforeAll(async () => {
  server = await startServer(testConfig({ model: tm.dir, adapters: store, port: 0, host: '127.0.0.1', servedModelName: 'tiny' }), { logger: false });
  await server.ready;
  base = server.url;
});
afterAll(async () => {
  await server?.close(0);
});

describe('the official openai client, chat completions', () => {
  it('tool_choice "required": every answer is calls of the offered tools with schema-valid arguments, finish_reason tool_calls', async () => {
    for (const model of ['agent', 'tiny']) {
      for (let seed = 1; seed <= 4; seed++) {
        const r = await client().chat.completions.create({ model, messages, tools, tool_choice: 'required', seed, temperature: 1, max_tokens: 700, logprobs: true });
        const choice = r.choices[0];
        // The raw answer is in the template's (hermes) format.
        expect(choice.logprobs!.content!.map((t) => t.token).join('')).toMatch(/^<tool_call>\n\{"name": "(get_weather|search)", "arguments": \{/);
        expect(choice.finish_reason, JSON.stringify(choice.message)).toBe('tool_calls');
        expect(choice.message.content).toBeNull();
        const calls = choice.message.tool_calls!;
        expect(calls.length).toBeGreaterThan(0);
        for (const c of calls) {
          expect(c.type).toBe('function');
          expect(c.id).toMatch(/^call_[0-9a-f]{24}$/);
          if (c.type === 'function') checkCall(c.function.name, c.function.arguments);
        }
        expect(new Set(calls.map((c) => c.id)).size).toBe(calls.length);
      }
    }
  });

  it('streamed: the client assembles delta.tool_calls into the same calls the whole answer has', async () => {
    for (let seed = 1; seed <= 3; seed++) {
      const body = { model: 'agent', messages, tools, tool_choice: 'required' as const, seed, max_tokens: 300 };
      const whole = await client().chat.completions.create(body);
      const stream = client().chat.completions.stream(body);
      const final = await stream.finalChatCompletion();
      const a = whole.choices[0].message.tool_calls!.map((c) => c.type === 'function' && [c.function.name, c.function.arguments]);
      const b = final.choices[0].message.tool_calls!.map((c) => c.type === 'function' && [c.function.name, c.function.arguments]);
      expect(b).toEqual(a);
      expect(final.choices[0].finish_reason).toBe('tool_calls');
    }
  });

  it('a named function is exactly one call of it; parallel_tool_calls false is one call', async () => {
    for (let seed = 1; seed <= 3; seed++) {
      const named = await client().chat.completions.create({ model: 'agent', messages, tools, tool_choice: { type: 'function', function: { name: 'search' } }, seed, temperature: 1, max_tokens: 200 });
      const calls = named.choices[0].message.tool_calls!;
      expect(calls.map((c) => c.type === 'function' && c.function.name)).toEqual(['search']);
      const one = await client().chat.completions.create({ model: 'agent', messages, tools, tool_choice: 'required', parallel_tool_calls: false, seed, temperature: 1, max_tokens: 300 });
      expect(one.choices[0].message.tool_calls).toHaveLength(1);
    }
  });

  it('"auto": what the model writes decides; a started call under parallel_tool_calls false is completed by the grammar', async () => {
    // Random weights: the answer is text (no calls, finish_reason from the engine), never a crash.
    const plain = await client().chat.completions.create({ model: 'agent', messages, tools, seed: 3, max_tokens: 20 });
    expect(plain.choices[0].message.tool_calls ?? []).toEqual([]);
    expect(plain.choices[0].finish_reason).not.toBe('tool_calls');
    // Make the model open a call (<tool_call> is token 151657): without a grammar the rest is noise, returned as content.
    const noise = await client().chat.completions.create({ model: 'agent', messages, tools, seed: 3, max_tokens: 12, logit_bias: { 151657: 100 } });
    expect(noise.choices[0].message.content).toContain('<tool_call>');
    expect(noise.choices[0].message.tool_calls ?? []).toEqual([]);
    // With at most one call, the grammar completes the call once it is started.
    const started = await client().chat.completions.create({ model: 'agent', messages, tools, parallel_tool_calls: false, seed: 3, max_tokens: 300, logit_bias: { 151657: 30 } });
    const calls = started.choices[0].message.tool_calls!;
    expect(calls).toHaveLength(1);
    if (calls[0].type === 'function') checkCall(calls[0].function.name, calls[0].function.arguments);
    expect(started.choices[0].finish_reason).toBe('tool_calls');
  });

  it('a conversation continues with the calls and their results (the template renders them)', async () => {
    const first = await client().chat.completions.create({ model: 'agent', messages, tools, tool_choice: 'required', parallel_tool_calls: false, seed: 5, max_tokens: 200 });
    const msg = first.choices[0].message;
    const next = await client().chat.completions.create({
      model: 'agent',
      tools,
      max_tokens: 8,
      messages: [...messages, { role: 'assistant', content: msg.content, tool_calls: msg.tool_calls }, { role: 'tool', tool_call_id: msg.tool_calls![0].id, content: '{"temp": 21}' }],
    });
    expect(next.choices[0].finish_reason).toMatch(/^(length|stop|tool_calls)$/);
  });

  it('bounded integer and number parameters are enforced, in the hermes and the Mistral format', async () => {
    const volumeParams = { type: 'object', properties: { level: { type: 'integer', minimum: 1, maximum: 10 }, gain: { type: 'number', minimum: -1.5, maximum: 2.5 } }, required: ['level', 'gain'], additionalProperties: false };
    const validVolume = ajv.compile(volumeParams);
    const volume: OpenAI.ChatCompletionTool[] = [{ type: 'function', function: { name: 'set_volume', description: 'Set the volume', parameters: volumeParams } }];
    for (const model of ['agent', 'mistral-agent']) {
      for (let seed = 1; seed <= 3; seed++) {
        // Random weights write a number's digits for long; a bias toward ',' (11) and '}' (92) ends them sooner.
        const r = await client().chat.completions.create({ model, messages, tools: volume, tool_choice: 'required', parallel_tool_calls: false, seed, temperature: 1, max_tokens: 300, logit_bias: { 11: 8, 92: 8 }, logprobs: true });
        expect(r.choices[0].finish_reason, `${model} ${seed} ${r.choices[0].logprobs!.content!.map((t) => t.token).join('')}`).toBe('tool_calls');
        const calls = r.choices[0].message.tool_calls!;
        expect(calls).toHaveLength(1);
        for (const c of calls) {
          if (c.type !== 'function') continue;
          expect(c.function.name).toBe('set_volume');
          expect(validVolume(JSON.parse(c.function.arguments)), c.function.arguments).toBe(true);
        }
      }
    }
  });

  it('an adapter with its own Mistral-format template gets Mistral-format calls', async () => {
    for (let seed = 1; seed <= 3; seed++) {
      const r = await client().chat.completions.create({ model: 'mistral-agent', messages, tools, tool_choice: 'required', seed, temperature: 1, max_tokens: 300, logprobs: true });
      expect(r.choices[0].logprobs!.content!.map((t) => t.token).join('')).toMatch(/^\[TOOL_CALLS\]\[\{"name": "(get_weather|search)", "arguments": \{/);
      const calls = r.choices[0].message.tool_calls!;
      expect(calls.length).toBeGreaterThan(0);
      for (const c of calls) if (c.type === 'function') checkCall(c.function.name, c.function.arguments);
    }
  });

  it('the Responses API returns function_call items, whole and streamed', async () => {
    const rtools: OpenAI.Responses.FunctionTool[] = [
      { type: 'function', name: 'get_weather', description: 'Weather in a city', parameters: weatherParams, strict: true },
      { type: 'function', name: 'search', parameters: searchParams, strict: true },
    ];
    const r = await client().responses.create({ model: 'agent', input: 'Weather in Paris?', tools: rtools, tool_choice: 'required', max_output_tokens: 300 });
    const calls = r.output.filter((o) => o.type === 'function_call');
    expect(calls.length).toBeGreaterThan(0);
    expect(r.output.some((o) => o.type === 'message')).toBe(false);
    for (const c of calls) if (c.type === 'function_call') {
      expect(c.call_id).toMatch(/^call_/);
      checkCall(c.name, c.arguments);
    }
    const named = await client().responses.create({ model: 'agent', input: 'Weather?', tools: rtools, tool_choice: { type: 'function', name: 'get_weather' }, max_output_tokens: 300, stream: true });
    const events: string[] = [];
    let done: OpenAI.Responses.Response | null = null;
    for await (const e of named) {
      events.push(e.type);
      if (e.type === 'response.completed') done = e.response;
    }
    expect(events).toContain('response.function_call_arguments.done');
    const streamedCalls = done!.output.filter((o) => o.type === 'function_call');
    expect(streamedCalls.map((c) => c.type === 'function_call' && c.name)).toEqual(['get_weather']);
    if (streamedCalls[0].type === 'function_call') checkCall('get_weather', streamedCalls[0].arguments);
  });
});

describe('framework clients', () => {
  it("LangChain's bindTools returns tool_calls with parsed arguments", async () => {
    const weather = tool(async () => 'sunny', { name: 'get_weather', description: 'Weather in a city', schema: z.object({ city: z.string().max(12), unit: z.enum(['celsius', 'fahrenheit']) }) });
    const model = new ChatOpenAI({ model: 'agent', apiKey: 'unused', configuration: { baseURL: `${base}/v1` }, maxTokens: 200, temperature: 0 });
    const bound = model.bindTools([weather], { tool_choice: 'get_weather' });
    const msg = await bound.invoke('Weather in Paris?');
    expect(msg.tool_calls).toHaveLength(1);
    expect(msg.tool_calls![0].name).toBe('get_weather');
    expect(valid.get_weather(msg.tool_calls![0].args)).toBe(true);
  });

  it("the AI SDK's generateText with tools, on chat and Responses models", async () => {
    const openai = createOpenAI({ baseURL: `${base}/v1`, apiKey: 'unused' });
    const aiTools = { get_weather: aiTool({ description: 'Weather in a city', inputSchema: jsonSchema(weatherParams as never) }) };
    for (const model of [openai.chat('agent'), openai('agent')]) {
      // Unseeded sampling: after each call the grammar lets the model stop or start another, so
      // the token limit leaves room for many calls (a limit of 200 tokens was once reached in CI).
      const r = await generateText({ model, prompt: 'Weather in Paris?', tools: aiTools, toolChoice: 'required', maxOutputTokens: 600 });
      expect(r.toolCalls.length).toBeGreaterThan(0);
      expect(r.toolCalls[0].toolName).toBe('get_weather');
      expect(valid.get_weather(r.toolCalls[0].input)).toBe(true);
      expect(r.finishReason).toBe('tool-calls');
    }
  });
});

describe('refusals', () => {
  const post = (body: unknown) => postJson(base, '/v1/chat/completions', body);
  it('bad tools and tool_choice are 400s naming the field; a schema the decoder would not enforce names the tool', async () => {
    const cases: [unknown, string][] = [
      [{ tools, tool_choice: { type: 'function', function: { name: 'nope' } } }, 'tool_choice.function.name'],
      [{ tools, tool_choice: 'always' }, 'tool_choice'],
      [{ tool_choice: 'required' }, 'tool_choice'],
      [{ tools: [{ type: 'function', function: { name: 'bad name!' } }] }, 'tools[0].function.name'],
      [{ tools: [tools[0], tools[0]] }, 'tools'],
      [{ tools: [{ type: 'retrieval' }] }, 'tools[0].type'],
      [{ tools, parallel_tool_calls: 'no' }, 'parallel_tool_calls'],
      [{ tools: [{ type: 'function', function: { name: 'n', parameters: { type: 'object', properties: { k: { type: 'integer', multipleOf: 5 } } } } }], tool_choice: 'required' }, 'tools[0].function.parameters'],
      [{ tools: [{ type: 'function', function: { name: 'n', parameters: { type: 'object', properties: { k: { type: 'integer', minimum: 5, maximum: 1 } } } } }], tool_choice: 'required' }, 'tools[0].function.parameters'],
      [{ tools, tool_choice: 'required', response_format: { type: 'json_object' } }, 'response_format'],
      [{ tools, tool_choice: 'required', ignore_eos: true }, 'tool_choice'],
    ];
    for (const [extra, param] of cases) {
      const r = await post({ model: 'agent', messages, max_tokens: 4, ...(extra as object) });
      const body = (await r.json()) as { error: { param: string; message: string } };
      expect(r.status, JSON.stringify(body)).toBe(400);
      expect(body.error.param, body.error.message).toBe(param);
    }
  });
});

describe('a Llama 3 model whose template shows no tool format', () => {
  const llama = makeTinyModel({ flavour: 'llama', seed: 811, vocabSize: 128256, hiddenSize: 64, numHeads: 4, numKvHeads: 2, intermediateSize: 128, maxPositionEmbeddings: 1024 });
  copyTokenizer('llama3', llama.dir);

  it('refuses tools (naming --tool-call-parser) until started with --tool-call-parser llama3_json, then returns calls', async () => {
    const plain = await startServer(testConfig({ model: llama.dir, port: 0, host: '127.0.0.1', servedModelName: 'llama' }), { logger: false });
    try {
      await plain.ready;
      const r = await postJson(plain.url, '/v1/chat/completions', { model: 'llama', messages, tools, max_tokens: 4 });
      const body = (await r.json()) as { error: { param: string; message: string } };
      expect(r.status).toBe(422);
      expect(body.error.param).toBe('tools');
      expect(body.error.message).toMatch(/--tool-call-parser/);
      // tool_choice "none" is fine: the tools are not offered.
      expect((await postJson(plain.url, '/v1/chat/completions', { model: 'llama', messages, tools, tool_choice: 'none', max_tokens: 4 })).status).toBe(200);
    } finally {
      await plain.close(0);
    }
    const flagged = await startServer(testConfig({ model: llama.dir, port: 0, host: '127.0.0.1', servedModelName: 'llama', toolCallParser: 'llama3_json' }), { logger: false });
    try {
      await flagged.ready;
      const c = new OpenAI({ baseURL: `${flagged.url}/v1`, apiKey: 'unused' });
      for (let seed = 1; seed <= 3; seed++) {
        const r = await c.chat.completions.create({ model: 'llama', messages, tools, tool_choice: 'required', seed, temperature: 1, max_tokens: 300 });
        expect(r.choices[0].finish_reason).toBe('tool_calls');
        for (const call of r.choices[0].message.tool_calls!) if (call.type === 'function') checkCall(call.function.name, call.function.arguments);
      }
    } finally {
      await flagged.close(0);
    }
  });
});
