/**
 * Constrained decoding with XGrammar: grammar specs (a JSON schema, any JSON object, a regex, a
 * choice of strings, an EBNF grammar) compiled once per (tokenizer, spec) against the model's
 * vocabulary, and per-row matchers that give the next token's bitmask and accept tokens.
 *
 * A JSON schema is checked against the keywords XGrammar enforces before it is compiled: a keyword
 * it would ignore is refused, naming it, instead of producing output the schema does not describe.
 * Numeric bounds are enforced by our own rules (numeric-range.ts), spliced into XGrammar's EBNF
 * for the rest of the schema.
 */
import { createHash } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import { LoraplexError } from '../../errors.js';
import { checkJsonSchema, type CheckedSchema } from './schema-check.js';
import { toolStructuralTag, type ToolGrammarSpec } from './tool-grammar.js';
import type { CompiledGrammar, Grammar, GrammarCompiler as XGrammarCompiler, GrammarMatcher } from '@mlc-ai/web-xgrammar';
import { isXGrammarAbort, xgrammar, xgrammarFatalMessage, type XGrammarModule } from './xgrammar.js';

export type GrammarSpec =
  /** Any JSON object (OpenAI's `json_object`). */
  | { type: 'json_object' }
  /** `schema`: the schema as JSON text. */
  | { type: 'json_schema'; schema: string }
  | { type: 'regex'; pattern: string }
  /** Exactly one of the strings. */
  | { type: 'choice'; choices: string[] }
  /** XGrammar's EBNF (GBNF-like); the start rule is `root`. */
  | { type: 'ebnf'; grammar: string }
  /** Calls of the offered tools in the model's format (see tool-grammar.ts). */
  | ToolGrammarSpec;

/** The cache key of a spec (specs are plain data, up to megabytes with many tools): a digest of its JSON. */
export const grammarKey = (spec: GrammarSpec): string => createHash('sha256').update(JSON.stringify(spec)).digest('base64');

export class GrammarError extends LoraplexError {
  constructor(message: string, param: string) {
    super('invalid_grammar', message, { param });
  }
}

/** The tokenizer as XGrammar needs it: every token's string as tokenizer.json spells it, by id. */
export interface GrammarVocab {
  tokens: string[];
  /** How token strings map to bytes: GPT-2 byte-level BPE (Qwen, Llama 3), SentencePiece byte fallback (Llama 2, Mistral), or as is. */
  vocabType: 'byte_level' | 'byte_fallback' | 'raw';
  /** Tokens that end a sequence (allowed once the grammar is complete). */
  stopIds: number[];
}

/** Builds the grammar vocabulary from tokenizer.json, padded to the model's vocabulary size. */
export function grammarVocab(tokenizer: Record<string, unknown>, vocabSize: number, stopIds: readonly number[]): GrammarVocab {
  const tokens = new Array<string>(vocabSize).fill('');
  const model = tokenizer.model as { vocab?: Record<string, number> | [string, number][] } | undefined;
  const vocab = model?.vocab;
  if (Array.isArray(vocab)) vocab.forEach(([t], id) => id < vocabSize && (tokens[id] = t));
  else if (vocab) for (const [t, id] of Object.entries(vocab)) if (id < vocabSize) tokens[id] = t;
  for (const a of (tokenizer.added_tokens as { id: number; content: string }[] | undefined) ?? []) if (a.id < vocabSize) tokens[a.id] = a.content;
  const decoder = JSON.stringify(tokenizer.decoder ?? null);
  const vocabType = decoder.includes('"ByteLevel"') ? 'byte_level' : decoder.includes('"ByteFallback"') ? 'byte_fallback' : 'raw';
  return { tokens, vocabType, stopIds: [...stopIds] };
}

type XG = XGrammarModule;
type Compiled = CompiledGrammar;

/** Escapes a string as an EBNF string literal. */
function ebnfLiteral(s: string): string {
  let out = '"';
  for (const ch of s) {
    const c = ch.codePointAt(0)!;
    if (ch === '"' || ch === '\\') out += `\\${ch}`;
    else if (c >= 0x20 && c < 0x7f) out += ch;
    else if (c <= 0xffff) out += `\\u${c.toString(16).padStart(4, '0')}`;
    else out += `\\U${c.toString(16).padStart(8, '0')}`;
  }
  return `${out}"`;
}

/** One row's grammar state: the next token's bitmask, and the tokens it accepts. */
export class GrammarState {
  private readonly m: GrammarMatcher;

  constructor(m: GrammarMatcher) {
    this.m = m;
  }

  /** Bit i of word i >> 5 is set when token i may come next. */
  mask(): Promise<Int32Array> {
    return this.m.getNextTokenBitmask();
  }

  /** Advances by one token; false when the grammar does not allow it (the state is unchanged). */
  accept(id: number): boolean {
    return this.m.acceptToken(id);
  }

  /** The grammar is complete and a stop token was accepted. */
  get terminated(): boolean {
    return this.m.isTerminated();
  }

  dispose(): void {
    this.m.dispose();
  }
}

export class GrammarCompiler {
  private readonly xg: XG;
  private readonly compiler: XGrammarCompiler;
  private readonly cache: LRUCache<string, Promise<Compiled>>;

  private constructor(xg: XG, compiler: XGrammarCompiler, cacheSize: number) {
    this.xg = xg;
    this.compiler = compiler;
    this.cache = new LRUCache({ max: cacheSize, dispose: (p) => void p.then((c) => c.dispose(), () => {}) });
  }

