/**
 * Emits one linear projection y = x·Wᵀ (+ bias) in the chosen weight format.
 *   fp32:  MatMul(x, Wᵀ [K, N])
 *   int8/int4: com.microsoft MatMulNBits, block 32, accuracy_level 4 (int8 activations: the fast CPU path)
 *   nf4:   com.microsoft MatMulBnb4 (what QLoRA trains against; much slower on CPU)
 */
import type { GraphBuilder } from './graph-builder.js';
import { BLOCK, quantizeNBits, quantizeNf4, type WeightFormat } from './quant.js';

export interface LinearWeight {
  /** [N out, K in], Hugging Face Linear layout */
  w: Float32Array;
  n: number;
  k: number;
  bias?: Float32Array | null;
}

export function emitLinear(g: GraphBuilder, x: string, name: string, weight: LinearWeight, format: WeightFormat): string {
  const { w, n, k, bias } = weight;
  let y: string;
  const biasName = bias ? g.floatInit(`${name}.bias`, [n], bias) : null;
  if (format === 'fp32') {
    const t = new Float32Array(k * n);
    for (let row = 0; row < n; row++) for (let col = 0; col < k; col++) t[col * n + row] = w[row * k + col];
    y = g.op('MatMul', [x, g.floatInit(`${name}.weight`, [k, n], t)]);
    if (biasName) y = g.op('Add', [y, biasName]);
    return y;
  }
  if (format === 'nf4') {
    const q = quantizeNf4(w, n, k);
    const packed = g.init(`${name}.nf4`, 'uint8', [q.packed.length], q.packed);
    const absmax = g.floatInit(`${name}.absmax`, [q.absmax.length], q.absmax);
    y = g.op('MatMulBnb4', [x, packed, absmax], { K: k, N: n, block_size: BLOCK, quant_type: 1 }, { domain: 'com.microsoft' });
    if (biasName) y = g.op('Add', [y, biasName]);
    return y;
  }
  const bits = format === 'int8' ? 8 : 4;
  const q = quantizeNBits(w, n, k, bits);
  const packed = g.init(`${name}.q${bits}`, 'uint8', [n, q.kBlocks, (BLOCK * bits) / 8], q.packed);
  const scales = g.floatInit(`${name}.scales`, [n * q.kBlocks], q.scales);
  const zp = q.zeroPoints ? g.init(`${name}.zp`, 'uint8', [q.zeroPoints.length], q.zeroPoints) : '';
  const inputs = [x, packed, scales, zp, '', biasName ?? ''];
  while (inputs[inputs.length - 1] === '') inputs.pop();
  return g.op('MatMulNBits', inputs, { K: k, N: n, bits, block_size: BLOCK, accuracy_level: 4 }, { domain: 'com.microsoft' });
}
