/**
 * The grammar threads under a hostile tenant, with Qwen3's real tokenizer: a grammar whose masks
 * grow with every token, a grammar that makes XGrammar abort, a stream of distinct schemas, and
 * one owner's expensive checks. Each fails (or is refused) alone, with its own error; the other
 * rows' masks are exactly what an independent matcher gives for the same tokens, and later
 * requests are served.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GrammarCompiler, grammarVocab, type GrammarSpec, type GrammarState, type GrammarVocab } from '../../src/runtime/grammar/compiler.js';
import { xgrammarMemoryBytes } from '../../src/runtime/grammar/xgrammar.js';
import { GrammarHost, type MaskReply } from '../../src/scheduler/grammar-host.js';
import { tokenizerDir } from '../helpers/tokenizers.js';

const EOS = 151645;
const VOCAB_SIZE = 151936;
const tokenizer = JSON.parse(readFileSync(join(tokenizerDir('qwen3'), 'tokenizer.json'), 'utf8')) as Record<string, unknown>;
const vocab: GrammarVocab = grammarVocab(tokenizer, VOCAB_SIZE, [EOS]);
/** Compiles fast (~250 ms), but each mask costs more than the last: 13 ms at the first token, over a second by the 11th. */
const GROWING: GrammarSpec = { type: 'ebnf', grammar: 'root ::= (e)+\ne ::= e2 | e2 e2 | e2 e2 e2\ne2 ::= [a-z]* | [a-m]* [n-z]*' };
/** XGrammar prints a parse error and aborts its runtime on this. */
const ABORTING: GrammarSpec = { type: 'ebnf', grammar: 'root ::= ' };
const WORDS: GrammarSpec = { type: 'regex', pattern: '[a-z ]{0,400}' };
/** Tokens of two to four lowercase letters (each allowed by both grammars above). */
const letters = vocab.tokens.flatMap((s, id) => (/^[a-z]{2,4}$/.test(s) ? [id] : []));
const letter = (i: number): number => letters[(i * 7919) % letters.length];

let reference: GrammarCompiler;
beforeAll(async () => {
  reference = await GrammarCompiler.create(vocab, 4);
}, 120_000);

const maskOf = (reply: MaskReply): Int32Array => {
  if (!('mask' in reply)) throw new Error(`expected a mask, got ${JSON.stringify(reply)}`);
  return reply.mask;
};

/** Drives row `id` through `tokens`, checking each mask against an independent matcher's. */
async function follow(host: GrammarHost, id: number, ref: GrammarState, tokens: number[]): Promise<void> {
  for (const token of tokens) {
    expect(Array.from(maskOf(await host.next(id)))).toEqual(Array.from(await ref.mask()));
    expect(ref.accept(token)).toBe(true);
    host.accept(id, token);
  }
}

