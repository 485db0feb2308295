/**
 * Structured outputs over HTTP, from the clients people use: the official openai client
 * (response_format json_schema / json_object, streamed and not; vLLM's guided_* and
 * structured_outputs as extra body fields; the Responses API's text.format), LangChain's
 * withStructuredOutput, the AI SDK's generateObject, TGI's parameters.grammar — sampled from a
 * random-weight model with Qwen3's real tokenizer, each answer checked by ajv or the regex; zod
 * schemas with bounded integers and numbers through the AI SDK, LangChain and the openai client.
 * Specs the decoder would not enforce are 4xx in the route's shape, naming the keyword.
 */
import { join } from 'node:path';
import { createOpenAI } from '@ai-sdk/openai';
import { ChatOpenAI } from '@langchain/openai';
import { generateObject, jsonSchema } from 'ai';
import { Ajv2020 } from 'ajv/dist/2020.js';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { startServer, type RunningServer } from '../../src/server/serve.js';
import { postJson, testConfig, tinyQwen } from '../helpers/server.js';
import { makeTinyAdapter, tempDir } from '../helpers/tiny-model.js';

const tm = tinyQwen(701, 1024);
const store = tempDir('loraplex-structured-');
makeTinyAdapter(tm, { seed: 702, r: 4 }, join(store, 'extract'));

let server: RunningServer;
let base: string;
beforeAll(async () => {
  server = await startServer(testConfig({ model: tm.dir, adapters: store, port: 0, host: '127.0.0.1', servedModelName: 'tiny' }), { logger: false });
  await server.ready;
  base = server.url;
});
afterAll(async () => {
  await server?.close(0);
});

const person = {
  type: 'object',
  properties: { name: { type: 'string', maxLength: 16 }, size: { enum: ['s', 'm', 'l'] }, tags: { type: 'array', items: { enum: ['a', 'b'] }, maxItems: 3 } },
  required: ['name', 'size', 'tags'],
  additionalProperties: false,
};
const validPerson = new Ajv2020().compile(person);
const client = () => new OpenAI({ baseURL: `${base}/v1`, apiKey: 'unused' });
const messages = [{ role: 'user' as const, content: 'Extract the person: Ada, 36.' }];

describe('the official openai client', () => {
  it('response_format json_schema: schema-valid JSON under sampling, streamed and not, on an adapter and the base', async () => {
    for (const model of ['extract', 'tiny']) {
      for (let seed = 1; seed <= 3; seed++) {
        const r = await client().chat.completions.create({ model, messages, seed, temperature: 1, max_tokens: 200, response_format: { type: 'json_schema', json_schema: { name: 'person', schema: person, strict: true } } });
        expect(r.choices[0].finish_reason).toBe('stop');
        expect(validPerson(JSON.parse(r.choices[0].message.content!)), r.choices[0].message.content!).toBe(true);
      }
      let streamed = '';
      const stream = await client().chat.completions.create({ model, messages, seed: 9, temperature: 1, max_tokens: 200, stream: true, response_format: { type: 'json_schema', json_schema: { name: 'person', schema: person } } });
      for await (const chunk of stream) streamed += chunk.choices[0]?.delta?.content ?? '';
      expect(validPerson(JSON.parse(streamed)), streamed).toBe(true);
    }
  });

  it('json_object, and vLLM guided_choice / guided_regex / structured_outputs on completions', async () => {
    // Any object may nest without end under random weights: every answer is an object or its beginning, and the complete ones parse.
    let complete = 0;
    for (let seed = 1; seed <= 6; seed++) {
      const obj = await client().chat.completions.create({ model: 'extract', messages, seed, max_tokens: 60, response_format: { type: 'json_object' } });
      const text = obj.choices[0].message.content!;
      expect(text.startsWith('{')).toBe(true);
      if (obj.choices[0].finish_reason === 'stop') {
        complete++;
        const value = JSON.parse(text) as unknown;
        expect(value !== null && typeof value === 'object' && !Array.isArray(value)).toBe(true);
      }
    }
    expect(complete).toBeGreaterThan(0);
    const choice = await client().completions.create({ model: 'extract', prompt: 'Sentiment:', max_tokens: 20, seed: 4, guided_choice: ['positive', 'negative', 'very mixed'] } as OpenAI.CompletionCreateParamsNonStreaming);
    expect(['positive', 'negative', 'very mixed']).toContain(choice.choices[0].text);
    const regex = await client().completions.create({ model: 'tiny', prompt: 'Date:', max_tokens: 20, seed: 5, guided_regex: '20[0-9]{2}-(0[1-9]|1[0-2])' } as OpenAI.CompletionCreateParamsNonStreaming);
    expect(regex.choices[0].text).toMatch(/^20[0-9]{2}-(0[1-9]|1[0-2])$/);
    const so = await client().chat.completions.create({ model: 'tiny', messages, max_tokens: 20, seed: 6, structured_outputs: { choice: ['yes', 'no'] } } as OpenAI.ChatCompletionCreateParamsNonStreaming);
    expect(['yes', 'no']).toContain(so.choices[0].message.content);
  });

  it('the Responses API: text.format json_schema', async () => {
    const r = await client().responses.create({ model: 'extract', input: 'Extract the person', max_output_tokens: 200, text: { format: { type: 'json_schema', name: 'person', schema: person, strict: true } } });
    expect(validPerson(JSON.parse(r.output_text)), r.output_text).toBe(true);
  });
});

