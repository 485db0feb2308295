/**
 * The machine's own ceiling and how close a step comes to it, measured in the same run:
 * - the int4 and int8 MatMulNBits throughput of the model's projection shapes in isolation
 *   (all threads), at the row counts the engine uses;
 * - memory bandwidth (a large copy);
 * - whole steps of the real graph: prefill chunks of 32/128/512/2048 tokens and decode at 1/8/32
 *   rows, as TFLOP/s and as a fraction of the matmul ceiling at the same row count; at 1 row, the
 *   weight bytes a step reads over its time, as a fraction of the bandwidth;
 * - a breakdown of step time by operator type (onnxruntime's profiler), int4 and w8a8;
 * - session options (threads, spinning, memory arena) compared on the same steps.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ModelSpec } from '../src/runtime/checkpoint/spec.js';
import { GraphBuilder } from '../src/runtime/graph/graph-builder.js';
import { encodeModel } from '../src/runtime/graph/onnx.js';
import { BLOCK, quantizeNBits } from '../src/runtime/graph/quant.js';
import type { KvSequence } from '../src/runtime/kv-cache.js';
import { DecoderModel } from '../src/runtime/model.js';
import { Session, tensor } from '../src/runtime/session.js';
import { availableCores } from '../src/util/cores.js';
import { symmetricPrng } from '../src/util/prng.js';
import { progressBar } from '../src/util/progress.js';
import { fmt, interleaved, table } from './lib.js';
import { benchAdapters, buildFor, prepareModel, type BenchContext } from './runtime.js';

export interface RooflineResult {
  threads: number;
  ceiling: { bits: number; rows: number; tflops: number }[];
  bandwidthGBs: number;
  steps: { kind: 'prefill' | 'decode'; tokens: number; ms: number; tflops: number; ofCeiling: number; ofBandwidth?: number }[];
  ops: { step: string; shares: Record<string, number>; nodes: number; ms: number }[];
  options: { variant: string; decode8Ms: number; prefill512Ms: number }[];
  markdown: string;
}

/** [K in, N out] of one layer's linear projections as the graph runs them (q|k|v and gate|up fused). */
export function layerShapes(spec: ModelSpec): [number, number][] {
  const q = spec.numHeads * spec.headDim;
  const kv = spec.numKvHeads * spec.headDim;
  return [
    [spec.hiddenSize, q + 2 * kv],
    [q, spec.hiddenSize],
    [spec.hiddenSize, 2 * spec.intermediateSize],
    [spec.intermediateSize, spec.hiddenSize],
  ];
}

/** FLOPs of the linear projections (layers + head) for `tokens` tokens and `logitRows` logits rows. */
function matmulFlops(spec: ModelSpec, tokens: number, logitRows: number): number {
  const perToken = layerShapes(spec).reduce((n, [k, nOut]) => n + 2 * k * nOut, 0) * spec.numLayers;
  return tokens * perToken + logitRows * 2 * spec.hiddenSize * spec.vocabSize;
}

/** Bytes of int4 weights a step reads once (block 32: 16 bytes of nibbles + a 4-byte scale + half a zero-point byte). */
function int4WeightBytes(spec: ModelSpec): number {
  const per = (k: number, n: number): number => n * Math.ceil(k / BLOCK) * (16 + 4 + 0.5);
  return layerShapes(spec).reduce((s, [k, n]) => s + per(k, n), 0) * spec.numLayers + per(spec.hiddenSize, spec.vocabSize);
}

