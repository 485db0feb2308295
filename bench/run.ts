/**
 * `npm run bench [-- --quick] [--dir DIR] [--out FILE]`: runs the benchmarks and prints a Markdown
 * report (and writes JSON next to it). Absolute times drift on shared machines; read the ratios.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { engineBench } from './engine.js';
import { grammarBench } from './grammar.js';
import { grammarBatchBench } from './grammar-batch.js';
import { httpBench } from './http.js';
import { isolationBench } from './isolation.js';
import { kernelsBench } from './kernels.js';
import { lbBench } from './lb.js';
import { prefixBench } from './prefix.js';
import { rooflineBench } from './roofline.js';
import { w8Bench } from './w8.js';
import { runtimeBench } from './runtime.js';
import { textBench } from './text.js';
import { underLoadBench } from './under-load.js';

const { values } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    dir: { type: 'string', default: join('.cache', 'bench') },
    out: { type: 'string' },
    only: { type: 'string' },
    /** Another checkout whose server's default configuration W8 runs too, in the same run. */
    baseline: { type: 'string' },
  },
});

const ctx = { quick: values.quick!, dir: values.dir!, log: (line: string) => process.stderr.write(`${line}\n`) };
mkdirSync(ctx.dir, { recursive: true });
const started = Date.now();
const machine = `${cpus().length}× ${cpus()[0]?.model ?? 'CPU'}, ${Math.round(totalmem() / 1024 ** 3)} GiB, Node ${process.version}`;
const only = new Set((values.only ?? 'kernels,roofline,runtime,engine,http,w8,prefix,grammar,load,isolation,lb,text').split(','));
const kernels = only.has('kernels') ? await kernelsBench(ctx) : null;
const roofline = only.has('roofline') ? await rooflineBench(ctx) : null;
const runtime = only.has('runtime') ? await runtimeBench(ctx) : null;
const engine = only.has('engine') ? await engineBench(ctx) : null;
const http = only.has('http') ? await httpBench(ctx) : null;
const w8 = only.has('w8') ? await w8Bench(ctx, undefined, values.baseline) : null;
const prefix = only.has('prefix') ? await prefixBench(ctx) : null;
const grammar = only.has('grammar') ? await grammarBench(ctx) : null;
const grammarBatch = only.has('grammar') ? await grammarBatchBench(ctx) : null;
const underLoad = only.has('load') ? await underLoadBench(ctx) : null;
const isolation = only.has('isolation') ? await isolationBench(ctx) : null;
const lb = only.has('lb') ? await lbBench(ctx) : null;
const text = only.has('text') ? textBench() : null;
const sections = [kernels?.markdown, roofline?.markdown, runtime?.markdown, engine?.markdown, http?.markdown, w8?.markdown, prefix?.markdown, grammar?.markdown, grammarBatch?.markdown, underLoad?.markdown, isolation?.markdown, lb?.markdown, text?.markdown].filter((s): s is string => !!s);
const report = [`## loraplex benchmarks${ctx.quick ? ' (quick)' : ''}`, '', `Machine: ${machine}`, '', ...sections.flatMap((s) => [s, '']), `Resident memory at the end: ${Math.round(process.memoryUsage().rss / 1024 ** 2)} MiB. Took ${Math.round((Date.now() - started) / 1000)} s.`].join('\n');
process.stdout.write(`${report}\n`);
const out = values.out ?? join(ctx.dir, ctx.quick ? 'results-quick' : 'results');
writeFileSync(`${out}.json`, JSON.stringify({ machine, quick: ctx.quick, kernels: kernels && { ...kernels, markdown: undefined }, roofline: roofline && { ...roofline, markdown: undefined }, runtime, engine, http: http && { cells: http.cells }, w8: w8 && { cells: w8.cells, alone: w8.alone }, prefix: prefix?.cells, grammar: grammar && { ...grammar, markdown: undefined }, grammarBatch: grammarBatch?.cells, underLoad: underLoad?.result, isolation: isolation && { quiet: isolation.quiet, abused: isolation.abused, abusive: isolation.abusive }, lb: lb?.result, text }, null, 2));
writeFileSync(`${out}.md`, `${report}\n`);
if (http) writeFileSync(`${out}.svg`, http.svg);
process.stderr.write(`wrote ${out}.json, ${out}.md${http ? ` and ${out}.svg` : ''}\n`);