describe('the grammar thread replaces itself', () => {
  let host: GrammarHost;
  const replaced: string[] = [];
  beforeAll(async () => {
    host = new GrammarHost({ tokenizer, vocabSize: VOCAB_SIZE, stopIds: [EOS] }, { maskTimeoutMs: 150, onReplace: (why) => replaced.push(why) });
    await host.ready();
  }, 120_000);
  afterAll(async () => {
    await host?.terminate();
  });

  it('a row whose masks outgrow --grammar-mask-timeout-ms fails alone; the other rows move to a fresh thread, state and all', async () => {
    // (Opened without the checker, which would refuse it: this is the grammar thread's own guard.)
    host.open(1, GROWING);
    host.open(2, WORDS);
    const ref = await reference.state(WORDS);
    await follow(host, 2, ref, [letter(0), letter(1), letter(2)]);
    let error: Error | null = null;
    for (let i = 0; i < 30 && !error; i++) {
      const reply = await host.next(1);
      if ('error' in reply) error = reply.error;
      else host.accept(1, letter(i));
    }
    expect(error?.message).toMatch(/needed more than 150 ms of CPU time to compute one token's mask \(--grammar-mask-timeout-ms\)/);
    expect(error).toMatchObject({ code: 'invalid_grammar', param: 'grammar' });
    host.close(1);
    expect(host.stats().replacements).toBe(1);
    expect(replaced[0]).toMatch(/more than 150 ms/);
    // Row 2 carries on where it was, on the new thread.
    await follow(host, 2, ref, [letter(3), letter(4), letter(5), letter(6)]);
    host.close(2);
    ref.dispose();
    // The grammar is refused from now on, before anything runs.
    await expect(host.compile(GROWING)).rejects.toMatchObject({ code: 'invalid_grammar' });
    // New rows are served.
    await host.compile({ type: 'json_object' });
    host.open(3, { type: 'json_object' });
    expect(maskOf(await host.next(3)).length).toBeGreaterThan(0);
    host.close(3);
  }, 300_000);

  it('a grammar that makes XGrammar abort fails its row with what XGrammar said; the others go on and new grammars compile', async () => {
    host.open(4, WORDS);
    const ref = await reference.state(WORDS);
    await follow(host, 4, ref, [letter(7)]);
    const before = host.stats().replacements;
    host.open(5, ABORTING);
    const reply = await host.next(5);
    expect('error' in reply && reply.error.message).toMatch(/EBNF parser error at line 1/);
    host.close(5);
    expect(host.stats().replacements).toBe(before + 1);
    await follow(host, 4, ref, [letter(8), letter(9)]);
    host.close(4);
    ref.dispose();
    const schema: GrammarSpec = { type: 'json_schema', schema: JSON.stringify({ type: 'object', properties: { a: { type: 'integer' } }, required: ['a'] }) };
    await host.compile(schema);
    host.open(6, schema);
    expect(maskOf(await host.next(6)).length).toBeGreaterThan(0);
    host.close(6);
    expect(host.failed).toBe(false);
  }, 300_000);
});

describe('the memory limit', () => {
  it('a limit below what a fresh grammar thread needs does not replace it over and over', async () => {
    const host = new GrammarHost({ tokenizer, vocabSize: VOCAB_SIZE, stopIds: [EOS] }, { memoryLimitBytes: 1 });
    try {
      await host.ready();
      host.open(1, WORDS);
      const ref = await reference.state(WORDS);
      await follow(host, 1, ref, [letter(10), letter(11), letter(12)]);
      ref.dispose();
      host.close(1);
      expect(host.stats().replacements).toBe(0);
    } finally {
      await host.terminate();
    }
  }, 120_000);
});

describe('the checker', () => {
  let host: GrammarHost;
  beforeAll(async () => {
    host = new GrammarHost({ tokenizer, vocabSize: VOCAB_SIZE, stopIds: [EOS] }, { compileTimeoutMs: 3000 });
    await host.ready();
  }, 120_000);
  afterAll(async () => {
    await host?.terminate();
  });

  it('refuses a grammar whose masks grow, by probing its first tokens; a repeat is refused without a check', async () => {
    await expect(host.compile(GROWING)).rejects.toThrow(/needed \d+ ms of CPU time to compute the mask of token \d+, more than 200 ms \(--grammar-mask-timeout-ms\)/);
    const checks = host.stats().checks;
    await expect(host.compile(GROWING)).rejects.toMatchObject({ code: 'invalid_grammar' });
    expect(host.stats().checks).toBe(checks);
  }, 120_000);

  it('an aborting grammar is refused with what XGrammar said, and the checker is replaced so later specs compile', async () => {
    await expect(host.compile(ABORTING)).rejects.toThrow(/XGrammar aborted: EBNF parser error at line 1/);
    await host.compile({ type: 'json_schema', schema: JSON.stringify({ type: 'object', properties: { b: { type: 'boolean' } }, required: ['b'] }) });
  }, 120_000);

  it("one owner's expensive checks hold one checker: another owner's new spec is checked meanwhile", async () => {
    // Each of these compiles for far longer than its budget (nested bounded repeats).
    const slow = (n: number): GrammarSpec => ({ type: 'regex', pattern: `(([a-z]{1,${100 + n}}){1,100}){1,100}` });
    const order: string[] = [];
    const attacker = [1, 2, 3].map((n) => host.compile(slow(n), 'attacker').then(() => order.push('attacker ok'), () => order.push('attacker refused')));
    await new Promise((r) => setTimeout(r, 200));
    await host.compile({ type: 'regex', pattern: '[0-9]{3}-victim' }, 'victim');
    order.push('victim');
    await Promise.all(attacker);
    expect(order[0]).toBe('victim');
    expect(order.slice(1)).toEqual(['attacker refused', 'attacker refused', 'attacker refused']);
  }, 600_000);
});

describe('grammar memory', () => {
  it('stays flat over a stream of distinct schemas (compiled grammars are freed; XGrammar keeps no cache of its own)', async () => {
    const compiler = await GrammarCompiler.create(vocab, 4);
    const schema = (i: number): GrammarSpec => {
      const properties = Object.fromEntries(Array.from({ length: 40 }, (_, j) => [`f${i}_${j}`, { type: ['string', 'integer', 'boolean'][j % 3] }]));
      return { type: 'json_schema', schema: JSON.stringify({ type: 'object', properties, required: Object.keys(properties).slice(0, 2) }) };
    };
    const run = async (from: number, to: number): Promise<void> => {
      for (let i = from; i < to; i++) {
        const state = await compiler.state(schema(i));
        await state.mask();
        state.dispose();
      }
    };
    await run(0, 20);
    const warm = xgrammarMemoryBytes();
    await run(20, 80);
    expect(xgrammarMemoryBytes() - warm).toBeLessThanOrEqual(2 ** 20);
  }, 300_000);
});