/** A graph with one MatMulNBits [M, K] × [K, N] and random weights. */
async function matmulSession(dir: string, k: number, n: number, bits: 4 | 8, threads: number): Promise<Session> {
  const g = new GraphBuilder('float', null);
  const rand = symmetricPrng(k * 31 + n);
  const w = new Float32Array(k * n);
  for (let i = 0; i < w.length; i++) w[i] = rand() * 0.05;
  const q = quantizeNBits(w, n, k, bits);
  const x = g.input('x', 'float', ['M', k]);
  const packed = g.init('w', 'uint8', [n, q.kBlocks, (BLOCK * bits) / 8], q.packed);
  const scales = g.init('s', 'float', [n * q.kBlocks], q.scales);
  const zp = q.zeroPoints ? g.init('zp', 'uint8', [q.zeroPoints.length], q.zeroPoints) : '';
  const inputs = zp ? [x, packed, scales, zp] : [x, packed, scales];
  g.op('MatMulNBits', inputs, { K: k, N: n, bits, block_size: BLOCK, accuracy_level: 4 }, { domain: 'com.microsoft', out: 'y' });
  g.output('y', 'float', ['M', n]);
  const path = join(dir, `mm-${k}x${n}-${bits}.onnx`);
  writeFileSync(path, encodeModel({ name: 'mm', nodes: g.nodes, initializers: g.initializers, inputs: g.inputs, outputs: g.outputs }, { opset: 23, msOpset: 1, producer: 'loraplex-bench' }));
  return Session.create(path, { device: 'cpu', allowCpuFallback: false, threads });
}

async function bandwidth(): Promise<number> {
  const src = Buffer.alloc(512 * 1024 * 1024, 1);
  const dst = Buffer.alloc(src.length);
  let best = Infinity;
  for (let i = 0; i < 5; i++) {
    const t0 = performance.now();
    src.copy(dst);
    best = Math.min(best, performance.now() - t0);
  }
  // A copy reads and writes every byte.
  return (2 * src.length) / (best / 1000) / 1e9;
}

/** Operator type (and its first input's rank) → the breakdown's category. */
function category(op: string, firstInputRank: number): string {
  if (op === 'MatMulNBits' || op === 'MatMulBnb4' || op === 'MatMulIntegerToFloat') return 'matmuls';
  // The only fp32 matmuls in a quantized graph are the LoRA groups' products.
  if (op === 'MatMul' || op === 'FusedMatMul' || op === 'Where') return 'LoRA';
  if (op === 'Attention' || op === 'GroupQueryAttention') return 'attention';
  // ScatterND adds the LoRA/DoRA deltas into [T, out]; on the [B, W, kv] past it writes the new keys and values.
  if (op === 'ScatterND') return firstInputRank === 3 ? 'attention' : 'LoRA';
  if (/LayerNormalization|RotaryEmbedding/.test(op)) return 'norms/rotary';
  if (/Gather|Concat|Split|Reshape|Unsqueeze|Squeeze|Shape|Cast|Range|Slice/.test(op)) return 'gathers/shape';
  return 'other';
}

/** Profile of the last run: kernel time shares by category, nodes run, and the run's time. */
function opShares(profilePath: string): { shares: Record<string, number>; nodes: number; ms: number } {
  type Event = { cat: string; name: string; dur: number; ts: number; args?: { op_name?: string; input_type_shape?: Record<string, number[]>[] } };
  const events = JSON.parse(readFileSync(profilePath, 'utf8')) as Event[];
  const lastRun = events.filter((e) => e.cat === 'Session' && e.name === 'model_run').at(-1);
  const totals: Record<string, number> = {};
  let sum = 0;
  let nodes = 0;
  for (const e of events) {
    if (e.cat !== 'Node' || !e.name.endsWith('_kernel_time') || !e.args?.op_name) continue;
    if (lastRun && e.ts < lastRun.ts) continue;
    const first = e.args.input_type_shape?.[0];
    const c = category(e.args.op_name, first ? (Object.values(first)[0]?.length ?? 0) : 0);
    totals[c] = (totals[c] ?? 0) + e.dur;
    sum += e.dur;
    nodes++;
  }
  if (lastRun) totals['outside kernels'] = Math.max(0, lastRun.dur - sum);
  const all = Object.values(totals).reduce((a, b) => a + b, 0);
  return { shares: Object.fromEntries(Object.entries(totals).map(([k, v]) => [k, v / all])), nodes, ms: (lastRun?.dur ?? 0) / 1000 };
}

function prompt(n: number, vocab: number, seed: number): number[] {
  return Array.from({ length: n }, (_, i) => (seed * 7919 + i * 104729) % vocab);
}

