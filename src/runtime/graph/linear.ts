/**
 * One linear projection y = x·Wᵀ (+ bias) in the chosen weight format, in two phases: `prepare`
 * converts the weight (transpose or quantize; the expensive part, which may run on a helper thread)
 * and `emitLinear` adds the initializers and the node.
 *
 * Every format is one entry of WEIGHT_FORMAT_TABLE, which the type system requires to cover every
 * WeightFormat: a format added to the list without its preparation, its node or its buffers does
 * not compile (there is no fallthrough to a default).
 *   fp32:  MatMul(x, Wᵀ [K, N])
 *   int8/int4: com.microsoft MatMulNBits, block 32, accuracy_level 4 (int8 activations: the fast CPU
 *              path), or 1 (fp32 activations) when the projection asks for fp32 compute
 *   w8a8:  int8 weights per output channel, and each row of x quantized to int8 on its own (scale =
 *          its max |x| / 127) by QuantizeLinear, so a token's codes never depend on the other tokens
 *          of its step; com.microsoft MatMulIntegerToFloat (onnxruntime's VNNI integer GEMM, exact
 *          int32 accumulation) scales the columns, a Mul the rows. Unsigned codes with zero point
 *          128: signed-by-signed has no fast path (~10× slower). The fast format for prefill-sized
 *          steps; outlier channels in real activations cost it more accuracy than the per-block
 *          int8 format
 *   nf4:   com.microsoft MatMulBnb4 (what QLoRA trains against; much slower on CPU), fed at least
 *          2 rows: it dequantizes and runs a plain SGEMM, whose one-row kernel rounds differently,
 *          so a lone token would get other bits than the same token in a larger step
 */
import type { GraphBuilder } from './graph-builder.js';
import { BLOCK, quantizeChannels, quantizeNBits, quantizeNf4, type ChannelInt8Weight, type NBitsWeight, type Nf4Weight, type WeightFormat } from './quant.js';

export interface LinearWeight {
  /** [N out, K in], Hugging Face Linear layout */
  w: Float32Array;
  n: number;
  k: number;
  bias?: Float32Array | null;
}

export type PreparedLinear = { n: number; k: number; bias: Float32Array | null } & (
  | { format: 'fp32'; t: Float32Array }
  | { format: 'nf4'; q: Nf4Weight }
  | { format: 'int8'; q: NBitsWeight }
  | { format: 'int4'; q: NBitsWeight }
  | { format: 'w8a8'; q: ChannelInt8Weight }
);

type PreparedOf<F extends WeightFormat> = Extract<PreparedLinear, { format: F }>;

interface WeightFormatImpl<F extends WeightFormat> {
  /** Converts the weight (runs on a helper thread for large models). */
  prepare(weight: LinearWeight, format: F): PreparedOf<F>;
  /** Adds the initializers and the node computing x·Wᵀ (+ bias); returns the output's name. */
  emit(g: GraphBuilder, x: string, name: string, p: PreparedOf<F>, bias: string | null, compute: LinearCompute): string;
  /** The buffers the prepared weight owns (transferred from a helper thread). */
  buffers(p: PreparedOf<F>): ArrayBufferLike[];
}

const withBias = (g: GraphBuilder, y: string, bias: string | null): string => (bias ? g.op('Add', [y, bias]) : y);

const nBits: WeightFormatImpl<'int8' | 'int4'> = {
  prepare: (weight, format) => ({ format, q: quantizeNBits(weight.w, weight.n, weight.k, format === 'int8' ? 8 : 4), n: weight.n, k: weight.k, bias: weight.bias ?? null }) as PreparedOf<'int8' | 'int4'>,
  emit: (g, x, name, { n, k, q }, bias, compute) => {
    const packed = g.init(`${name}.q${q.bits}`, 'uint8', [n, q.kBlocks, (BLOCK * q.bits) / 8], q.packed);
    const scales = g.floatInit(`${name}.scales`, [n * q.kBlocks], q.scales);
    const zp = q.zeroPoints ? g.init(`${name}.zp`, 'uint8', [q.zeroPoints.length], q.zeroPoints) : '';
    const inputs = [x, packed, scales, zp, '', bias ?? ''];
    while (inputs[inputs.length - 1] === '') inputs.pop();
    return g.op('MatMulNBits', inputs, { K: k, N: n, bits: q.bits, block_size: BLOCK, accuracy_level: compute === 'int8' ? 4 : 1 }, { domain: 'com.microsoft' });
  },
  buffers: ({ q }) => [q.packed.buffer, q.scales.buffer, ...(q.zeroPoints ? [q.zeroPoints.buffer] : [])],
};

/**
 * Each row of x [T, K] quantized on its own: uint8 codes (zero point 128) and the row scales
 * [T, 1]. A row of zeros gets a tiny scale rather than 0 (its codes are all 128).
 */