  /**
   * `cacheSize`: compiled grammars kept (least recently used first out; each is freed when it
   * leaves and no matcher uses it). XGrammar's own compile cache is off: it has no bound, and a
   * stream of distinct schemas would grow it until the WebAssembly memory is exhausted.
   */
  static async create(vocab: GrammarVocab, cacheSize = 64): Promise<GrammarCompiler> {
    const xg = xgrammar();
    const info = await xg.TokenizerInfo.createTokenizerInfo(vocab.tokens, vocab.vocabType, false, vocab.tokens.length, vocab.stopIds);
    const compiler = await xg.GrammarCompiler.createGrammarCompiler(info, false);
    return new GrammarCompiler(xg, compiler, cacheSize);
  }

  /** Compiles `spec` (once; later calls share the result). Throws GrammarError for a spec it refuses. */
  compile(spec: GrammarSpec): Promise<Compiled> {
    const key = grammarKey(spec);
    let hit = this.cache.get(key);
    if (!hit) {
      hit = this.compileUncached(spec);
      hit.catch(() => this.cache.delete(key));
      this.cache.set(key, hit);
    }
    return hit;
  }

  async state(spec: GrammarSpec): Promise<GrammarState> {
    const compiled = await this.compile(spec);
    return new GrammarState(await this.xg.GrammarMatcher.createGrammarMatcher(compiled));
  }

  private async compileUncached(spec: GrammarSpec): Promise<Compiled> {
    const fail = (param: string) => (err: unknown): never => {
      throw new GrammarError(`${param}: ${messageOf(err)}`, param);
    };
    switch (spec.type) {
      case 'json_object':
        return this.compiler.compileJSONSchema('{"type": "object"}', false, -1, [', ', ': ']);
      case 'json_schema': {
        let schema: unknown;
        try {
          schema = JSON.parse(spec.schema);
        } catch (err) {
          fail('schema')(err);
        }
        const checked = checkJsonSchema(schema);
        if (checked.ranges.length === 0) return this.compiler.compileJSONSchema(JSON.stringify(checked.schema), false, -1, [', ', ': ']).catch(fail('schema'));
        return this.compiler.compileGrammar(await this.schemaEbnf(checked, 'schema')).catch(fail('schema'));
      }
      case 'regex':
        return this.compiler.compileStructuralTag({ type: 'structural_tag', format: { type: 'regex', pattern: spec.pattern } }).catch(fail('regex'));
      case 'choice':
        if (spec.choices.length === 0) throw new GrammarError('choice: at least one choice is needed', 'choice');
        return this.compiler.compileGrammar(`root ::= ${spec.choices.map(ebnfLiteral).join(' | ')}`).catch(fail('choice'));
      case 'ebnf':
        return this.compiler.compileGrammar(spec.grammar).catch(fail('grammar'));
      case 'tool_calls': {
        const tag = await toolStructuralTag(spec, (checked) => this.schemaEbnf(checked, 'tools'));
        return this.compiler.compileStructuralTag(tag).catch(fail('tools'));
      }
    }
  }

  /**
   * XGrammar's EBNF for a checked schema (the grammar compileJSONSchema compiles, with the same
   * options), each numeric placeholder replaced by its range rule.
   */
  private async schemaEbnf(checked: CheckedSchema, param: string): Promise<string> {
    let grammar: Grammar;
    try {
      grammar = await this.xg.Grammar.fromJSONSchema(JSON.stringify(checked.schema), false, -1, [', ', ': ']);
    } catch (err) {
      throw new GrammarError(`${param}: ${messageOf(err)}`, param);
    }
    try {
      return spliceRanges(grammar.toString(), checked);
    } finally {
      grammar.dispose();
    }
  }
}

/**
 * Puts each range's rule where XGrammar wrote its placeholder (`{"const": s}` is the EBNF literal
 * `"\"s\""`) and appends the rules. A placeholder must be written exactly once, or not at all
 * when it sits in a definition nothing references (XGrammar writes only what is reachable);
 * anything else means XGrammar renders schemas differently than this was written for.
 */
export function spliceRanges(ebnf: string, checked: CheckedSchema): string {
  for (const r of checked.ranges) {
    const parts = ebnf.split(`"\\"${r.sentinel}\\""`);
    const unreferenced = parts.length === 1 && r.inDefinition;
    if (parts.length !== 2 && !unreferenced)
      throw new LoraplexError('internal_error', `the grammar of the schema writes the placeholder of the numeric range at ${r.at} ${parts.length - 1} times instead of once; check the @mlc-ai/web-xgrammar version`);
    ebnf = parts.join(r.rule);
  }
  return `${ebnf}\n${checked.ranges.map((r) => r.ebnf).join('\n')}\n`;
}

/** An XGrammar error as users should read it: an abort says what XGrammar printed before it. */
export function messageOf(err: unknown): string {
  let m = err instanceof Error ? err.message : String(err);
  if (isXGrammarAbort(err)) m = `XGrammar aborted: ${xgrammarFatalMessage() ?? 'it ran out of memory or hit an internal limit'}`;
  return m.replace(/\s+/g, ' ').slice(0, 500);
}

/** Sets the logits of tokens the mask rejects to -Infinity; returns how many tokens stay allowed. */
export function applyTokenMask(logits: Float32Array, mask: Int32Array): number {
  const n = logits.length;
  let allowed = 0;
  for (let w = 0; w < mask.length; w++) {
    const bits = mask[w];
    const base = w << 5;
    const end = Math.min(32, n - base);
    if (bits === -1 && end === 32) {
      allowed += 32;
      continue;
    }
    for (let b = 0; b < end; b++) {
      if (((bits >>> b) & 1) === 0) logits[base + b] = -Infinity;
      else allowed++;
    }
  }
  // Tokens past the mask (a model vocabulary wider than the grammar's) are never allowed.
  if (mask.length * 32 < n) logits.fill(-Infinity, mask.length * 32);
  return allowed;
}
