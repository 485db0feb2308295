/**
 * The matmul kernels onnxruntime offers, measured on the model's projection shapes (one layer's
 * four: q|k|v, o, gate|up, down) per row count, each as a fraction of the machine's int8 peak:
 * - MatMulNBits int4 and int8 at accuracy level 4 (int8 activations: VNNI) and int4 at level 1
 *   (fp32 compute),
 * - DynamicQuantizeMatMul (int8 weights per column; activations quantized per step: onnxruntime's
 *   int8 GEMM), and the unfused DynamicQuantizeLinear → MatMulInteger → scale,
 * - the w8a8 weight format's projection (int8 weights per column, each row of activations
 *   quantized on its own so a token's result does not depend on its step; MatMulIntegerToFloat),
 * - fp32 MatMul.
 * The int8 peak is measured: the best int8 GEMM onnxruntime does on a large square product (on a
 * 2-vCPU EPYC it reached 1.21 TOPS, above the 0.54 TOPS of one VNNI instruction per cycle at the
 * reported clock, so the cores issue two per cycle or run faster than /proc/cpuinfo says).
 * Fractions are of that; the one-instruction-per-cycle figure is printed beside it.
 */
import { readFileSync } from 'node:fs';
import { GraphBuilder } from '../src/runtime/graph/graph-builder.js';
import { encodeModel } from '../src/runtime/graph/onnx.js';
import { emitLinear, prepareLinear } from '../src/runtime/graph/linear.js';
import { BLOCK, quantizeChannels, quantizeNBits } from '../src/runtime/graph/quant.js';
import { Session, tensor } from '../src/runtime/session.js';
import { availableCores } from '../src/util/cores.js';
import { symmetricPrng } from '../src/util/prng.js';
import { progressBar } from '../src/util/progress.js';
import { fmt, interleaved, table } from './lib.js';
import { prepareModel, type BenchContext } from './runtime.js';
import { layerShapes } from './roofline.js';
import { Checkpoint } from '../src/runtime/checkpoint/checkpoint.js';

export const KERNELS = ['int4 MatMulNBits, acc 4', 'int4 MatMulNBits, acc 1', 'int8 MatMulNBits, acc 4', 'int8 DynamicQuantizeMatMul', 'int8 MatMulInteger (unfused)', 'w8a8 MatMulIntegerToFloat, rows quantized alone', 'fp32 MatMul'] as const;
export type Kernel = (typeof KERNELS)[number];

export interface KernelsResult {
  /** One VNNI instruction per cycle per core at the reported clock, TOPS. */
  peakTops: number;
  clockGHz: number;
  cores: number;
  /** Best int8 GEMM measured on a 2048³ product, TOPS. */
  measuredInt8Tops: number;
  /** Fractions are of measuredInt8Tops. */
  cells: { kernel: Kernel; rows: number; tops: number; ofPeak: number }[];
  markdown: string;
}

function random(n: number, seed: number, amp = 1): Float32Array {
  const rand = symmetricPrng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = amp * rand();
  return out;
}

/** A one-op graph computing x [M, K] · W [K, N] with `kernel`. */
async function kernelSession(kernel: Kernel, k: number, n: number, threads: number): Promise<Session> {
  const g = new GraphBuilder('float', null);
  const w = random(k * n, k * 31 + n, 0.05); // [K, N]
  const wt = new Float32Array(n * k); // [N, K], the Linear layout the quantizers take
  for (let i = 0; i < k; i++) for (let j = 0; j < n; j++) wt[j * k + i] = w[i * n + j];
  const x = g.input('x', 'float', ['M', k]);
  const ms = { domain: 'com.microsoft' };
  if (kernel.includes('MatMulNBits')) {
    const bits = kernel.startsWith('int4') ? 4 : 8;
    const q = quantizeNBits(wt, n, k, bits);
    const packed = g.init('w', 'uint8', [n, q.kBlocks, (BLOCK * bits) / 8], q.packed);
    const scales = g.init('s', 'float', [n * q.kBlocks], q.scales);
    const zp = q.zeroPoints ? g.init('zp', 'uint8', [q.zeroPoints.length], q.zeroPoints) : '';
    g.op('MatMulNBits', zp ? [x, packed, scales, zp] : [x, packed, scales], { K: k, N: n, bits, block_size: BLOCK, accuracy_level: kernel.endsWith('acc 1') ? 1 : 4 }, { ...ms, out: 'y' });
  } else if (kernel === 'int8 DynamicQuantizeMatMul') {
    const { q, scales } = quantizeChannels(wt, n, k);
    g.op('DynamicQuantizeMatMul', [x, g.init('w', 'int8', [k, n], q), g.floatInit('s', [n], scales)], {}, { ...ms, out: 'y' });
  } else if (kernel === 'int8 MatMulInteger (unfused)') {
    const { q, scales } = quantizeChannels(wt, n, k);
    const [xq, xs, xz] = [g.name('xq'), g.name('xs'), g.name('xz')];
    g.opMulti('DynamicQuantizeLinear', [x], [xq, xs, xz]);
    const acc = g.op('MatMulInteger', [xq, g.init('w', 'int8', [k, n], q), xz]);
    g.op('Mul', [g.op('Cast', [acc], { to: 1 }), g.op('Mul', [xs, g.floatInit('s', [n], scales)])], undefined, { out: 'y' });
  } else if (kernel === 'w8a8 MatMulIntegerToFloat, rows quantized alone') {
    g.op('Identity', [emitLinear(g, x, 'w', prepareLinear({ w: wt, n, k }, 'w8a8'))], undefined, { out: 'y' });
  } else {
    g.op('MatMul', [x, g.floatInit('w', [k, n], w)], undefined, { out: 'y' });
  }
  g.output('y', 'float', ['M', n]);
  const bytes = encodeModel({ name: 'kernel', nodes: g.nodes, initializers: g.initializers, inputs: g.inputs, outputs: g.outputs }, { opset: 23, msOpset: 1, producer: 'loraplex-bench' });
  return Session.create(bytes, { device: 'cpu', allowCpuFallback: false, threads });
}

