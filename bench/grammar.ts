/**
 * Constrained decoding's own costs, on Qwen3's real 151,669-token vocabulary (padded to 151,936 as
 * the model's): building XGrammar's tokenizer info and compiler, compiling a schema (cold and from
 * the cache), and the per-step work of the grammar thread — the next-token bitmask of every
 * constrained row plus applying it to the row's logits — at 1, 8 and 32 rows walking a JSON schema.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { qwenTokenizerDir } from '../src/cli/demo.js';
import { applyTokenMask, GrammarCompiler, grammarVocab, type GrammarSpec, type GrammarState } from '../src/runtime/grammar/compiler.js';
import { prng } from '../src/util/prng.js';
import { fmt, table } from './lib.js';
import type { BenchContext } from './runtime.js';

const VOCAB = 151936;
const EOS = 151645;

const SCHEMAS: Record<string, object> = {
  flat: { type: 'object', properties: { name: { type: 'string', maxLength: 32 }, vip: { type: 'boolean' } }, required: ['name', 'vip'], additionalProperties: false },
  nested: {
    type: 'object',
    properties: {
      user: { type: 'object', properties: { id: { type: 'integer', minimum: 0 }, tags: { type: 'array', items: { enum: ['a', 'b', 'c'] }, maxItems: 8 } }, required: ['id', 'tags'], additionalProperties: false },
      items: { type: 'array', items: { type: 'object', properties: { sku: { type: 'string', pattern: '^[A-Z]{3}-[0-9]{4}$' }, note: { type: 'string' } }, required: ['sku', 'note'], additionalProperties: false } },
      id: { type: 'string', format: 'uuid' },
    },
    required: ['user', 'items', 'id'],
    additionalProperties: false,
  },
};

const rssMiB = (): number => process.memoryUsage().rss / 2 ** 20;

export interface GrammarBench {
  initMs: number;
  initRssMiB: number;
  compile: { schema: string; coldMs: number; cachedMs: number }[];
  steps: { rows: number; stepMs: number; perRowUs: number }[];
  markdown: string;
}

export async function grammarBench(ctx: BenchContext): Promise<GrammarBench> {
  const tokenizer = JSON.parse(readFileSync(join(qwenTokenizerDir(), 'tokenizer.json'), 'utf8')) as Record<string, unknown>;
  const rss0 = rssMiB();
  let t0 = performance.now();
  const compiler = await GrammarCompiler.create(grammarVocab(tokenizer, VOCAB, [EOS]));
  const initMs = performance.now() - t0;
  const initRssMiB = rssMiB() - rss0;
  ctx.log(`grammar: compiler for ${VOCAB} tokens in ${fmt(initMs, 0)} ms`);
  const compile: GrammarBench['compile'] = [];
  for (const [name, schema] of Object.entries(SCHEMAS)) {
    const spec: GrammarSpec = { type: 'json_schema', schema: JSON.stringify(schema) };
    t0 = performance.now();
    await compiler.compile(spec);
    const coldMs = performance.now() - t0;
    t0 = performance.now();
    await compiler.compile(spec);
    compile.push({ schema: name, coldMs, cachedMs: performance.now() - t0 });
  }
  const logits = new Float32Array(VOCAB);
  const steps: GrammarBench['steps'] = [];
  const stepsPerRun = ctx.quick ? 8 : 32;
  for (const rows of [1, 8, 32]) {
    const states: GrammarState[] = [];
    for (let i = 0; i < rows; i++) states.push(await compiler.state({ type: 'json_schema', schema: JSON.stringify(SCHEMAS.nested) }));
    const rand = prng(rows);
    let spent = 0;
    let counted = 0;
    const allowed = (mask: Int32Array, id: number): boolean => ((mask[id >> 5] >>> (id & 31)) & 1) === 1;
    for (let step = 0; step < stepsPerRun; step++) {
      const s0 = performance.now();
      const masks: (Int32Array | null)[] = [];
      for (const st of states) {
        if (st.terminated) {
          masks.push(null);
          continue;
        }
        const mask = await st.mask();
        logits.fill(0);
        applyTokenMask(logits, mask);
        masks.push(mask);
        counted++;
      }
      spent += performance.now() - s0;
      // The next token: a random allowed one (the sampler's work, not timed).
      masks.forEach((mask, i) => {
        if (!mask) return;
        let id = -1;
        for (let tries = 0; tries < 256 && (id < 0 || !allowed(mask, id) || id === EOS); tries++) id = Math.floor(rand() * VOCAB);
        if (!allowed(mask, id) || id === EOS) for (id = 0; id < VOCAB && (!allowed(mask, id) || id === EOS); id++);
        if (id < VOCAB) states[i].accept(id);
      });
    }
    for (const st of states) st.dispose();
    steps.push({ rows, stepMs: spent / stepsPerRun, perRowUs: (spent / Math.max(1, counted)) * 1000 });
  }
  const markdown = [
    `### Constrained decoding (XGrammar 0.1.27 WebAssembly, Qwen3 vocabulary of ${VOCAB} tokens)`,
    '',
    `Compiler (tokenizer info + compiler): **${fmt(initMs, 0)} ms**, +${fmt(initRssMiB, 0)} MiB resident.`,
    '',
    table(['schema', 'compile (ms)', 'from the cache (ms)'], compile.map((c) => [c.schema, fmt(c.coldMs, 1), fmt(c.cachedMs, 3)])),
    '',
    table(['constrained rows', 'grammar work per step (ms)', 'per row (µs)'], steps.map((s) => [s.rows, fmt(s.stepMs, 2), fmt(s.perRowUs, 0)])),
    '',
    'The grammar thread does this work while the engine runs the forward pass; a step waits for it only when it takes longer than the pass.',
  ].join('\n');
  return { initMs, initRssMiB, compile, steps, markdown };
}
