/**
 * Tool calls: the format a chat template asks for; the parsers of the three formats on whole
 * answers and on the same answers cut into random pieces (as a stream delivers them), with their
 * fallbacks to content; and the tool-call grammars — random walks over Qwen3's real vocabulary for
 * every format and mode, each answer parsed back into calls of the offered tools whose arguments
 * an independent validator (ajv) accepts against the tool's parameter schema.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Ajv2020 } from 'ajv/dist/2020.js';
import { beforeAll, describe, expect, it } from 'vitest';
import { GrammarCompiler, grammarVocab } from '../../src/runtime/grammar/compiler.js';
import type { ToolGrammarSpec } from '../../src/runtime/grammar/tool-grammar.js';
import { detectToolCallFormat, TOOL_CALL_FORMATS, type ToolCallFormat } from '../../src/runtime/tool-calls/format.js';
import { parseToolCalls, ToolCallParser, type ParsedToolCall } from '../../src/runtime/tool-calls/parser.js';
import { prng } from '../../src/util/prng.js';
import { grammarWalker } from '../helpers/grammar-walk.js';
import { loadTokenizer, tokenizerDir } from '../helpers/tokenizers.js';

const NAMES = ['get_weather', 'search'];

/** The parser fed `text` in random pieces: content and calls, concatenated. */
function streamed(format: ToolCallFormat, text: string, seed: number): { content: string; calls: ParsedToolCall[] } {
  const rand = prng(seed);
  const p = new ToolCallParser(format, NAMES);
  let content = '';
  const calls: ParsedToolCall[] = [];
  for (let i = 0; i < text.length; ) {
    const n = 1 + Math.floor(rand() * 6);
    const o = p.push(text.slice(i, i + n));
    content += o.content;
    calls.push(...o.calls);
    i += n;
  }
  const o = p.end();
  return { content: content + o.content, calls: [...calls, ...o.calls] };
}

const weather = { name: 'get_weather', arguments: '{"city":"Paris","unit":"c"}' };
const search = { name: 'search', arguments: '{"q":"a \\"quoted\\" </tool_call> text"}' };

describe('tool-call formats', () => {
  it('are read from the chat template', () => {
    const qwen = JSON.parse(readFileSync(join(tokenizerDir('qwen3'), 'tokenizer_config.json'), 'utf8')) as { chat_template: string };
    expect(detectToolCallFormat(qwen.chat_template)).toBe('hermes');
    const llama3 = JSON.parse(readFileSync(join(tokenizerDir('llama3'), 'tokenizer_config.json'), 'utf8')) as { chat_template: string };
    // Llama 3.0's template has no tool format.
    expect(detectToolCallFormat(llama3.chat_template)).toBeNull();
    expect(detectToolCallFormat('{{ "[TOOL_CALLS]" }}')).toBe('mistral');
    expect(detectToolCallFormat('<|start_header_id|>ipython<|end_header_id|>{{ "<|python_tag|>" }}')).toBe('llama3_json');
  });
});

describe('tool-call parsers', () => {
  const cases: [ToolCallFormat, string, string | null, ParsedToolCall[]][] = [
    ['hermes', '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n</tool_call>', null, [weather]],
    ['hermes', 'Let me check.\n\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n</tool_call>\n<tool_call>\n{"name": "search", "arguments": {"q": "a \\"quoted\\" </tool_call> text"}}\n</tool_call>\n', 'Let me check.', [weather, search]],
    // Arguments written as a JSON string are accepted.
    ['hermes', '<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\", \\"unit\\": \\"c\\"}"}</tool_call>', null, [weather]],
    // A block the answer ends without closing is not a call, even when its JSON is complete: content, byte for byte
    // (the whitespace before a call that did close is its separator, as above).
    ['hermes', '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}', '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}', []],
    ['hermes', 'Checking. \n<tool_call>\n{"name": "search", "arguments": {"q": "x"}}\n</tool_call>\n<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n', 'Checking.\n<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n', [{ name: 'search', arguments: '{"q":"x"}' }]],
    // Not calls: content, unchanged.
    ['hermes', 'Plain answer with a < and <tool text.', 'Plain answer with a < and <tool text.', []],
    ['hermes', 'x <tool_call>{"name": "unknown", "arguments": {}}</tool_call>', 'x <tool_call>{"name": "unknown", "arguments": {}}</tool_call>', []],
    ['hermes', '<tool_call>{"name": "search", "arguments": {"q": </tool_call> tail', '<tool_call>{"name": "search", "arguments": {"q": </tool_call> tail', []],
    ['hermes', '<tool_call>{"name": "search", "arguments": {"q"', '<tool_call>{"name": "search", "arguments": {"q"', []],
    ['llama3_json', '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "c"}}', null, [weather]],
    ['llama3_json', '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", "unit": "c"}}; {"name": "search", "parameters": {"q": "a \\"quoted\\" </tool_call> text"}}', null, [weather, search]],
    ['llama3_json', '{"answer": 42}', '{"answer": 42}', []],
    ['llama3_json', 'The weather is {"name": "get_weather"}', 'The weather is {"name": "get_weather"}', []],
    ['mistral', '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}, {"name": "search", "arguments": {"q": "a \\"quoted\\" </tool_call> text"}}]', null, [weather, search]],
    // [TOOL_CALLS] is a special token, skipped when text is decoded.
    ['mistral', ' [{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}]', null, [weather]],
    ['mistral', '[1, 2, 3]', '[1, 2, 3]', []],
    ['mistral', 'Sure: [TOOL_CALLS]', 'Sure: [TOOL_CALLS]', []],
  ];

  it.each(cases.map((c, i) => [i, ...c] as const))('case %i (%s), whole and streamed in random pieces', (_i, format, text, content, calls) => {
    const whole = parseToolCalls(format, NAMES, text);
    expect(whole.calls).toEqual(calls);
    expect(whole.content).toBe(content);
    for (let seed = 1; seed <= 8; seed++) {
      const s = streamed(format, text, seed);
      expect(s.calls).toEqual(calls);
      expect(s.content).toBe(content ?? '');
    }
  });

  it('streams hermes content as it comes and each call as soon as it closes', () => {
    const p = new ToolCallParser('hermes', NAMES);
    expect(p.push('Hello')).toEqual({ content: 'Hello', calls: [] });
    // A possible start of the tag is held back.
    expect(p.push(' wor<tool')).toEqual({ content: ' wor', calls: [] });
    expect(p.push('_call>{"name": "search", "arguments": {"q": "x"}}')).toEqual({ content: '', calls: [] });
    expect(p.push('</tool_call>')).toEqual({ content: '', calls: [{ name: 'search', arguments: '{"q":"x"}' }] });
    expect(p.sawCalls).toBe(true);
    expect(p.end()).toEqual({ content: '', calls: [] });
  });
});