function quantizeRows(g: GraphBuilder, x: string, k: number): { codes: string; scale: string } {
  const amax = g.op('ReduceMax', [g.op('Abs', [x]), g.const64([-1])], { keepdims: 1 });
  const scale = g.op('Mul', [g.op('Max', [amax, g.sharedInit('w8a8.tiny', 'float', [], () => new Float32Array([1e-30]))]), g.sharedInit('w8a8.inv127', 'float', [], () => new Float32Array([1 / 127]))]);
  const zp = g.op('Expand', [g.sharedInit('w8a8.zp_row', 'uint8', [1, 1], () => new Uint8Array([128])), g.op('Shape', [scale])]);
  // Blocked quantization with one block per row: the scale stays [T, 1] for the Mul after the GEMM.
  return { codes: g.op('QuantizeLinear', [x, scale, zp], { axis: 1, block_size: k }), scale };
}

export const WEIGHT_FORMAT_TABLE: { [F in WeightFormat]: WeightFormatImpl<F> } = {
  fp32: {
    prepare: ({ w, n, k, bias }) => {
      const t = new Float32Array(k * n);
      for (let row = 0; row < n; row++) for (let col = 0; col < k; col++) t[col * n + row] = w[row * k + col];
      return { format: 'fp32', t, n, k, bias: bias ?? null };
    },
    emit: (g, x, name, { n, k, t }, bias) => withBias(g, g.op('MatMul', [x, g.floatInit(`${name}.weight`, [k, n], t)]), bias),
    buffers: ({ t }) => [t.buffer],
  },
  nf4: {
    prepare: ({ w, n, k, bias }) => ({ format: 'nf4', q: quantizeNf4(w, n, k), n, k, bias: bias ?? null }),
    emit: (g, x, name, { n, k, q }, bias) => {
      const packed = g.init(`${name}.nf4`, 'uint8', [q.packed.length], q.packed);
      const absmax = g.floatInit(`${name}.absmax`, [q.absmax.length], q.absmax);
      // [T + 1, k]: one zero row more, sliced off again, so the SGEMM never sees a single row.
      const padded = g.op('Concat', [x, g.floatInit(`${name}.pad_row`, [1, k], new Float32Array(k))], { axis: 0 });
      const y = g.op('MatMulBnb4', [padded, packed, absmax], { K: k, N: n, block_size: BLOCK, quant_type: 1 }, { domain: 'com.microsoft' });
      const rows = g.op('Shape', [x], { start: 0, end: 1 });
      return withBias(g, g.op('Slice', [y, g.const64([0]), rows, g.const64([0])]), bias);
    },
    buffers: ({ q }) => [q.packed.buffer, q.absmax.buffer],
  },
  int8: nBits as WeightFormatImpl<'int8'>,
  int4: nBits as WeightFormatImpl<'int4'>,
  w8a8: {
    prepare: ({ w, n, k, bias }) => ({ format: 'w8a8', q: quantizeChannels(w, n, k), n, k, bias: bias ?? null }),
    emit: (g, x, name, { n, k, q }, bias) => {
      const { codes, scale } = quantizeRows(g, x, k);
      const inputs = [codes, g.init(`${name}.q8`, 'int8', [k, n], q.q), g.sharedInit('w8a8.one', 'float', [], () => new Float32Array([1])), g.init(`${name}.scales`, 'float', [n], q.scales), g.sharedInit('w8a8.zp', 'uint8', [], () => new Uint8Array([128]))];
      const y = g.op('MatMulIntegerToFloat', inputs, {}, { domain: 'com.microsoft' });
      return withBias(g, g.op('Mul', [y, scale]), bias);
    },
    buffers: ({ q }) => [q.q.buffer, q.scales.buffer],
  },
};

/** The table's entry for a prepared weight (one cast: TypeScript cannot correlate the two unions). */
const implOf = (format: WeightFormat): WeightFormatImpl<WeightFormat> => WEIGHT_FORMAT_TABLE[format] as unknown as WeightFormatImpl<WeightFormat>;

/**
 * The lm_head's format: w8a8 models keep it in per-block int8 (MatMulNBits, the same bytes), so its
 * compute precision stays a choice (int8 activations per block of 32, or fp32).
 */
export function lmHeadFormat(weights: WeightFormat): WeightFormat {
  return weights === 'w8a8' ? 'int8' : weights;
}

/** Converts a weight for its format: Wᵀ for fp32, quantized blocks otherwise. */
export function prepareLinear(weight: LinearWeight, format: WeightFormat): PreparedLinear {
  return implOf(format).prepare(weight, format);
}

/**
 * Which precision a quantized projection computes in: 'int8' quantizes its input per block (the
 * fast CPU path), 'fp32' does not. Only MatMulNBits (int4/int8 weights) has the choice; w8a8
 * always quantizes its input (per row).
 */
export type LinearCompute = 'int8' | 'fp32';

export function emitLinear(g: GraphBuilder, x: string, name: string, p: PreparedLinear, compute: LinearCompute = 'int8'): string {
  const bias = p.bias ? g.floatInit(`${name}.bias`, [p.n], p.bias) : null;
  return implOf(p.format).emit(g, x, name, p, bias, compute);
}

/** Every buffer a prepared weight owns, once each. */
export function preparedBuffers(p: PreparedLinear): ArrayBuffer[] {
  return [...new Set([...(p.bias ? [p.bias.buffer] : []), ...implOf(p.format).buffers(p)])] as ArrayBuffer[];
}
