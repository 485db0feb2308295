/**
 * AdapterSlots step by step with two slots: which adapter sits where after every call, pins that
 * keep an adapter in place, least-recently-used eviction of unpinned ones, the last slot moving into
 * a freed hole, and refusals.
 */
import { describe, expect, it } from 'vitest';
import { AdapterSlots } from '../../src/adapters/slots.js';
import { parseModelSpec } from '../../src/runtime/arch/families.js';
import { LoraStacks, factorKey, type LoraWeights } from '../../src/runtime/lora-stacks.js';

const spec = parseModelSpec({ architectures: ['LlamaForCausalLM'], hidden_size: 8, num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 1, intermediate_size: 16, vocab_size: 10 });

function weights(tag: number, bad = false): LoraWeights {
  const a = new Float32Array(8 * 2).fill(tag);
  const b = new Float32Array(2 * 8).fill(bad ? NaN : tag);
  return { factors: new Map([[factorKey(0, 'q_proj'), { rank: 2, a, b }]]), maxRank: 2, bytes: a.byteLength + b.byteLength };
}

const host = new Map(['a', 'b', 'c', 'd'].map((k, i) => [k, weights(i + 1)]));
host.set('bad', weights(9, true));
const get = (k: string) => host.get(k);

/** The tag of the adapter in each slot, read from the stacks themselves. */
function stackTags(stacks: LoraStacks): number[] {
  const q = [...stacks.views()].find((v) => v.projection === 'q_proj')!;
  const per = q.aDims[1] * q.aDims[2];
  return Array.from({ length: q.aDims[0] }, (_, s) => q.a[s * per]);
}

describe('AdapterSlots', () => {
  it('fills, evicts the least recently used unpinned adapter, keeps pinned ones, moves the last slot into a hole', () => {
    const stacks = new LoraStacks(spec, 2, 8, false);
    const t = new AdapterSlots(stacks);
    expect(t.acquire(['a'], get).size).toBe(0);
    expect(t.occupants()).toEqual(['a']);
    // b loads into the free slot, then moves to slot 0: the step uses b alone.
    t.acquire(['b'], get);
    expect(t.occupants()).toEqual(['b', 'a']);
    expect(stackTags(stacks)).toEqual([2, 1]);
    expect(t.loads).toBe(2);
    // a is used again (moved back, not reloaded): b is now the least recently used.
    t.acquire(['a'], get);
    expect(t.loads).toBe(2);
    expect(t.occupants()).toEqual(['a', 'b']);
    t.acquire(['c'], get);
    expect(t.occupants()).toEqual(['c', 'a']);
    expect(stackTags(stacks)).toEqual([3, 1]);
    // Pinned a stays even though it is older; c goes.
    t.pin('a');
    t.acquire(['c'], get);
    t.acquire(['d'], get);
    expect(t.occupants()).toEqual(['d', 'a']);
    expect(stackTags(stacks)).toEqual([4, 1]);
    expect(t.isPinned('a')).toBe(true);
    // Both pinned: a third adapter has nowhere to go.
    t.pin('d');
    expect(() => t.acquire(['b'], get)).toThrow(/all adapter slots are pinned/);
    expect(t.occupants()).toEqual(['d', 'a']);
    // Pins count: two pins need two unpins.
    t.pin('a');
    t.unpin('a');
    expect(t.isPinned('a')).toBe(true);
    t.unpin('a');
    expect(t.isPinned('a')).toBe(false);
    // remove() refuses a pinned adapter; removing slot 0 moves the last slot's adapter into it.
    expect(t.remove('d')).toBe(false);
    t.unpin('d');
    expect(t.remove('d')).toBe(true);
    expect(t.occupants()).toEqual(['a']);
    expect(t.slotOf('a')).toBe(0);
    expect(stackTags(stacks)).toEqual([1]);
    expect(t.slotOf('d')).toBeUndefined();
  });

  it('refuses weights that are not finite, leaving the slots as they were', () => {
    const stacks = new LoraStacks(spec, 2, 8, false);
    const t = new AdapterSlots(stacks);
    t.acquire(['a'], get);
    const refused = t.acquire(['bad', 'b'], get);
    expect([...refused.keys()]).toEqual(['bad']);
    expect(refused.get('bad')!.code).toBe('adapter_invalid');
    expect(t.occupants()).toEqual(['b', 'a']);
    expect(stackTags(stacks)).toEqual([2, 1]);
  });

  it("puts a step's adapters in the lowest slots, so the graph reads no other adapter's stacks", () => {
    // The graph runs the LoRA groups of slots 0..U-1, U = the highest slot a row uses + 1: an
    // adapter left in a low slot by earlier traffic must not make a lone row's step pay for it.
    const stacks = new LoraStacks(spec, 3, 8, false);
    const t = new AdapterSlots(stacks);
    t.acquire(['a', 'b', 'c'], get);
    expect(t.occupants()).toEqual(['a', 'b', 'c']);
    t.acquire(['c'], get);
    expect(t.slotOf('c')).toBe(0);
    expect(stackTags(stacks)[0]).toBe(3);
    t.acquire(['b', 'c'], get);
    expect([t.slotOf('b'), t.slotOf('c')].sort()).toEqual([0, 1]);
    expect(t.occupants()[2]).toBe('a');
    expect(stackTags(stacks)).toEqual(t.occupants().map((k) => ({ a: 1, b: 2, c: 3 })[k]));
    // A new adapter also lands low: d evicts the least recently used (a), then takes slot 0.
    t.acquire(['d'], get);
    expect(t.slotOf('d')).toBe(0);
    expect(stackTags(stacks)).toEqual(t.occupants().map((k) => ({ b: 2, c: 3, d: 4 })[k]));
    // Already low: nothing moves.
    const [before, moves] = [t.occupants(), t.moves];
    expect(moves).toBe(2);
    t.acquire(['d'], get);
    expect(t.occupants()).toEqual(before);
    expect(t.moves).toBe(moves);
  });

  it('an adapter that is not in the host cache is an error (the loop loads before it places)', () => {
    const t = new AdapterSlots(new LoraStacks(spec, 2, 8, false));
    expect(() => t.acquire(['zzz'], get)).toThrow(/is not in the host cache/);
  });
});