export async function rooflineBench(ctx: BenchContext): Promise<RooflineResult> {
  const { modelDir, name } = await prepareModel(ctx);
  const threads = availableCores().count;
  const dir = mkdtempSync(join(tmpdir(), 'loraplex-roofline-'));
  const bar = progressBar('roofline');
  const built = await buildFor(ctx, modelDir, { weights: 'int4', activations: 'fp32' });
  const spec = built.spec;
  const rowsList = ctx.quick ? [1, 8, 128] : [1, 8, 32, 128, 512, 2048];
  const reps = ctx.quick ? 3 : 6;
  try {
    // ---- 1. the matmul ceiling: one layer's four projections in isolation, per row count
    const ceiling: RooflineResult['ceiling'] = [];
    for (const bits of [4, 8] as const) {
      const sessions = await Promise.all(layerShapes(spec).map(([k, n]) => matmulSession(dir, k, n, bits, threads)));
      for (const rows of rowsList) {
        bar(ceiling.length, 2 * rowsList.length, `int${bits} ceiling at ${rows} rows`);
        const feeds = layerShapes(spec).map(([k]) => ({ x: tensor('float32', symmetricFill(rows * k), [rows, k]) }));
        const t = await interleaved(Object.fromEntries(sessions.map((s, i) => [String(i), () => s.run(feeds[i], ['y'])])), { rounds: reps, warmup: 1 });
        const ms = Object.values(t).reduce((a, v) => a + v.min, 0);
        const flops = layerShapes(spec).reduce((n, [k, nOut]) => n + 2 * rows * k * nOut, 0);
        ceiling.push({ bits, rows, tflops: flops / (ms / 1000) / 1e12 });
      }
      for (const s of sessions) await s.release();
    }
    const bandwidthGBs = await bandwidth();
    const ceilingAt = (rows: number): number => {
      const c = ceiling.filter((x) => x.bits === 4);
      const near = c.reduce((best, x) => (Math.abs(Math.log(x.rows / rows)) < Math.abs(Math.log(best.rows / rows)) ? x : best), c[0]);
      return near.tflops;
    };

    // ---- 2. whole steps, with a profile of the last run of each
    const kvTokens = 32 * 256 + 4096 + 64;
    const stepsOut: RooflineResult['steps'] = [];
    const ops: RooflineResult['ops'] = [];
    const prefixes: string[] = [];
    const measure = async (model: DecoderModel, label: string, run: () => Promise<unknown>): Promise<number> => {
      const t = await interleaved({ step: run }, { rounds: reps, warmup: 1 });
      void label;
      return t.step.median;
    };
    const chunks = ctx.quick ? [32, 128] : [32, 128, 512, 2048];
    const decodeRows = ctx.quick ? [1, 8] : [1, 8, 32];
    const timed = await DecoderModel.load(built, { device: 'cpu', allowCpuFallback: false, threads: 0, kvCacheTokens: kvTokens, adapterSlots: 8, maxLoraRank: 64 });
    let step = 0;
    for (const c of chunks) {
      bar(step++, chunks.length + decodeRows.length, `prefill ${c}`);
      const ms = await measure(timed, `prefill ${c}`, async () => {
        const seq = timed.newSequence();
        await timed.step([{ seq, tokens: prompt(c, spec.vocabSize, c), slot: -1, logits: 'last' }]);
        timed.freeSequence(seq);
      });
      const tflops = (matmulFlops(spec, c, 1) + attentionFlops(spec, c, 0)) / (ms / 1000) / 1e12;
      stepsOut.push({ kind: 'prefill', tokens: c, ms, tflops, ofCeiling: tflops / ceilingAt(c) });
    }
    for (const rows of decodeRows) {
      bar(step++, chunks.length + decodeRows.length, `decode ${rows}`);
      const seqs: KvSequence[] = [];
      for (let i = 0; i < rows; i++) {
        const seq = timed.newSequence();
        await timed.step([{ seq, tokens: prompt(128, spec.vocabSize, i), slot: -1, logits: 'none' }]);
        seqs.push(seq);
      }
      const ms = await measure(timed, `decode ${rows}`, () => timed.step(seqs.map((seq, i) => ({ seq, tokens: [(seq.length * 31 + i) % spec.vocabSize], slot: -1, logits: 'last' as const }))));
      const tflops = (matmulFlops(spec, rows, rows) + rows * attentionFlops(spec, 1, 160)) / (ms / 1000) / 1e12;
      stepsOut.push({ kind: 'decode', tokens: rows, ms, tflops, ofCeiling: tflops / ceilingAt(rows), ...(rows === 1 ? { ofBandwidth: int4WeightBytes(spec) / (ms / 1000) / 1e9 / bandwidthGBs } : {}) });
      for (const s of seqs) timed.freeSequence(s);
    }
    await timed.close();
    // The profiler writes one file; its runs are in order: the last run of each measured step
    // is the one to read, so profile the representative steps again in their own sessions.
    // The 8-row decode is profiled twice: base rows, and every row on its own adapter (W8's steps);
    // that step and the largest prefill again on w8a8 weights (its per-row quantization counts as 'other').
    const decode8 = (slotOf: (row: number) => number) => async (m: DecoderModel): Promise<void> => {
      const seqs = [] as KvSequence[];
      for (let i = 0; i < 8; i++) {
        const seq = m.newSequence();
        await m.step([{ seq, tokens: prompt(128, spec.vocabSize, i), slot: slotOf(i), logits: 'none' }]);
        seqs.push(seq);
      }
      for (let r = 0; r < 3; r++) await m.step(seqs.map((seq, i) => ({ seq, tokens: [(seq.length * 31 + i) % spec.vocabSize], slot: slotOf(i), logits: 'last' as const })));
    };
    const builtW8a8 = await buildFor(ctx, modelDir, { weights: 'w8a8', activations: 'fp32' });
    const withAdapters = async (m: DecoderModel): Promise<void> => {
      (await benchAdapters(ctx, name, m, 8)).weights.forEach((w) => m.lora.load(w));
      await decode8((i) => i)(m);
    };
    const prefillLast = async (m: DecoderModel): Promise<void> => {
      for (let r = 0; r < 2; r++) {
        const seq = m.newSequence();
        await m.step([{ seq, tokens: prompt(chunks.at(-1)!, spec.vocabSize, r), slot: -1, logits: 'last' }]);
        m.freeSequence(seq);
      }
    };
    for (const [label, graph, run] of [
      ['decode 8 rows', built, decode8(() => -1)],
      ['decode 8 rows, 8 adapters', built, withAdapters],
      [`prefill ${chunks.at(-1)}`, built, prefillLast],
      ['w8a8: decode 8 rows, 8 adapters', builtW8a8, withAdapters],
      [`w8a8: prefill ${chunks.at(-1)}`, builtW8a8, prefillLast],
    ] as const) {
      const prefix = join(dir, `ops-${prefixes.length}`);
      prefixes.push(prefix);
      const m = await DecoderModel.load(graph, { device: 'cpu', allowCpuFallback: false, threads: 0, kvCacheTokens: kvTokens, adapterSlots: 8, maxLoraRank: 64, profilePrefix: prefix });
      await run(m);
      await m.close();
      const file = readdirSync(dir).find((f) => f.startsWith(`ops-${prefixes.length - 1}`) && f.endsWith('.json'));
      if (file) ops.push({ step: label, ...opShares(join(dir, file)) });
    }

    // ---- 3. session options on the same two steps
    const options: RooflineResult['options'] = [];
    const variants: [string, Partial<{ threads: number; spinning: boolean; memArena: boolean }>][] = [
      [`${threads} threads (default)`, {}],
      ['1 thread', { threads: 1 }],
      [`${threads} threads, spinning`, { spinning: true }],
      [`${threads} threads, no memory arena`, { memArena: false }],
    ];
    const models = await Promise.all(variants.map(([, v]) => DecoderModel.load(built, { device: 'cpu', allowCpuFallback: false, threads: v.threads ?? 0, spinning: v.spinning, memArena: v.memArena, kvCacheTokens: kvTokens, adapterSlots: 8, maxLoraRank: 64 })));
    const decodeSeqs = await Promise.all(models.map(async (m) => {
      const seqs: KvSequence[] = [];
      for (let i = 0; i < 8; i++) {
        const seq = m.newSequence();
        await m.step([{ seq, tokens: prompt(128, spec.vocabSize, i), slot: -1, logits: 'none' }]);
        seqs.push(seq);
      }
      return seqs;
    }));
    const p = ctx.quick ? 128 : 512;
    const dec = await interleaved(Object.fromEntries(models.map((m, i) => [String(i), () => m.step(decodeSeqs[i].map((seq, j) => ({ seq, tokens: [j + 1], slot: -1, logits: 'last' as const })))])), { rounds: reps * 2, warmup: 1 });
    // (Decode rows keep growing by one token per round; every variant grows alike.)
    const pre = await interleaved(
      Object.fromEntries(models.map((m, i) => [String(i), async () => {
        const seq = m.newSequence();
        await m.step([{ seq, tokens: prompt(p, spec.vocabSize, 3), slot: -1, logits: 'last' }]);
        m.freeSequence(seq);
      }])),
      { rounds: reps, warmup: 1 },
    );
    variants.forEach(([label], i) => options.push({ variant: label, decode8Ms: dec[String(i)].median, prefill512Ms: pre[String(i)].median }));
    for (const m of models) await m.close();
    bar.stop();

    const c4 = ceiling.filter((c) => c.bits === 4);
    const c8 = ceiling.filter((c) => c.bits === 8);
    const prefillFrac = stepsOut.filter((s) => s.kind === 'prefill');
    const decodeFrac = stepsOut.filter((s) => s.kind === 'decode');
    const markdown = [
      `### Roofline (${name}, int4, ${threads} threads)`,
      '',
      `Matmul ceiling: one layer's projections (${layerShapes(spec).map(([k, n]) => `${k}→${n}`).join(', ')}) in isolation, TFLOP/s; memory bandwidth (a 512 MiB copy): **${fmt(bandwidthGBs, 1)} GB/s**.`,
      '',
      table(['rows', ...rowsList.map(String)], [['int4', ...c4.map((c) => fmt(c.tflops, 3))], ['int8', ...c8.map((c) => fmt(c.tflops, 3))]]),
      '',
      table(
        ['step', 'ms', 'TFLOP/s', 'of the int4 ceiling at these rows', 'weight bytes / time, of bandwidth'],
        stepsOut.map((s) => [`${s.kind} ${s.tokens} ${s.kind === 'prefill' ? 'tokens' : 'rows'}`, fmt(s.ms, 1), fmt(s.tflops, 3), `${fmt(100 * s.ofCeiling, 0)}%`, s.ofBandwidth !== undefined ? `${fmt(100 * s.ofBandwidth, 0)}%` : '']),
      ),
      '',
      `**Fraction of ceiling: prefill ${prefillFrac.map((s) => `${s.tokens}: ${fmt(100 * s.ofCeiling, 0)}%`).join(', ')}; decode ${decodeFrac.map((s) => `${s.tokens} rows: ${fmt(100 * s.ofCeiling, 0)}%`).join(', ')}; 1-row decode ${fmt(100 * (decodeFrac[0].ofBandwidth ?? 0), 0)}% of bandwidth.**`,
      '',
      'Step time by operator (onnxruntime profiler, kernel time; "outside kernels" is the rest of session.run):',
      '',
      table(['step', 'nodes run', 'ms (profiled)', ...CATEGORIES], ops.map((o) => [o.step, String(o.nodes), fmt(o.ms, 1), ...CATEGORIES.map((c) => `${fmt(100 * (o.shares[c] ?? 0), 0)}%`)])),
      '',
      'Session options (median ms):',
      '',
      table(['variant', 'decode, 8 rows', `prefill, ${p} tokens`], options.map((o) => [o.variant, fmt(o.decode8Ms, 1), fmt(o.prefill512Ms, 1)])),
    ].join('\n');
    return { threads, ceiling, bandwidthGBs, steps: stepsOut, ops, options, markdown };
  } finally {
    bar.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

const CATEGORIES = ['matmuls', 'attention', 'LoRA', 'norms/rotary', 'gathers/shape', 'other', 'outside kernels'];

/** Attention FLOPs of `tokens` new tokens over `past` + themselves: QKᵀ and PV. */
function attentionFlops(spec: ModelSpec, tokens: number, past: number): number {
  const q = spec.numHeads * spec.headDim;
  return 2 * 2 * tokens * (past + tokens) * q;
}

function symmetricFill(n: number): Float32Array {
  const rand = symmetricPrng(n);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = rand();
  return out;
}
