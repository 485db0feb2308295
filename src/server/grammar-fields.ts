/**
 * The request fields that constrain output, as each API spells them, turned into one GrammarSpec:
 * OpenAI's `response_format` (`json_object`, `json_schema`), vLLM's `structured_outputs` and
 * `guided_json` / `guided_regex` / `guided_choice` / `guided_grammar`, TGI's `parameters.grammar`
 * (`json` / `regex`). At most one may be given. Sizes are capped before anything is compiled; the
 * engine's grammar thread compiles the spec (refusing what it would not enforce) before the
 * request is admitted, so a bad spec is a 4xx, never a failure mid-stream.
 */
import { LoraplexError } from '../errors.js';
import type { GrammarSpec } from '../runtime/grammar/compiler.js';

export const MAX_SCHEMA_BYTES = 64 * 1024;
export const MAX_PATTERN_BYTES = 16 * 1024;
export const MAX_CHOICES = 256;
export const MAX_CHOICE_CHARS = 1024;

const bad = (param: string, message: string): never => {
  throw new LoraplexError('invalid_grammar', `${param}: ${message}`, { param });
};

function schemaText(v: unknown, param: string): string {
  let text: string;
  if (typeof v === 'string') {
    try {
      JSON.parse(v);
    } catch (err) {
      bad(param, `not valid JSON (${(err as Error).message})`);
    }
    text = v;
  } else if (typeof v === 'boolean' || (v !== null && typeof v === 'object' && !Array.isArray(v))) {
    text = JSON.stringify(v);
  } else {
    return bad(param, 'must be a JSON schema (an object)');
  }
  if (Buffer.byteLength(text) > MAX_SCHEMA_BYTES) bad(param, `the schema has more than ${MAX_SCHEMA_BYTES} bytes`);
  return text;
}

function pattern(v: unknown, param: string): string {
  if (typeof v !== 'string' || v.length === 0) return bad(param, 'must be a non-empty string');
  if (Buffer.byteLength(v) > MAX_PATTERN_BYTES) bad(param, `more than ${MAX_PATTERN_BYTES} bytes`);
  return v;
}

function choices(v: unknown, param: string): string[] {
  if (!Array.isArray(v) || v.length === 0) return bad(param, 'must be a non-empty array of strings');
  if (v.length > MAX_CHOICES) bad(param, `more than ${MAX_CHOICES} choices`);
  for (const c of v) if (typeof c !== 'string' || c.length === 0 || c.length > MAX_CHOICE_CHARS) bad(param, `each choice must be a string of 1..${MAX_CHOICE_CHARS} characters`);
  return v as string[];
}

/** OpenAI's response_format (chat and, as vLLM accepts it, completions). */
export function responseFormatGrammar(v: unknown): GrammarSpec | null {
  if (v == null) return null;
  const rf = v as { type?: unknown; json_schema?: { schema?: unknown; name?: unknown } | null; schema?: unknown };
  switch (rf.type) {
    case 'text':
      return null;
    case 'json_object':
      // LoRAX accepts a schema here too.
      return rf.schema != null ? { type: 'json_schema', schema: schemaText(rf.schema, 'response_format.schema') } : { type: 'json_object' };
    case 'json_schema':
      if (rf.json_schema == null || typeof rf.json_schema !== 'object') return bad('response_format.json_schema', 'is required with type "json_schema"');
      if (rf.json_schema.schema == null) return bad('response_format.json_schema.schema', 'is required');
      return { type: 'json_schema', schema: schemaText(rf.json_schema.schema, 'response_format.json_schema.schema') };
    default:
      return bad('response_format.type', `must be "text", "json_object" or "json_schema", not ${JSON.stringify(rf.type ?? null)}`);
  }
}

/** The Responses API's text.format: {type: "text" | "json_object" | "json_schema", name, schema, strict}. */
export function responsesFormatGrammar(v: unknown): GrammarSpec | null {
  if (v == null) return null;
  const f = v as { type?: unknown; schema?: unknown };
  switch (f.type) {
    case 'text':
      return null;
    case 'json_object':
      return { type: 'json_object' };
    case 'json_schema':
      if (f.schema == null) return bad('text.format.schema', 'is required with type "json_schema"');
      return { type: 'json_schema', schema: schemaText(f.schema, 'text.format.schema') };
    default:
      return bad('text.format.type', `must be "text", "json_object" or "json_schema", not ${JSON.stringify(f.type ?? null)}`);
  }
}

