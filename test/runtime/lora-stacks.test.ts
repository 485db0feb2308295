/** The slot stacks: contiguous occupancy, move-last-into-hole, rank repacking, refusals. */
import { describe, expect, it } from 'vitest';
import { RuntimeLimitError } from '../../src/runtime/limit-error.js';
import { parseModelSpec } from '../../src/runtime/arch/families.js';
import { LoraStacks, factorKey, type LoraWeights } from '../../src/runtime/lora-stacks.js';

const spec = parseModelSpec({
  architectures: ['LlamaForCausalLM'], hidden_size: 8, num_hidden_layers: 1, num_attention_heads: 2,
  num_key_value_heads: 1, intermediate_size: 16, vocab_size: 10,
});

/** An adapter with only q_proj, every A entry = `tag`, every B entry = `tag` * 10. */
function adapter(tag: number, rank: number): LoraWeights {
  const a = new Float32Array(8 * rank).fill(tag);
  const b = new Float32Array(rank * 8).fill(tag * 10);
  return { factors: new Map([[factorKey(0, 'q_proj'), { rank, a, b }]]), maxRank: rank, bytes: a.byteLength + b.byteLength };
}

function qView(slots: LoraStacks) {
  return [...slots.views()].find((v) => v.projection === 'q_proj')!;
}

describe('LoraStacks', () => {
  it('fills slots 0..n-1, pads ranks to the stride and zeroes untargeted projections', () => {
    const s = new LoraStacks(spec, 3, 64, false);
    expect(s.load(adapter(1, 2))).toBe(0);
    expect(s.load(adapter(2, 4))).toBe(1);
    expect(s.rank).toBe(8);
    const q = qView(s);
    expect(q.aDims).toEqual([2, 8, 8]);
    expect(q.bDims).toEqual([2, 8, 8]);
    // slot 1, input row 3: 4 values of 2 then zero padding up to R=8
    expect(Array.from(q.a.subarray(8 * 8 + 3 * 8, 8 * 8 + 4 * 8))).toEqual([2, 2, 2, 2, 0, 0, 0, 0]);
    // slot 0's B: 2 rank rows of 10, then zero rows
    expect(q.b[0]).toBe(10);
    expect(q.b[2 * 8]).toBe(0);
    const o = [...s.views()].find((v) => v.projection === 'o_proj')!;
    expect(o.a.every((x) => x === 0)).toBe(true);
  });

  it('moves the last slot into a hole and shrinks the stride when the big rank leaves', () => {
    const s = new LoraStacks(spec, 3, 64, false);
    s.load(adapter(1, 2));
    s.load(adapter(2, 16));
    s.load(adapter(3, 4));
    expect(s.rank).toBe(16);
    expect(s.unload(0)).toBe(2);
    expect(s.count).toBe(2);
    expect(qView(s).a[0]).toBe(3);
    expect(s.unload(1)).toBeNull();
    expect(s.rank).toBe(8);
    expect(qView(s).aDims).toEqual([1, 8, 8]);
    expect(qView(s).a[0]).toBe(3);
    expect(s.unload(0)).toBeNull();
    expect(qView(s).aDims).toEqual([0, 8, 0]);
  });

  it('holds DoRA scales minus one per slot (exactly 0 for LoRA slots and untargeted projections), moved with their slot', () => {
    const s = new LoraStacks(spec, 3, 64, false);
    const dora = (tag: number): LoraWeights => {
      const w = adapter(tag, 2);
      const f = w.factors.get(factorKey(0, 'q_proj'))!;
      return { ...w, factors: new Map([[factorKey(0, 'q_proj'), { ...f, doraScale: new Float32Array(8).fill(1 + tag / 8) }]]) };
    };
    s.load(dora(1));
    s.load(adapter(2, 2));
    s.load(dora(4));
    const q = qView(s);
    expect(q.gDims).toEqual([3, 8]);
    expect(Array.from(q.g)).toEqual([...Array(8).fill(0.125), ...Array(8).fill(0), ...Array(8).fill(0.5)]);
    expect([...s.views()].find((v) => v.projection === 'o_proj')!.g.every((x) => x === 0)).toBe(true);
    expect([0, 1, 2].map((i) => s.isDora(i))).toEqual([true, false, true]);
    s.unload(1);
    expect([0, 1, 2].map((i) => s.isDora(i))).toEqual([true, true, false]);
    s.unload(0);
    expect(Array.from(qView(s).g)).toEqual([...Array(8).fill(0.5)]);
    s.load(adapter(2, 2));
    expect(Array.from(qView(s).g)).toEqual([...Array(8).fill(0.5), ...Array(8).fill(0)]);
    expect([0, 1].map((i) => s.isDora(i))).toEqual([true, false]);
    // A scale whose g − 1 is not finite in float16 is refused before it enters a slot.
    const half = new LoraStacks(spec, 1, 64, true);
    const big = dora(1);
    big.factors.get(factorKey(0, 'q_proj'))!.doraScale![2] = 70000;
    expect(() => half.load(big)).toThrow(/DoRA scale − 1\) holds 69999 at index 2/);
  });

  it('swaps two slots: A, B, DoRA scales and the DoRA flag move together, in both stack dtypes', () => {
    for (const half of [false, true]) {
      const s = new LoraStacks(spec, 3, 64, half);
      const w = adapter(2, 2);
      const f = w.factors.get(factorKey(0, 'q_proj'))!;
      s.load(adapter(1, 2));
      s.load({ ...w, factors: new Map([[factorKey(0, 'q_proj'), { ...f, doraScale: new Float32Array(8).fill(1.5) }]]) });
      s.load(adapter(3, 2));
      const before = qView(s);
      const slot = (v: ReturnType<typeof qView>, i: number) => [v.a.slice(i * 64, (i + 1) * 64), v.b.slice(i * 64, (i + 1) * 64), v.g.slice(i * 8, (i + 1) * 8)];
      const [s0, s1, s2] = [0, 1, 2].map((i) => slot(before, i));
      const version = s.version;
      s.swap(0, 1);
      expect(s.version).toBeGreaterThan(version);
      const after = qView(s);
      expect(slot(after, 0)).toEqual(s1);
      expect(slot(after, 1)).toEqual(s0);
      expect(slot(after, 2)).toEqual(s2);
      expect([0, 1, 2].map((i) => s.isDora(i))).toEqual([true, false, false]);
      // The moved slots unload like any other: the last slot moves into the hole, and slot 0 (tag 2, DoRA) stays whole.
      s.unload(1);
      expect(slot(qView(s), 0)).toEqual(s1);
      expect(slot(qView(s), 1)).toEqual(s2);
      expect([0, 1].map((i) => s.isDora(i))).toEqual([true, false]);
      expect(() => s.swap(0, 2)).toThrow(/slot 2 is not loaded/);
    }
  });

  it('refuses a full set of slots and a rank above the maximum', () => {
    const s = new LoraStacks(spec, 1, 8, false);
    s.load(adapter(1, 8));
    expect(() => s.load(adapter(2, 2))).toThrow(RuntimeLimitError);
    expect(() => new LoraStacks(spec, 1, 8, false).load(adapter(1, 9))).toThrow(/rank 9 is above the maximum LoRA rank 8/);
  });
});
