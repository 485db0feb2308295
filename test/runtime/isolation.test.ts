/**
 * Rows of one step cannot reach each other: a slot whose LoRA stack holds Inf/NaN, and pool tokens
 * that hold NaN but belong to no row, leave every other row's logits bit-for-bit unchanged. (The
 * grouped LoRA pattern pads its groups, and attention pads each row's past; neither padding may
 * add anything to a real row.)
 */
import { afterAll, describe, expect, it } from 'vitest';
import { KV_BLOCK } from '../../src/runtime/kv-cache.js';
import type { DecoderModel, StepRow } from '../../src/runtime/model.js';
import { loadAdapter, loadTiny, logitsOf } from '../helpers/runtime.js';
import { makeTinyAdapter, makeTinyModel } from '../helpers/tiny-model.js';

const tm = makeTinyModel({ seed: 31, vocabSize: 96 });
const adapters = [0, 1, 2].map((i) => makeTinyAdapter(tm, { seed: 40 + i, r: 4 + 2 * i, bStd: 0.3 }));
const open: DecoderModel[] = [];
afterAll(async () => {
  for (const m of open) await m.close();
});

async function threeSlots(): Promise<DecoderModel> {
  const model = await loadTiny(tm, {}, { adapterSlots: 3, kvCacheTokens: 256 });
  open.push(model);
  for (const a of adapters) await loadAdapter(model, a);
  return model;
}

/** A step with a base row first (token 0: the grouped pattern's padding target), then every slot. */
function rowsFor(model: DecoderModel): StepRow[] {
  const rows: [number, number[]][] = [
    [-1, [5, 6, 7]],
    [0, [8, 9, 10, 11, 12]],
    [1, [13, 14]],
    [2, [15, 16, 17, 18]],
    [-1, [19]],
  ];
  return rows.map(([slot, tokens]) => ({ seq: model.newSequence(), tokens, slot, logits: 'all' as const }));
}

const poison = (a: Float32Array | Uint16Array, v: number): void => {
  (a as Float32Array).fill(v);
};

describe('row isolation inside one step', () => {
  it('Inf and NaN in one slot stack leave the other rows (base and other slots) unchanged', async () => {
    const model = await threeSlots();
    const clean = await model.step(rowsFor(model));
    const keep = [0, 1, 3, 4].map((r) => Array.from(logitsOf(clean, r)));
    // Poison slot 1 in place: every A entry Inf, every B entry NaN.
    for (const v of model.lora.views()) {
      const per = v.aDims[1] * v.aDims[2];
      poison(v.a.subarray(per, 2 * per), Infinity);
      const perB = v.bDims[1] * v.bDims[2];
      poison(v.b.subarray(perB, 2 * perB), NaN);
    }
    const dirty = await model.step(rowsFor(model));
    [0, 1, 3, 4].forEach((r, i) => expect(Array.from(logitsOf(dirty, r)), `row ${r}`).toEqual(keep[i]));
    expect(logitsOf(dirty, 2).some((x) => !Number.isFinite(x))).toBe(true);
  });

  it('NaN in pool tokens that belong to no row never reaches a row (ragged past, decode and prefill)', async () => {
    const run = async (poisonPool: boolean): Promise<number[][]> => {
      const model = await threeSlots();
      // z takes a block and leaves it with its values in place (stale tokens no row owns).
      const z = model.newSequence();
      await model.step([{ seq: z, tokens: [3], slot: -1, logits: 'none' }]);
      const zToken = z.indices[0];
      const a = model.newSequence();
      const b = model.newSequence();
      await model.step([
        { seq: a, tokens: [1, 2, 3, 4, 5, 6, 7, 8, 9], slot: 0, logits: 'none' },
        { seq: b, tokens: [10, 11], slot: -1, logits: 'none' },
      ]);
      model.freeSequence(z);
      if (poisonPool) {
        const owned = new Set([...a.indices.subarray(0, a.length), ...b.indices.subarray(0, b.length)]);
        expect(owned.has(zToken)).toBe(false);
        const d = model.kv.kvDim;
        for (let l = 0; l < model.spec.numLayers; l++) {
          // Every token but the rows' own and the null block (which nothing ever writes).
          for (let t = KV_BLOCK; t < model.kv.poolTokens; t++) {
            if (owned.has(t)) continue;
            model.kv.keys[l].fill(NaN as never, t * d, (t + 1) * d);
            model.kv.values[l].fill(NaN as never, t * d, (t + 1) * d);
          }
        }
      }
      const out = await model.step([
        { seq: a, tokens: [20], slot: 0, logits: 'last' },
        { seq: b, tokens: [21, 22, 23], slot: 2, logits: 'all' },
      ]);
      const rows = [Array.from(logitsOf(out, 0)), Array.from(out.logits.subarray(out.logitsRow[1] * out.vocabSize))];
      model.freeSequence(a);
      model.freeSequence(b);
      return rows;
    };
    const clean = await run(false);
    const dirty = await run(true);
    expect(dirty.flat().every(Number.isFinite)).toBe(true);
    expect(dirty).toEqual(clean);
  });
});