/** The clock the cores run at (the highest `cpu MHz` in /proc/cpuinfo), GHz. */
function clockGHz(): number {
  try {
    const mhz = [...readFileSync('/proc/cpuinfo', 'utf8').matchAll(/^cpu MHz\s*:\s*([\d.]+)/gm)].map((m) => Number(m[1]));
    if (mhz.length > 0) return Math.max(...mhz) / 1000;
  } catch {
    // not Linux: fall through
  }
  return 2.3;
}

export async function kernelsBench(ctx: BenchContext): Promise<KernelsResult> {
  const { modelDir, name } = await prepareModel(ctx);
  const ckpt = Checkpoint.open(modelDir);
  const spec = ckpt.spec;
  ckpt.close();
  const cores = availableCores().count;
  const ghz = clockGHz();
  const peakTops = (cores * ghz * 1e9 * 64 * 2) / 1e12;
  const rowsList = ctx.quick ? [1, 8, 128] : [1, 8, 32, 128, 512, 2048];
  const reps = ctx.quick ? 2 : 5;
  const shapes = layerShapes(spec);
  const bar = progressBar('kernels');
  const cells: KernelsResult['cells'] = [];
  let done = 0;
  for (const kernel of KERNELS) {
    const sessions = await Promise.all(shapes.map(([k, n]) => kernelSession(kernel, k, n, cores)));
    for (const rows of rowsList) {
      bar(done++, KERNELS.length * rowsList.length, `${kernel} at ${rows} rows`);
      const feeds = shapes.map(([k]) => ({ x: tensor('float32', random(rows * k, rows + k), [rows, k]) }));
      const t = await interleaved(Object.fromEntries(sessions.map((s, i) => [String(i), () => s.run(feeds[i], ['y'])])), { rounds: reps, warmup: 1 });
      const ms = Object.values(t).reduce((a, v) => a + v.min, 0);
      const ops = shapes.reduce((sum, [k, n]) => sum + 2 * rows * k * n, 0);
      const tops = ops / (ms / 1000) / 1e12;
      cells.push({ kernel, rows, tops, ofPeak: 0 });
    }
    for (const s of sessions) await s.release();
  }
  // The best int8 GEMM onnxruntime does here: a large square product.
  const big = ctx.quick ? 1024 : 2048;
  const square = await kernelSession('int8 DynamicQuantizeMatMul', big, big, cores);
  const xs = { x: tensor('float32', random(big * big, 7), [big, big]) };
  const sq = await interleaved({ s: () => square.run(xs, ['y']) }, { rounds: reps, warmup: 1 });
  await square.release();
  // (A small machine or a quick run may do better on the layer shapes than on the square: the peak is the best seen.)
  const measuredInt8Tops = Math.max((2 * big ** 3) / (sq.s.min / 1000) / 1e12, ...cells.filter((c) => c.kernel.startsWith('int8')).map((c) => c.tops));
  for (const c of cells) c.ofPeak = c.tops / measuredInt8Tops;
  bar.stop();
  const markdown = [
    `### Matmul kernels (${name}, one layer's projections ${shapes.map(([k, n]) => `${k}→${n}`).join(', ')}; ${cores} threads)`,
    '',
    `int8 peak, measured (the best int8 kernel, the layer shapes above or a ${big}³ DynamicQuantizeMatMul): **${fmt(measuredInt8Tops, 3)} TOPS**; one VNNI instruction per cycle per core at the reported clock ` +
      `(${cores} × ${fmt(ghz, 2)} GHz × 64 multiply-adds × 2) would be ${fmt(peakTops, 2)} TOPS.`,
    '',
    'TOPS (fraction of the measured int8 peak) by kernel and rows:',
    '',
    table(['kernel', ...rowsList.map(String)], KERNELS.map((kernel) => [kernel, ...rowsList.map((rows) => {
      const c = cells.find((x) => x.kernel === kernel && x.rows === rows)!;
      return `${fmt(c.tops, 3)} (${fmt(100 * c.ofPeak, 0)}%)`;
    })])),
  ].join('\n');
  return { peakTops, clockGHz: ghz, cores, measuredInt8Tops, cells, markdown };
}