describe('framework helpers', () => {
  const Person = z.object({ name: z.string().max(16), size: z.enum(['s', 'm', 'l']), vip: z.boolean() });

  it("LangChain's withStructuredOutput returns a parsed object (json_schema method)", async () => {
    const llm = new ChatOpenAI({ model: 'extract', apiKey: 'unused', configuration: { baseURL: `${base}/v1` }, maxTokens: 200, temperature: 1 });
    const out = await llm.withStructuredOutput(Person, { method: 'jsonSchema' }).invoke('Extract the person: Ada, 36, VIP.');
    expect(Person.safeParse(out).success, JSON.stringify(out)).toBe(true);
  });

  it("the AI SDK's generateObject returns a schema-valid object (chat and Responses models)", async () => {
    const openai = createOpenAI({ baseURL: `${base}/v1`, apiKey: 'unused' });
    for (const model of [openai.chat('extract'), openai('extract')]) {
      const { object } = await generateObject({ model, schema: Person, prompt: 'Extract the person: Ada, 36.', maxOutputTokens: 200 });
      expect(Person.safeParse(object).success, JSON.stringify(object)).toBe(true);
    }
    const { object } = await generateObject({ model: openai.chat('tiny'), schema: jsonSchema<{ name: string; size: string; tags: string[] }>(person as Parameters<typeof jsonSchema>[0]), prompt: 'x', maxOutputTokens: 200 });
    expect(validPerson(object)).toBe(true);
  });
});

describe('bounded numbers', () => {
  // zod's .int() writes ±(2^53 - 1) bounds, .min()/.max() minimum/maximum, .positive() exclusiveMinimum 0.
  const Reading = z.object({ age: z.number().int().min(0).max(120), score: z.number().min(-1.5).max(2.75), count: z.number().int(), share: z.number().positive().max(1) });
  const readingSchema = {
    type: 'object',
    properties: {
      age: { type: 'integer', minimum: 0, maximum: 120 },
      score: { type: 'number', minimum: -1.5, maximum: 2.75 },
      count: { type: 'integer', minimum: -9007199254740991, maximum: 9007199254740991 },
      share: { type: 'number', exclusiveMinimum: 0, maximum: 1 },
    },
    required: ['age', 'score', 'count', 'share'],
    additionalProperties: false,
  };
  const validReading = new Ajv2020().compile(readingSchema);
  // Random weights would write a number's digits for hundreds of tokens; a bias toward the tokens
  // that end one (',' 11 and '}' 92 in Qwen3's vocabulary) stands in for a trained model. The
  // grammar alone decides which digits may come.
  const endNumbers = { 11: 8, 92: 8 };
  const check = (value: unknown) => {
    expect(validReading(value), `${JSON.stringify(value)}: ${JSON.stringify(validReading.errors)}`).toBe(true);
    expect(Reading.safeParse(value).success, JSON.stringify(value)).toBe(true);
  };

  it("the AI SDK's generateObject with zod .int().min().max() and .min()/.max() numbers", async () => {
    const openai = createOpenAI({ baseURL: `${base}/v1`, apiKey: 'unused' });
    for (const model of ['extract', 'tiny']) {
      for (let seed = 1; seed <= 2; seed++) {
        const { object } = await generateObject({ model: openai.chat(model), schema: Reading, prompt: 'Reading: age 36, score 1.5.', seed, maxOutputTokens: 200, providerOptions: { openai: { logitBias: endNumbers } } });
        check(object);
      }
    }
  });

  it("LangChain's withStructuredOutput with the same zod schema", async () => {
    const llm = new ChatOpenAI({ model: 'extract', apiKey: 'unused', configuration: { baseURL: `${base}/v1` }, maxTokens: 200, temperature: 1, logitBias: endNumbers });
    for (let i = 0; i < 2; i++) check(await llm.withStructuredOutput(Reading, { method: 'jsonSchema' }).invoke('Reading: age 36, score 1.5.'));
  });

  it('the official openai client: response_format json_schema with integer and number bounds, under sampling, streamed and not', async () => {
    for (const model of ['extract', 'tiny']) {
      for (let seed = 1; seed <= 3; seed++) {
        const r = await client().chat.completions.create({ model, messages, seed, temperature: 1, max_tokens: 200, logit_bias: endNumbers, response_format: { type: 'json_schema', json_schema: { name: 'reading', schema: readingSchema, strict: true } } });
        expect(r.choices[0].finish_reason).toBe('stop');
        check(JSON.parse(r.choices[0].message.content!));
      }
    }
    let streamed = '';
    const stream = await client().chat.completions.create({ model: 'extract', messages, seed: 4, temperature: 1, max_tokens: 200, logit_bias: endNumbers, stream: true, response_format: { type: 'json_schema', json_schema: { name: 'reading', schema: readingSchema } } });
    for await (const chunk of stream) streamed += chunk.choices[0]?.delta?.content ?? '';
    check(JSON.parse(streamed));
    // A bare bounded integer.
    const age = new Ajv2020().compile({ type: 'integer', minimum: 0, maximum: 120 });
    for (let seed = 1; seed <= 4; seed++) {
      const r = await client().chat.completions.create({ model: 'extract', messages, seed, temperature: 1, max_tokens: 20, response_format: { type: 'json_schema', json_schema: { name: 'age', schema: { type: 'integer', minimum: 0, maximum: 120 } } } });
      const text = r.choices[0].message.content!;
      expect(age(JSON.parse(text)), text).toBe(true);
    }
  });
});

