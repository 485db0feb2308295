/**
 * Constrained decoding with XGrammar: the JSON-schema keywords it enforces (a valid and an invalid
 * instance each, on a one-character vocabulary) and the ones refused before compiling; the grammar
 * vocabulary built from real tokenizers; walks over Qwen3's real 151,669-token vocabulary that pick
 * random allowed tokens until the grammar completes, decoded and checked by an independent JSON
 * schema validator (ajv); masks applied to logits.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Ajv2020 } from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';
import { beforeAll, describe, expect, it } from 'vitest';
import { applyTokenMask, GrammarCompiler, grammarVocab, spliceRanges, type GrammarSpec } from '../../src/runtime/grammar/compiler.js';
import { checkJsonSchema } from '../../src/runtime/grammar/schema-check.js';
import { xgrammar } from '../../src/runtime/grammar/xgrammar.js';
import { grammarWalker } from '../helpers/grammar-walk.js';
import { loadTokenizer, tokenizerDir, type TokenizerName } from '../helpers/tokenizers.js';

const tokenizerJson = (name: TokenizerName) => JSON.parse(readFileSync(join(tokenizerDir(name), 'tokenizer.json'), 'utf8')) as Record<string, unknown>;

/** Feeds `text` one character at a time, then the stop token. */
async function acceptsText(compiler: GrammarCompiler, chars: string[], spec: GrammarSpec, text: string): Promise<boolean> {
  const state = await compiler.state(spec);
  try {
    for (const ch of text) {
      const id = chars.indexOf(ch);
      if (id < 0 || !state.accept(id)) return false;
    }
    return state.accept(chars.length);
  } finally {
    state.dispose();
  }
}

