/**
 * One linear projection y = x·Wᵀ (+ bias) in the chosen weight format, in two phases: `prepare`
 * converts the weight (transpose or quantize; the expensive part, which may run on a helper thread)
 * and `emitLinear` adds the initializers and the node.
 *   fp32:  MatMul(x, Wᵀ [K, N])
 *   int8/int4: com.microsoft MatMulNBits, block 32, accuracy_level 4 (int8 activations: the fast CPU path)
 *   nf4:   com.microsoft MatMulBnb4 (what QLoRA trains against; much slower on CPU)
 */
import type { GraphBuilder } from './graph-builder.js';
import { BLOCK, quantizeNBits, quantizeNf4, type NBitsWeight, type Nf4Weight, type WeightFormat } from './quant.js';

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
  | { format: 'int8' | 'int4'; q: NBitsWeight }
);

/** Converts a weight for its format: Wᵀ for fp32, quantized blocks otherwise. */
export function prepareLinear(weight: LinearWeight, format: WeightFormat): PreparedLinear {
  const { w, n, k } = weight;
  const bias = weight.bias ?? null;
  if (format === 'fp32') {
    const t = new Float32Array(k * n);
    for (let row = 0; row < n; row++) for (let col = 0; col < k; col++) t[col * n + row] = w[row * k + col];
    return { format, t, n, k, bias };
  }
  if (format === 'nf4') return { format, q: quantizeNf4(w, n, k), n, k, bias };
  return { format, q: quantizeNBits(w, n, k, format === 'int8' ? 8 : 4), n, k, bias };
}

export function emitLinear(g: GraphBuilder, x: string, name: string, p: PreparedLinear): string {
  const { n, k } = p;
  const biasName = p.bias ? g.floatInit(`${name}.bias`, [n], p.bias) : null;
  let y: string;
  switch (p.format) {
    case 'fp32':
      y = g.op('MatMul', [x, g.floatInit(`${name}.weight`, [k, n], p.t)]);
      return biasName ? g.op('Add', [y, biasName]) : y;
    case 'nf4': {
      const packed = g.init(`${name}.nf4`, 'uint8', [p.q.packed.length], p.q.packed);
      const absmax = g.floatInit(`${name}.absmax`, [p.q.absmax.length], p.q.absmax);
      y = g.op('MatMulBnb4', [x, packed, absmax], { K: k, N: n, block_size: BLOCK, quant_type: 1 }, { domain: 'com.microsoft' });
      return biasName ? g.op('Add', [y, biasName]) : y;
    }
    default: {
      const { q } = p;
      const packed = g.init(`${name}.q${q.bits}`, 'uint8', [n, q.kBlocks, (BLOCK * q.bits) / 8], q.packed);
      const scales = g.floatInit(`${name}.scales`, [n * q.kBlocks], q.scales);
      const zp = q.zeroPoints ? g.init(`${name}.zp`, 'uint8', [q.zeroPoints.length], q.zeroPoints) : '';
      const inputs = [x, packed, scales, zp, '', biasName ?? ''];
      while (inputs[inputs.length - 1] === '') inputs.pop();
      return g.op('MatMulNBits', inputs, { K: k, N: n, bits: q.bits, block_size: BLOCK, accuracy_level: 4 }, { domain: 'com.microsoft' });
    }
  }
}
