/** Rotary tables: inverse frequencies per scaling, LongRoPE's switch at the original context, Gemma 3's sliding-layer base. */
import { describe, expect, it } from 'vitest';
import { parseModelSpec } from '../../../src/runtime/arch/families.js';
import { GEMMA_FAMILY, type GemmaSpec } from '../../../src/runtime/arch/gemma.js';
import { ropeInvFreq, rotaryTable, type Rope } from '../../../src/runtime/arch/rope.js';

const plain: Rope = { ropeTheta: 10000, rotaryDim: 4, ropeScaling: null };

describe('rope', () => {
  it('inverse frequencies are theta^(-2i/rotaryDim), divided as the scaling says', () => {
    expect([...ropeInvFreq(plain)]).toEqual([1, 0.01]);
    expect([...ropeInvFreq({ ...plain, ropeScaling: { ropeType: 'linear', factor: 4 } })]).toEqual([0.25, 0.0025]);
    // Llama 3 (original context 64): short wavelengths are kept, long ones divided by the factor.
    const llama3 = ropeInvFreq({ ...plain, ropeScaling: { ropeType: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 64 } });
    expect(llama3[0]).toBe(1); // wavelength 2π < 64 / 4: kept
    expect(llama3[1]).toBeCloseTo(0.01 / 8, 15); // wavelength 200π > 64: divided by the factor
  });

  it('LongRoPE: short factors within the original context, long ones past it, both scaled by the attention factor', () => {
    const rope: Rope = { ...plain, ropeScaling: { ropeType: 'longrope', shortFactor: [1, 2], longFactor: [4, 8], originalMaxPositionEmbeddings: 3, attentionFactor: 0.5 } };
    const { cos, sin, half } = rotaryTable(rope, 5);
    expect(half).toBe(2);
    const at = (pos: number, i: number): [number, number] => [cos[pos * half + i], sin[pos * half + i]];
    expect(at(2, 1)[1]).toBeCloseTo(0.5 * Math.sin((2 * 0.01) / 2), 7);
    expect(at(3, 0)[0]).toBeCloseTo(0.5 * Math.cos(3 / 4), 7);
    expect(at(4, 1)[1]).toBeCloseTo(0.5 * Math.sin((4 * 0.01) / 8), 7);
  });

  it("Gemma 3's sliding layers rotate with rope_local_base_freq and no scaling; Gemma 2's with the model's", () => {
    const cfg = { hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, head_dim: 16, intermediate_size: 96, vocab_size: 100 };
    const g3 = parseModelSpec({ ...cfg, architectures: ['Gemma3ForCausalLM'], rope_local_base_freq: 500, rope_scaling: { rope_type: 'linear', factor: 8 } }) as GemmaSpec;
    expect(GEMMA_FAMILY.slidingRope?.(g3)).toEqual({ ropeTheta: 500, rotaryDim: 16, ropeScaling: null });
    const g2 = parseModelSpec({ ...cfg, architectures: ['Gemma2ForCausalLM'] }) as GemmaSpec;
    expect(GEMMA_FAMILY.slidingRope?.(g2)).toBeNull();
    expect(GEMMA_FAMILY.finalLogitSoftcap?.(g2)).toBe(30);
  });
});