describe('TGI parameters.grammar', () => {
  it('json and regex grammars constrain generated_text', async () => {
    const json = (await (await postJson(base, '/generate', { inputs: 'Person:', parameters: { max_new_tokens: 200, do_sample: true, seed: 2, grammar: { type: 'json', value: person } } })).json()) as { generated_text: string };
    expect(validPerson(JSON.parse(json.generated_text)), json.generated_text).toBe(true);
    const regex = (await (await postJson(base, '/generate', { inputs: 'Code:', parameters: { max_new_tokens: 20, grammar: { type: 'regex', value: '[A-Z]{3}-[0-9]{3}' } } })).json()) as { generated_text: string };
    expect(regex.generated_text).toMatch(/^[A-Z]{3}-[0-9]{3}$/);
  });
});

describe('refusals name the problem, in the route shape', () => {
  const chat = (extra: Record<string, unknown>) => postJson(base, '/v1/chat/completions', { model: 'tiny', messages, max_tokens: 20, ...extra });

  it.each([
    [{ response_format: { type: 'json_schema', json_schema: { name: 'n', schema: { type: 'integer', multipleOf: 3 } } } }, '"multipleOf"', 'schema'],
    [{ response_format: { type: 'json_schema', json_schema: { name: 'n', schema: { type: 'object', properties: { n: { minimum: 1 } } } } } }, '#/properties/n/minimum: numeric bounds are enforced only with "type"', 'schema'],
    [{ response_format: { type: 'json_schema', json_schema: { name: 'n', schema: { type: 'integer', minimum: 10, maximum: 1 } } } }, 'no integer satisfies', 'schema'],
    [{ response_format: { type: 'json_schema', json_schema: { name: 'n', schema: { type: 'object', properties: { a: { type: 'string', format: 'bogus' } } } } } }, 'format "bogus"', 'schema'],
    [{ response_format: { type: 'json_schema', json_schema: { name: 'n', strict: true, schema: { type: 'object', properties: { a: { type: 'string' } }, required: ['a', 'b'], additionalProperties: false } } } }, '#/required: "b" is required but not declared in "properties", and "additionalProperties": false forbids it', 'schema'],
    [{ response_format: { type: 'json_schema', json_schema: { name: 'n' } } }, 'json_schema.schema: is required', 'response_format.json_schema.schema'],
    [{ response_format: { type: 'xml' } }, 'must be "text", "json_object" or "json_schema"', 'response_format.type'],
    [{ response_format: { type: 'json_object' }, guided_regex: 'a+' }, 'only one output constraint', 'guided_regex'],
    [{ guided_grammar: 'root ::= (' }, 'grammar', 'grammar'],
    [{ guided_regex: '(' }, 'regex', 'regex'],
    [{ guided_choice: [] }, 'non-empty array', 'guided_choice'],
    [{ response_format: { type: 'json_object' }, ignore_eos: true }, 'ignore_eos', 'response_format'],
    [{ guided_decoding_backend: 'outlines', guided_choice: ['a'] }, 'only "xgrammar"', 'guided_decoding_backend'],
  ])('chat %j → 400', async (extra, message, param) => {
    const r = await chat(extra);
    const body = (await r.json()) as { error: { message: string; type: string; param: string } };
    expect(r.status, JSON.stringify(body)).toBe(400);
    expect(body.error.type).toBe('invalid_request_error');
    expect(body.error.message).toContain(message);
    expect(body.error.param).toBe(param);
  });

  it('TGI: 422 with error_type validation', async () => {
    const r = await postJson(base, '/generate', { inputs: 'x', parameters: { grammar: { type: 'json', value: { type: 'array', uniqueItems: true } } } });
    expect(r.status).toBe(422);
    const body = (await r.json()) as { error: string; error_type: string };
    expect(body.error_type).toBe('validation');
    expect(body.error).toContain('"uniqueItems"');
  });
});