describe('JSON-schema keywords', () => {
  const chars = [...Array.from({ length: 95 }, (_, i) => String.fromCharCode(32 + i)), '\t'];
  let compiler: GrammarCompiler;
  beforeAll(async () => {
    compiler = await GrammarCompiler.create({ tokens: [...chars, '</s>'], vocabType: 'raw', stopIds: [chars.length] });
  });
  const schema = (s: unknown): GrammarSpec => ({ type: 'json_schema', schema: JSON.stringify(s) });

  // [keyword, schema, an instance it allows, one it forbids]
  const enforced: [string, unknown, string, string][] = [
    ['type', { type: 'integer' }, '1', '"a"'],
    ['type (list)', { type: ['integer', 'null'] }, 'null', '"a"'],
    ['enum', { enum: ['a', 1] }, '1', '2'],
    ['const', { const: 'x' }, '"x"', '"y"'],
    ['minLength', { type: 'string', minLength: 3 }, '"abc"', '"ab"'],
    ['maxLength', { type: 'string', maxLength: 2 }, '"ab"', '"abc"'],
    ['maxLength (no raw control characters)', { type: 'string', maxLength: 4 }, '"ab"', '"a\tb"'],
    ['minLength (no raw quotes)', { type: 'string', minLength: 1 }, '"ab"', '"a"b"'],
    ['pattern', { type: 'string', pattern: '^[a-c]+$' }, '"abc"', '"abd"'],
    ['format uuid', { type: 'string', format: 'uuid' }, '"123e4567-e89b-12d3-a456-426614174000"', '"123e4567-e89b-12d3-a456"'],
    ['format duration', { type: 'string', format: 'duration' }, '"P1DT2H"', '"1D"'],
    ['format ipv6', { type: 'string', format: 'ipv6' }, '"::1"', '"1.2"'],
    ['minimum 0 (integer)', { type: 'integer', minimum: 0 }, '0', '-1'],
    ['minimum (integer)', { type: 'integer', minimum: 5 }, '5', '4'],
    ['maximum (integer)', { type: 'integer', minimum: 0, maximum: 150 }, '150', '151'],
    ['maximum (integer, same length)', { type: 'integer', minimum: 0, maximum: 150 }, '99', '159'],
    ['exclusiveMinimum (integer)', { type: 'integer', exclusiveMinimum: 5 }, '6', '5'],
    ['exclusiveMaximum (integer)', { type: 'integer', exclusiveMaximum: -5 }, '-6', '-5'],
    ['zod .int() bounds (±2^53-1)', { type: 'integer', minimum: -9007199254740991, maximum: 9007199254740991 }, '-9007199254740991', '9007199254740992'],
    ['minimum (number)', { type: 'number', minimum: 0.5 }, '0.5', '0.49'],
    ['maximum (number)', { type: 'number', minimum: -1.25, maximum: -0.5 }, '-0.5', '-0.4'],
    ['exclusiveMinimum (number)', { type: 'number', exclusiveMinimum: 0 }, '0.001', '0'],
    ['exclusiveMaximum (number)', { type: 'number', exclusiveMaximum: 2.5 }, '2.4999', '2.5'],
    ['bounds (type list)', { type: ['integer', 'null'], minimum: 1, maximum: 10 }, 'null', '11'],
    ['bounds (integer in a number list)', { type: ['number', 'string'], maximum: 1.5 }, '1.5', '1.6'],
    ['bounds (nested)', { type: 'object', properties: { a: { type: 'array', items: { type: 'integer', minimum: 1, maximum: 3 } } }, required: ['a'] }, '{"a": [1, 3]}', '{"a": [1, 4]}'],
    ['bounds ($defs, referenced twice)', { $defs: { p: { type: 'integer', maximum: 9 } }, type: 'array', prefixItems: [{ $ref: '#/$defs/p' }, { $ref: '#/$defs/p' }], items: false }, '[9, 0]', '[9, 10]'],
    ['bounds with enum (members outside dropped)', { enum: [1, 5, 50, 'x'], maximum: 10 }, '"x"', '50'],
    ['minItems', { type: 'array', items: { type: 'integer' }, minItems: 2 }, '[1, 2]', '[1]'],
    ['maxItems', { type: 'array', items: { type: 'integer' }, maxItems: 1 }, '[1]', '[1, 2]'],
    ['prefixItems', { type: 'array', prefixItems: [{ type: 'integer' }], items: false }, '[1]', '["a"]'],
    ['required', { type: 'object', properties: { a: { type: 'integer' } }, required: ['a'] }, '{"a": 1}', '{}'],
    ['required (a name properties does not declare)', { type: 'object', properties: { a: { type: 'integer' } }, required: ['a', 'b'] }, '{"a": 1, "b": [true]}', '{"a": 1}'],
    ['required (a name only additionalProperties governs)', { type: 'object', additionalProperties: { type: 'integer' }, required: ['b'] }, '{"b": 2}', '{}'],
    ['required (a name only additionalProperties governs, its schema kept)', { type: 'object', additionalProperties: { type: 'integer' }, required: ['b'] }, '{"b": 2, "c": 3}', '{"b": "x"}'],
    ['additionalProperties: false', { type: 'object', properties: { a: { type: 'integer' } }, additionalProperties: false }, '{"a": 1}', '{"a": 1, "b": 2}'],
    ['additionalProperties (schema)', { type: 'object', additionalProperties: { type: 'integer' } }, '{"b": 2}', '{"b": "x"}'],
    ['minProperties', { type: 'object', additionalProperties: { type: 'integer' }, minProperties: 1 }, '{"b": 2}', '{}'],
    ['maxProperties', { type: 'object', additionalProperties: { type: 'integer' }, maxProperties: 1 }, '{"b": 2}', '{"b": 2, "c": 3}'],
    ['anyOf', { anyOf: [{ type: 'integer' }, { type: 'boolean' }] }, 'true', '"a"'],
    ['type beside enum (members of other types dropped)', { type: 'string', enum: [1, 'a'] }, '"a"', '1'],
    ['type list beside enum', { type: ['integer', 'null'], enum: ['x', 2, null] }, 'null', '"x"'],
    ['type beside const', { type: 'integer', const: 3 }, '3', '4'],
    ['$ref / $defs', { $defs: { n: { type: 'integer' } }, $ref: '#/$defs/n' }, '1', '"a"'],
    ['$ref (recursive)', { $defs: { t: { type: 'object', properties: { c: { type: 'array', items: { $ref: '#/$defs/t' } } }, required: ['c'] } }, $ref: '#/$defs/t' }, '{"c": [{"c": []}]}', '{"c": [{}]}'],
  ];
  it.each(enforced)('enforces %s', async (_name, s, good, bad) => {
    checkJsonSchema(s);
    expect(await acceptsText(compiler, chars, schema(s), good)).toBe(true);
    expect(await acceptsText(compiler, chars, schema(s), bad)).toBe(false);
  });

  it.each(enforced)('%s: the same through the EBNF route bounded numbers take (XGrammar EBNF printed, then parsed)', async (_name, s, good, bad) => {
    // A schema with bounds compiles from XGrammar's printed EBNF; printing must not change the grammar.
    const { $defs, ...v } = s as Record<string, unknown>;
    const wrapped = { ...($defs === undefined ? {} : { $defs }), type: 'object', properties: { n: { type: 'integer', minimum: 1, maximum: 1 }, v }, required: ['n', 'v'], additionalProperties: false };
    expect(checkJsonSchema(wrapped).ranges).toHaveLength(1 + checkJsonSchema(s).ranges.length);
    expect(await acceptsText(compiler, chars, schema(wrapped), `{"n": 1, "v": ${good}}`)).toBe(true);
    expect(await acceptsText(compiler, chars, schema(wrapped), `{"n": 1, "v": ${bad}}`)).toBe(false);
  });

  it('XGrammar alone gets integer ranges wrong, which is why bounds are written by numeric-range.ts', async () => {
    const xg = xgrammar();
    const raw = await xg.Grammar.fromJSONSchema(JSON.stringify({ type: 'integer', minimum: 0, maximum: 150 }), false, -1, [', ', ': ']);
    expect(await xg.Testings.isGrammarAcceptString(raw, '159')).toBe(true);
    raw.dispose();
    for (const n of ['151', '159', '-1', '1000']) expect(await acceptsText(compiler, chars, schema({ type: 'integer', minimum: 0, maximum: 150 }), n), n).toBe(false);
  });

  it('numeric bounds are rewritten to placeholders with a secret nonce per schema; ones it cannot place are refused, naming where', async () => {
    const a = checkJsonSchema({ type: 'object', properties: { n: { type: 'integer', minimum: 1, description: 'd' }, m: { type: ['number', 'null'], maximum: 2 } } });
    const b = checkJsonSchema({ type: 'integer', minimum: 1 });
    expect(a.ranges.map((r) => r.at)).toEqual(['#/properties/n', '#/properties/m']);
    expect(a.schema).toEqual({ type: 'object', properties: { n: { const: a.ranges[0].sentinel }, m: { anyOf: [{ const: a.ranges[1].sentinel }, { type: ['null'] }] } } });
    expect(a.ranges[0].sentinel).toMatch(/^LPX[0-9a-f]{12}N0$/);
    expect(b.ranges[0].sentinel).not.toBe(a.ranges[0].sentinel);
    // The same schema, the same grammar text; a schema holding a placeholder gets another nonce.
    expect(checkJsonSchema({ type: 'integer', minimum: 1 }).ranges).toEqual(b.ranges);
    expect(checkJsonSchema({ anyOf: [{ type: 'integer', minimum: 1 }, { const: b.ranges[0].sentinel }] }).ranges[0].sentinel).not.toBe(b.ranges[0].sentinel);
    expect(checkJsonSchema({ const: 3, minimum: 1 }).ranges).toEqual([]);
    // A definition nothing references is not written by XGrammar, its placeholder included.
    const unused = { $defs: { u: { type: 'integer', maximum: 3 } }, type: 'integer', maximum: 5 };
    expect(await acceptsText(compiler, chars, schema(unused), '5')).toBe(true);
    // A placeholder written other than once (XGrammar rendering schemas differently) is an internal error, not a grammar.
    const checked = checkJsonSchema({ type: 'array', prefixItems: [{ type: 'integer', maximum: 1 }] });
    const literal = `"\\"${checked.ranges[0].sentinel}\\""`;
    expect(() => spliceRanges('root ::= "[" "]"', checked)).toThrow(expect.objectContaining({ code: 'internal_error' }));
    expect(() => spliceRanges(`root ::= ${literal} ${literal}`, checked)).toThrow(/2 times instead of once/);
    expect(spliceRanges(`root ::= "[" ${literal} "]"`, checked)).toContain(`root ::= "[" ${checked.ranges[0].rule} "]"\n${checked.ranges[0].rule} ::= `);
    const cases: [unknown, string][] = [
      [{ minimum: 1 }, '#/minimum: numeric bounds are enforced only with "type": "integer" or "number"'],
      [{ type: 'string', maximum: 1 }, '#/maximum: numeric bounds are enforced only with'],
      [{ type: 'object', properties: { n: { type: 'integer', minimum: 1, multipleOf: 2 } } }, '#/properties/n/multipleOf: numeric bounds can be combined with "type" and annotations only'],
      [{ type: ['integer', 'string'], minimum: 1, maxLength: 3 }, '#/maxLength: numeric bounds can be combined'],
      [{ type: 'integer', minimum: 1, anyOf: [{ maximum: 3 }] }, '#/anyOf: numeric bounds can be combined'],
      [{ type: 'integer', minimum: 5, maximum: 1 }, '#: no integer satisfies "minimum": 5, "maximum": 1'],
      [{ type: 'number', exclusiveMinimum: true, minimum: 0 }, "#/exclusiveMinimum: must be a finite number; given true (draft-04's boolean form"],
      [{ type: 'number', maximum: 1e50 }, '#/maximum: 1e+50 has more than 40 digits'],
      [{ const: 30, maximum: 10 }, '#: "const" 30 does not satisfy "maximum": 10'],
      [{ enum: [20, 30], maximum: 10 }, '#: no member of "enum" satisfies "maximum": 10'],
    ];
    for (const [s, message] of cases) {
      expect(() => checkJsonSchema(s), JSON.stringify(s)).toThrow(message);
      await expect(compiler.compile(schema(s))).rejects.toMatchObject({ code: 'invalid_grammar', param: 'schema' });
    }
  });

  // Keywords XGrammar 0.1.27 ignores or gets wrong (the invalid instance passes), so they are refused.
  const refused: [string, unknown, string][] = [
    ['format', { type: 'string', format: 'date' }, '"2024-04-31"'],
    ['format', { type: 'string', format: 'date-time' }, '"2024-01-02T21:60:16Z"'],
    ['format', { type: 'string', format: 'time' }, '"06:30:60+21:04"'],
    ['format', { type: 'string', format: 'ipv4' }, '"01.2.3.4"'],
    ['multipleOf', { type: 'integer', multipleOf: 3 }, '4'],
    ['uniqueItems', { type: 'array', items: { type: 'integer' }, uniqueItems: true }, '[1, 1]'],
    ['allOf', { allOf: [{ type: 'integer' }, { type: 'integer' }] }, '1'],
    ['not', { not: { type: 'integer' } }, '1'],
    ['if', { if: { type: 'integer' }, then: { type: 'integer' } }, '"a"'],
    ['dependentRequired', { type: 'object', properties: { a: { type: 'integer' }, b: { type: 'integer' } }, dependentRequired: { a: ['b'] } }, '{"a": 1}'],
  ];
  it.each(refused)('refuses %s, naming it (XGrammar would not enforce it: %j lets %s through)', async (name, s, invalidButAccepted) => {
    // The reason for the refusal, observed: compiled straight by XGrammar, the invalid instance passes.
    const xg = xgrammar();
    const raw = await (await xg.GrammarCompiler.createGrammarCompiler(await xg.TokenizerInfo.createTokenizerInfo([...chars, '</s>'], 'raw', false, chars.length + 1, [chars.length]))).compileJSONSchema(JSON.stringify(s), false, -1, [', ', ': ']);
    const m = await xg.GrammarMatcher.createGrammarMatcher(raw);
    expect([...invalidButAccepted].every((ch) => m.acceptToken(chars.indexOf(ch))) && m.acceptToken(chars.length)).toBe(true);
    expect(() => checkJsonSchema(s)).toThrow(name === 'format' ? /string format/ : new RegExp(`"${name}"`));
    await expect(compiler.compile(schema(s))).rejects.toMatchObject({ code: 'invalid_grammar' });
  });

  it('a required name that properties does not declare is declared with additionalProperties\' schema; with additionalProperties: false it is refused', () => {
    expect(checkJsonSchema({ type: 'object', properties: { a: { type: 'integer' } }, required: ['a', 'b', '__proto__'] }).schema).toEqual({
      type: 'object', properties: { a: { type: 'integer' }, b: {}, ['__proto__']: {} }, required: ['a', 'b', '__proto__'],
    });
    expect(checkJsonSchema({ type: 'object', additionalProperties: { type: 'string' }, required: ['b'] }).schema).toEqual({
      type: 'object', additionalProperties: { type: 'string' }, required: ['b'], properties: { b: { type: 'string' } },
    });
    expect(checkJsonSchema({ type: 'object', required: [] }).schema).toEqual({ type: 'object', required: [] });
    const closed = { type: 'object', properties: { user: { type: 'object', properties: { id: { type: 'integer' } }, required: ['id', 'name'], additionalProperties: false } } };
    expect(() => checkJsonSchema(closed)).toThrow('#/properties/user/required: "name" is required but not declared in "properties", and "additionalProperties": false forbids it');
    expect(() => checkJsonSchema({ type: 'object', required: 'a' })).toThrow('#/required: must be an array of property names');
  });

  it('keywords beside enum, const, anyOf or $ref (which XGrammar ignores) are applied or refused, naming them', async () => {
    // What XGrammar alone does with them: the keyword beside is ignored.
    const xg = xgrammar();
    const info = await xg.TokenizerInfo.createTokenizerInfo([...chars, '</s>'], 'raw', false, chars.length + 1, [chars.length]);
    const raw = await xg.GrammarCompiler.createGrammarCompiler(info, false);
    const ignored = async (s: unknown, text: string): Promise<boolean> => {
      const m = await xg.GrammarMatcher.createGrammarMatcher(await raw.compileJSONSchema(JSON.stringify(s), false, -1, [', ', ': ']));
      return [...text].every((ch) => m.acceptToken(chars.indexOf(ch))) && m.acceptToken(chars.length);
    };
    expect(await ignored({ type: 'string', enum: [1, 'a'] }, '1')).toBe(true);
    expect(await ignored({ type: 'object', properties: { a: { type: 'integer' } }, anyOf: [{ type: 'object' }] }, '{"a": "x"}')).toBe(true);
    // Here: type beside enum/const is applied; anything else beside them is refused.
    expect(checkJsonSchema({ type: 'string', enum: [1, 'a'] }).schema).toEqual({ type: 'string', enum: ['a'] });
    expect(() => checkJsonSchema({ type: 'integer', const: 'x' })).toThrow('#: "const" "x" is not of "type" "integer"');
    expect(() => checkJsonSchema({ type: 'boolean', enum: [1, 'a'] })).toThrow('no member of "enum" is of "type" "boolean"');
    expect(() => checkJsonSchema({ type: 'string', enum: ['a', 'abc'], minLength: 2 })).toThrow('#/minLength: beside "enum" constrained decoding enforces only "type"');
    expect(() => checkJsonSchema({ type: 'object', properties: { a: { type: 'integer' } }, anyOf: [{ type: 'object' }] })).toThrow(/#\/(type|properties): beside "anyOf" constrained decoding ignores/);
    expect(() => checkJsonSchema({ $defs: { n: { type: 'integer' } }, properties: { a: { $ref: '#/$defs/n', maximum: 3 } } })).toThrow();
    expect(() => checkJsonSchema({ $defs: { n: { type: 'object' } }, properties: { a: { $ref: '#/$defs/n', required: ['x'] } } })).toThrow('#/properties/a/required: beside "$ref" constrained decoding ignores "required"');
    // Annotations beside them are fine (Pydantic writes descriptions and defaults beside $ref and anyOf).
    checkJsonSchema({ $defs: { c: { type: 'string', enum: ['r', 'g'], title: 'Color' } }, properties: { c: { $ref: '#/$defs/c', description: 'd', default: 'r' }, o: { anyOf: [{ type: 'string' }, { type: 'null' }], default: null, title: 'O' } } });
  });

  it('refuses unknown formats and types, remote references, malformed schemas, with where they are', async () => {
    expect(() => checkJsonSchema({ type: 'object', properties: { u: { type: 'string', format: 'bogus' } } })).toThrow('#/properties/u/format');
    expect(() => checkJsonSchema({ type: 'strin' })).toThrow('unknown type "strin"');
    expect(() => checkJsonSchema({ $ref: 'https://example.com/s.json' })).toThrow('local references');
    expect(() => checkJsonSchema([1])).toThrow('must be an object or a boolean');
    let deep: unknown = { type: 'integer' };
    for (let i = 0; i < 20_000; i++) deep = { anyOf: [deep] };
    expect(() => checkJsonSchema(deep)).toThrow('nests deeper than 64');
    const wide = { anyOf: Array.from({ length: 10_001 }, () => ({ type: 'integer' })) };
    expect(() => checkJsonSchema(wide)).toThrow('more than 10000 subschemas');
    await expect(compiler.compile({ type: 'json_schema', schema: '{not json' })).rejects.toMatchObject({ code: 'invalid_grammar' });
    await expect(compiler.compile({ type: 'ebnf', grammar: 'root ::= (' })).rejects.toMatchObject({ code: 'invalid_grammar', param: 'grammar' });
    await expect(compiler.compile({ type: 'regex', pattern: '(' })).rejects.toMatchObject({ code: 'invalid_grammar', param: 'regex' });
    // XGrammar reports parse errors as fatal (its log says "Aborted()"); the compiler keeps working after them.
    expect(await acceptsText(compiler, chars, { type: 'ebnf', grammar: 'root ::= "ok" [0-9]' }, 'ok7')).toBe(true);
  });

  it('patterns that could write a quote, backslash or control character into the JSON are refused', async () => {
    // Why: XGrammar writes what a pattern or a length bound allows verbatim between the quotes.
    const xg = xgrammar();
    const raw = async (s: unknown, text: string): Promise<boolean> => {
      const cg = await (await xg.GrammarCompiler.createGrammarCompiler(await xg.TokenizerInfo.createTokenizerInfo([...chars, '</s>'], 'raw', false, chars.length + 1, [chars.length]))).compileJSONSchema(JSON.stringify(s), false, -1, [', ', ': ']);
      const m = await xg.GrammarMatcher.createGrammarMatcher(cg);
      return [...text].every((ch) => m.acceptToken(chars.indexOf(ch))) && m.acceptToken(chars.length);
    };
    expect(await raw({ type: 'string', maxLength: 4 }, '"a\tb"')).toBe(true);
    expect(await raw({ type: 'string', pattern: '^.+$' }, '"a"b"')).toBe(true);
    for (const p of ['^.+$', '^[^a]+$', '^\\s+$', '^[ -~]+$', '^a"b$', '^[\\x00-a]$', '^\\n$'])
      expect(() => checkJsonSchema({ type: 'string', pattern: p }), p).toThrow(/may match/);
    expect(() => checkJsonSchema({ type: 'string', pattern: '^[A-Z]{3}-[0-9]{4}$' })).not.toThrow();
    expect(() => checkJsonSchema({ type: 'string', pattern: '^a+$', maxLength: 3 })).toThrow(/cannot be combined/);
    expect(await acceptsText(compiler, chars, schema({ type: 'string', pattern: '^[a-c]+$' }), '"ab"')).toBe(true);
  });

  it('choices are matched exactly, quotes, backslashes and non-ASCII included', async () => {
    const spec: GrammarSpec = { type: 'choice', choices: ['yes', 'no "way"', 'a\\b'] };
    for (const ok of ['yes', 'no "way"', 'a\\b']) expect(await acceptsText(compiler, chars, spec, ok)).toBe(true);
    for (const bad of ['ye', 'yess', 'no']) expect(await acceptsText(compiler, chars, spec, bad)).toBe(false);
  });
});

describe('grammar vocabulary from real tokenizers', () => {
  it('detects byte-level and byte-fallback vocabularies and pads to the model vocabulary', () => {
    const qwen = grammarVocab(tokenizerJson('qwen3'), 151936, [151645]);
    expect(qwen.vocabType).toBe('byte_level');
    expect(qwen.tokens.length).toBe(151936);
    expect(qwen.tokens[151645]).toBe('<|im_end|>');
    expect(qwen.tokens[151900]).toBe('');
    expect(grammarVocab(tokenizerJson('llama3'), 128256, []).vocabType).toBe('byte_level');
    expect(grammarVocab(tokenizerJson('llama2'), 32000, []).vocabType).toBe('byte_fallback');
  });
});

describe('walks over a real vocabulary', () => {
  const qwen = loadTokenizer('qwen3');
  const EOS = 151645;
  let compiler: GrammarCompiler;
  beforeAll(async () => {
    compiler = await GrammarCompiler.create(grammarVocab(tokenizerJson('qwen3'), 151936, [EOS]));
  }, 120_000);

  const walk = grammarWalker({ size: 151936, eos: EOS, decode: (ids) => qwen.decode(ids) });

  const ajv = new Ajv2020({ strict: false });
  addFormats.default(ajv);
  const schemas: Record<string, object> = {
    flat: { type: 'object', properties: { name: { type: 'string', maxLength: 12 }, age: { type: 'integer', minimum: 0 } }, required: ['name', 'age'], additionalProperties: false },
    nested: {
      type: 'object',
      properties: {
        user: { type: 'object', properties: { id: { type: 'integer' }, tags: { type: 'array', items: { enum: ['a', 'b', 'c'] }, maxItems: 3 } }, required: ['id', 'tags'], additionalProperties: false },
        id: { type: 'string', format: 'uuid' },
        sku: { type: 'string', pattern: '^[A-Z]{3}-[0-9]{4}$' },
      },
      required: ['user', 'id', 'sku'],
      additionalProperties: false,
    },
    undeclared: { type: 'object', properties: { id: { type: 'integer' } }, additionalProperties: { type: 'boolean' }, required: ['id', 'done'] },
    union: { anyOf: [{ type: 'null' }, { type: 'array', items: { type: 'boolean' }, minItems: 1, maxItems: 4 }] },
    bounded: {
      type: 'object',
      properties: {
        age: { type: 'integer', minimum: 0, maximum: 120 },
        score: { type: 'number', minimum: -1.5, maximum: 2.75 },
        ratio: { type: 'number', exclusiveMinimum: 0, exclusiveMaximum: 1 },
        id: { type: 'integer', minimum: -9007199254740991, maximum: 9007199254740991 },
        level: { type: ['integer', 'null'], minimum: 10, maximum: 20 },
      },
      required: ['age', 'score', 'ratio', 'id', 'level'],
      additionalProperties: false,
    },
  };

  it.each(Object.keys(schemas))('random walks on schema %s decode to JSON the schema validates', async (name) => {
    const validate = ajv.compile(schemas[name]);
    for (let seed = 1; seed <= 4; seed++) {
      const state = await compiler.state({ type: 'json_schema', schema: JSON.stringify(schemas[name]) });
      const text = qwen.decode(await walk(state, seed * 31 + name.length));
      state.dispose();
      const value = JSON.parse(text) as unknown;
      expect(validate(value), `${text}: ${JSON.stringify(validate.errors)}`).toBe(true);
    }
  }, 120_000);

  it('walks through narrow numeric ranges reach the edges and never pass them', async () => {
    const edges = {
      type: 'object',
      properties: {
        i: { type: 'array', items: { type: 'integer', minimum: 98, maximum: 102 }, minItems: 4, maxItems: 4 },
        x: { type: 'array', items: { type: 'number', minimum: 0.5, maximum: 0.75 }, minItems: 4, maxItems: 4 },
        n: { type: 'integer', exclusiveMinimum: -9, exclusiveMaximum: -5 },
      },
      required: ['i', 'x', 'n'],
      additionalProperties: false,
    };
    const validate = ajv.compile(edges);
    const seen = new Set<number>();
    for (let seed = 1; seed <= 12; seed++) {
      const state = await compiler.state({ type: 'json_schema', schema: JSON.stringify(edges) });
      const text = qwen.decode(await walk(state, seed, 200));
      state.dispose();
      const value = JSON.parse(text) as { i: number[]; x: number[]; n: number };
      expect(validate(value), `${text}: ${JSON.stringify(validate.errors)}`).toBe(true);
      for (const v of value.i) expect(v >= 98 && v <= 102, text).toBe(true);
      for (const v of value.x) expect(v >= 0.5 && v <= 0.75, text).toBe(true);
      expect(value.n > -9 && value.n < -5, text).toBe(true);
      for (const v of [...value.i, value.n]) seen.add(v);
    }
    // Random walks write both ends of the integer ranges.
    for (const v of [98, 102, -8, -6]) expect(seen.has(v), [...seen].join(' ')).toBe(true);
  }, 120_000);

  it('tool calls with bounded parameters: every walk is a call whose arguments the schema validates', async () => {
    const params = { type: 'object', properties: { level: { type: 'integer', minimum: 1, maximum: 10 }, gain: { type: 'number', minimum: -1.5, maximum: 2.5 } }, required: ['level', 'gain'], additionalProperties: false };
    const validate = ajv.compile(params);
    const spec: GrammarSpec = { type: 'tool_calls', format: 'hermes', tools: [{ name: 'set_volume', parameters: JSON.stringify(params) }], mode: 'required', parallel: false, params: ['tools[0].function.parameters'] };
    for (let seed = 1; seed <= 6; seed++) {
      const state = await compiler.state(spec);
      const text = qwen.decode(await walk(state, seed, 200));
      state.dispose();
      const m = /^<tool_call>\n(.*)\n<\/tool_call>$/s.exec(text);
      expect(m, text).not.toBeNull();
      const call = JSON.parse(m![1]) as { name: string; arguments: unknown };
      expect(call.name).toBe('set_volume');
      expect(validate(call.arguments), `${text}: ${JSON.stringify(validate.errors)}`).toBe(true);
    }
  }, 120_000);

  it('json_object, regex and choice walks give what they promise', async () => {
    for (let seed = 1; seed <= 3; seed++) {
      const obj = JSON.parse(qwen.decode(await walk(await compiler.state({ type: 'json_object' }), seed, 120))) as unknown;
      expect(obj !== null && typeof obj === 'object' && !Array.isArray(obj)).toBe(true);
      expect(qwen.decode(await walk(await compiler.state({ type: 'regex', pattern: '[0-9]{3}-[a-z]{2,4}' }), seed))).toMatch(/^[0-9]{3}-[a-z]{2,4}$/);
      expect(['red', 'green', 'dark blue']).toContain(qwen.decode(await walk(await compiler.state({ type: 'choice', choices: ['red', 'green', 'dark blue'] }), seed)));
    }
  }, 120_000);
});

describe('applyTokenMask', () => {
  it('keeps exactly the allowed tokens and forbids tokens past the mask', () => {
    const logits = Float32Array.from({ length: 70 }, (_, i) => i);
    const mask = new Int32Array(2);
    mask[0] = (1 << 3) | (1 << 31);
    mask[1] = -1;
    expect(applyTokenMask(logits, mask)).toBe(2 + 32);
    expect(logits[3]).toBe(3);
    expect(logits[31]).toBe(31);
    expect(logits[4]).toBe(-Infinity);
    expect(logits[40]).toBe(40);
    expect(logits[64]).toBe(-Infinity);
  });
});