describe('tool-call grammars on a real vocabulary', () => {
  const qwen = loadTokenizer('qwen3');
  const EOS = 151645;
  const walk = grammarWalker({ size: 151936, eos: EOS, decode: (ids) => qwen.decode(ids) });
  let compiler: GrammarCompiler;
  beforeAll(async () => {
    compiler = await GrammarCompiler.create(grammarVocab(JSON.parse(readFileSync(join(tokenizerDir('qwen3'), 'tokenizer.json'), 'utf8')) as Record<string, unknown>, 151936, [EOS]));
  }, 600_000);

  const parameters: Record<string, object> = {
    get_weather: { type: 'object', properties: { city: { type: 'string', maxLength: 10 }, unit: { enum: ['c', 'f'] } }, required: ['city', 'unit'], additionalProperties: false },
    search: { type: 'object', properties: { q: { type: 'string', maxLength: 8 }, limit: { type: 'integer', minimum: 0 } }, required: ['q'], additionalProperties: false },
  };
  const ajv = new Ajv2020({ strict: false });
  const validators = Object.fromEntries(Object.entries(parameters).map(([n, s]) => [n, ajv.compile(s)]));
  const spec = (format: ToolCallFormat, mode: 'required' | 'auto', parallel: boolean, names = NAMES): ToolGrammarSpec => ({
    type: 'tool_calls',
    format,
    tools: names.map((n) => ({ name: n, parameters: JSON.stringify(parameters[n]) })),
    mode,
    parallel,
    params: names.map((_, i) => `tools[${i}].function.parameters`),
  });

  it.each(TOOL_CALL_FORMATS.map((f) => [f]))('%s: "required" walks are calls of offered tools with schema-valid arguments (one with parallel_tool_calls false)', async (format) => {
    let multi = 0;
    for (const parallel of [true, false]) {
      for (let seed = 1; seed <= 5; seed++) {
        const state = await compiler.state(spec(format, 'required', parallel));
        const text = qwen.decode(await walk(state, seed * 7 + format.length, 400));
        state.dispose();
        const { content, calls } = parseToolCalls(format, NAMES, text);
        expect(content, text).toBeNull();
        expect(calls.length).toBeGreaterThan(0);
        if (!parallel) expect(calls.length, text).toBe(1);
        if (calls.length > 1) multi++;
        for (const c of calls) expect(validators[c.name](JSON.parse(c.arguments)), `${text}: ${JSON.stringify(validators[c.name].errors)}`).toBe(true);
      }
    }
    // Parallel calls do happen in the walks (not only the first call).
    expect(multi).toBeGreaterThan(0);
  }, 600_000);

  it('a named function (one tool offered) is always that function; "auto" with one call at most allows text first', async () => {
    for (let seed = 1; seed <= 4; seed++) {
      const state = await compiler.state(spec('hermes', 'required', false, ['search']));
      const { calls } = parseToolCalls('hermes', NAMES, qwen.decode(await walk(state, seed)));
      state.dispose();
      expect(calls.map((c) => c.name)).toEqual(['search']);
    }
    // auto + one call: a walk is text, or text then exactly one call (forced here by feeding the trigger).
    const state = await compiler.state(spec('hermes', 'auto', false));
    for (const id of qwen.encode('I will look it up. <tool_call>', false)) expect(state.accept(id)).toBe(true);
    const tail = qwen.decode(await walk(state, 3));
    state.dispose();
    const { content, calls } = parseToolCalls('hermes', NAMES, `I will look it up. <tool_call>${tail}`);
    expect(content).toBe('I will look it up.');
    expect(calls).toHaveLength(1);
  }, 600_000);

  it('a parameter schema the decoder would not enforce is refused, naming the tool', async () => {
    const bad = { ...spec('hermes', 'required', true), tools: [{ name: 'get_weather', parameters: JSON.stringify(parameters.get_weather) }, { name: 'n', parameters: JSON.stringify({ type: 'object', properties: { k: { type: 'integer', multipleOf: 5 } } }) }] };
    await expect(compiler.compile(bad)).rejects.toMatchObject({ code: 'invalid_grammar', param: 'tools[1].function.parameters' });
    await expect(compiler.compile(bad)).rejects.toThrow(/multipleOf/);
  });
});
