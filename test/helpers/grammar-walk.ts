/**
 * Random walks through a grammar over a real vocabulary: random allowed tokens until the grammar
 * completes — the stop token more and more often once allowed, and, late in long walks, tokens
 * that close strings, arrays and objects — so walks stay short and still cover the grammar.
 */
import { expect } from 'vitest';
import { applyTokenMask, type GrammarState } from '../../src/runtime/grammar/compiler.js';
import { prng } from '../../src/util/prng.js';

export interface WalkVocab {
  size: number;
  eos: number;
  decode(ids: number[]): string;
}

export function grammarWalker(vocab: WalkVocab) {
  const closingCache = new Map<number, boolean>();
  const closing = (id: number): boolean => {
    let c = closingCache.get(id);
    if (c === undefined) closingCache.set(id, (c = /[}\]"]/.test(vocab.decode([id]))));
    return c;
  };
  return async function walk(state: GrammarState, seed: number, maxTokens = 300): Promise<number[]> {
    const rand = prng(seed);
    const out: number[] = [];
    const logits = new Float32Array(vocab.size);
    for (let step = 0; step < maxTokens && !state.terminated; step++) {
      logits.fill(0);
      const allowed = applyTokenMask(logits, await state.mask());
      expect(allowed).toBeGreaterThan(0);
      const ids: number[] = [];
      for (let i = 0; i < logits.length; i++) if (logits[i] === 0) ids.push(i);
      const others = ids.filter((i) => i !== vocab.eos);
      const closers = step > maxTokens / 3 ? others.filter(closing) : [];
      const pool = closers.length > 0 && rand() < 0.5 ? closers : others;
      const id = ids.includes(vocab.eos) && (others.length === 0 || rand() < step / maxTokens) ? vocab.eos : pool[Math.floor(rand() * pool.length)];
      expect(state.accept(id)).toBe(true);
      if (id !== vocab.eos) out.push(id);
    }
    expect(state.terminated).toBe(true);
    return out;
  };
}
