/** Weight quantization: round trips within the formats' error, and the packing layouts the kernels read. */
import { describe, expect, it } from 'vitest';
import { NF4_CODE, dequantizeNBits, dequantizeNf4, quantizeNBits, quantizeNf4 } from '../../src/runtime/graph/quant.js';
import { prng, randn } from '../helpers/tiny-model.js';

function relRms(a: Float32Array, b: Float32Array): number {
  let e = 0;
  let s = 0;
  for (let i = 0; i < a.length; i++) {
    e += (a[i] - b[i]) ** 2;
    s += b[i] ** 2;
  }
  return Math.sqrt(e / s);
}

describe('quantization', () => {
  const n = 64;
  const k = 96; // three blocks of 32
  const w = randn(prng(9), n * k, 0.05);

  it('int8 (symmetric), int4 (asymmetric, fitted range) and nf4 round-trip within their error', () => {
    expect(relRms(dequantizeNBits(quantizeNBits(w, n, k, 8), n, k), w)).toBeLessThan(0.01);
    expect(relRms(dequantizeNBits(quantizeNBits(w, n, k, 4), n, k), w)).toBeLessThan(0.09);
    expect(relRms(dequantizeNf4(quantizeNf4(w, n, k), n, k), w)).toBeLessThan(0.1);
  });

  it('packs 4-bit values low nibble first (MatMulNBits) and NF4 high nibble first (MatMulBnb4)', () => {
    const row = new Float32Array(32);
    row[0] = -1; // lowest code in the block
    row[1] = 1; // highest
    const q4 = quantizeNBits(row, 1, 32, 4);
    // element 0 (negative) in the low nibble, element 1 (positive) in the high one
    expect(q4.packed[0] & 0x0f).toBeLessThan(q4.packed[0] >> 4);
    const back = dequantizeNBits(q4, 1, 32);
    expect(back[0]).toBeLessThan(-0.8);
    expect(back[1]).toBeGreaterThan(0.8);
    const nf = quantizeNf4(row, 1, 32);
    expect(nf.packed[0] >> 4).toBe(0); // -1 → code 0, first element in the high nibble
    expect(nf.packed[0] & 0x0f).toBe(15);
    expect(NF4_CODE[7]).toBe(0);
  });

  it('pads a last partial block with the zero point, so K need not be a multiple of 32', () => {
    const odd = randn(prng(3), 4 * 40, 1);
    const back = dequantizeNBits(quantizeNBits(odd, 4, 40, 8), 4, 40);
    expect(relRms(back, odd)).toBeLessThan(0.01);
  });
});
