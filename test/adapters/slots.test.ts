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
    t.acquire(['b'], get);
    expect(t.occupants()).toEqual(['a', 'b']);
    expect(stackTags(stacks)).toEqual([1, 2]);
    expect(t.loads).toBe(2);
    // a is used again: b is now the least recently used.
    t.acquire(['a'], get);
    expect(t.loads).toBe(2);
    t.acquire(['c'], get);
    expect(t.occupants()).toEqual(['a', 'c']);
    expect(stackTags(stacks)).toEqual([1, 3]);
    // Pinned a stays even though it is older; c goes.
    t.pin('a');
    t.acquire(['c'], get);
    t.acquire(['d'], get);
    expect(t.occupants()).toEqual(['a', 'd']);
    expect(t.isPinned('a')).toBe(true);
    // Both pinned: a third adapter has nowhere to go.
    t.pin('d');
    expect(() => t.acquire(['b'], get)).toThrow(/all adapter slots are pinned/);
    expect(t.occupants()).toEqual(['a', 'd']);
    // Pins count: two pins need two unpins.
    t.pin('a');
    t.unpin('a');
    expect(t.isPinned('a')).toBe(true);
    t.unpin('a');
    expect(t.isPinned('a')).toBe(false);
    // remove() refuses a pinned adapter; removing slot 0 moves d (the last) into it.
    expect(t.remove('d')).toBe(false);
    expect(t.remove('a')).toBe(true);
    expect(t.occupants()).toEqual(['d']);
    expect(t.slotOf('d')).toBe(0);
    expect(stackTags(stacks)).toEqual([4]);
    expect(t.slotOf('a')).toBeUndefined();
  });

  it('refuses weights that are not finite, leaving the slots as they were', () => {
    const stacks = new LoraStacks(spec, 2, 8, false);
    const t = new AdapterSlots(stacks);
    t.acquire(['a'], get);
    const refused = t.acquire(['bad', 'b'], get);
    expect([...refused.keys()]).toEqual(['bad']);
    expect(refused.get('bad')!.code).toBe('adapter_invalid');
    expect(t.occupants()).toEqual(['a', 'b']);
    expect(stackTags(stacks)).toEqual([1, 2]);
  });

  it('an adapter that is not in the host cache is an error (the loop loads before it places)', () => {
    const t = new AdapterSlots(new LoraStacks(spec, 2, 8, false));
    expect(() => t.acquire(['zzz'], get)).toThrow(/is not in the host cache/);
  });
});