/** Anthropic's output_config.format: {type: "json_schema", schema}. */
export function anthropicFormatGrammar(v: unknown): GrammarSpec | null {
  if (v == null) return null;
  const f = v as { type?: unknown; schema?: unknown };
  if (f.type !== 'json_schema') return bad('output_config.format.type', `must be "json_schema", not ${JSON.stringify(f.type ?? null)}`);
  if (f.schema == null) return bad('output_config.format.schema', 'is required');
  return { type: 'json_schema', schema: schemaText(f.schema, 'output_config.format.schema') };
}

/** vLLM's guided_* fields and structured_outputs. */
export interface VllmGrammarFields {
  guided_json?: unknown;
  guided_regex?: unknown;
  guided_choice?: unknown;
  guided_grammar?: unknown;
  guided_decoding_backend?: unknown;
  structured_outputs?: unknown;
  response_format?: unknown;
}

/** The one grammar a request asks for (null: none); refuses two at once. */
export function requestGrammar(body: VllmGrammarFields): GrammarSpec | null {
  const found: [string, GrammarSpec][] = [];
  const rf = responseFormatGrammar(body.response_format);
  if (rf) found.push(['response_format', rf]);
  if (body.guided_json != null) found.push(['guided_json', { type: 'json_schema', schema: schemaText(body.guided_json, 'guided_json') }]);
  if (body.guided_regex != null) found.push(['guided_regex', { type: 'regex', pattern: pattern(body.guided_regex, 'guided_regex') }]);
  if (body.guided_choice != null) found.push(['guided_choice', { type: 'choice', choices: choices(body.guided_choice, 'guided_choice') }]);
  if (body.guided_grammar != null) found.push(['guided_grammar', { type: 'ebnf', grammar: pattern(body.guided_grammar, 'guided_grammar') }]);
  const so = body.structured_outputs as Record<string, unknown> | null | undefined;
  if (so != null) {
    if (typeof so !== 'object' || Array.isArray(so)) bad('structured_outputs', 'must be an object');
    const keys = Object.keys(so).filter((k) => so[k] != null && so[k] !== false);
    for (const k of keys) {
      const param = `structured_outputs.${k}`;
      switch (k) {
        case 'json':
          found.push([param, { type: 'json_schema', schema: schemaText(so.json, param) }]);
          break;
        case 'json_object':
          found.push([param, { type: 'json_object' }]);
          break;
        case 'regex':
          found.push([param, { type: 'regex', pattern: pattern(so.regex, param) }]);
          break;
        case 'choice':
          found.push([param, { type: 'choice', choices: choices(so.choice, param) }]);
          break;
        case 'grammar':
          found.push([param, { type: 'ebnf', grammar: pattern(so.grammar, param) }]);
          break;
        case 'backend':
          if (so.backend !== 'xgrammar' && so.backend !== 'auto') bad(param, `only "xgrammar" (or "auto") is available, not ${JSON.stringify(so.backend)}`);
          break;
        default:
          bad(param, 'is not supported (json, json_object, regex, choice, grammar, backend are)');
      }
    }
  }
  const backend = body.guided_decoding_backend;
  if (backend != null && backend !== 'xgrammar' && backend !== 'auto') bad('guided_decoding_backend', `only "xgrammar" (or "auto") is available, not ${JSON.stringify(backend)}`);
  if (found.length > 1) bad(found[1][0], `only one output constraint may be given; this request also has ${found[0][0]}`);
  return found[0]?.[1] ?? null;
}

/** TGI's parameters.grammar: {type: "json" | "regex", value}. */
export function tgiGrammar(v: unknown): GrammarSpec | null {
  if (v == null) return null;
  const g = v as { type?: unknown; value?: unknown };
  switch (g.type) {
    case 'json':
    case 'json_object':
      return { type: 'json_schema', schema: schemaText(g.value, 'parameters.grammar.value') };
    case 'regex':
      return { type: 'regex', pattern: pattern(g.value, 'parameters.grammar.value') };
    default:
      return bad('parameters.grammar.type', `must be "json" or "regex", not ${JSON.stringify(g.type ?? null)}`);
  }
}

/** Checks the generation settings a grammar cannot be combined with. */
export function checkGrammarCompatible(grammar: GrammarSpec | null, stop: { ignoreEos: boolean; minTokens: number }, param: string): void {
  if (!grammar) return;
  if (stop.ignoreEos) bad(param, 'cannot be combined with ignore_eos (a constrained answer ends when its grammar is complete)');
  if (stop.minTokens > 0) bad(param, 'cannot be combined with min_tokens (the grammar decides where the answer ends)');
}
