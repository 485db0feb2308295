/**
 * Weight preparation on helper threads gives the same bytes as preparing inline, in every format,
 * with the weights transferred both ways; a weight that cannot be prepared fails as a LoraplexError
 * (not a bare message) and the threads go on preparing.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { LoraplexError } from '../../../src/errors.js';
import { prepareLinear, type LinearWeight } from '../../../src/runtime/graph/linear.js';
import { ThreadPreparer } from '../../../src/runtime/graph/prepare-pool.js';
import type { WeightFormat } from '../../../src/runtime/graph/quant.js';
import { prng, randn } from '../../helpers/tiny-model.js';

const rand = prng(41);
const weight = (n: number, k: number, bias: boolean): LinearWeight => ({ w: randn(rand, n * k, 0.5), n, k, bias: bias ? randn(rand, n, 0.1) : null });
const preparer = new ThreadPreparer(2);
afterAll(() => preparer.close());

describe('ThreadPreparer', () => {
  it('prepares every format as inline preparation does, several weights at once', async () => {
    const formats: WeightFormat[] = ['fp32', 'int8', 'int4', 'nf4', 'w8a8'];
    const weights = formats.map((format, i) => ({ format, w: weight(8 + i, 64, i % 2 === 0) }));
    // Inline first: the threaded call moves the weight's buffers away.
    const want = weights.map(({ format, w }) => prepareLinear({ ...w, w: w.w.slice(), bias: w.bias?.slice() ?? null }, format));
    const got = await Promise.all(weights.map(({ format, w }) => preparer.prepare(w, format)));
    expect(got).toEqual(want);
  });

  it('a view into a larger buffer is copied, not transferred: the caller’s buffer stays usable', async () => {
    const big = randn(rand, 4 * 64 * 2, 0.5);
    const view = big.subarray(4 * 64);
    const got = await preparer.prepare({ w: view, n: 4, k: 64 }, 'fp32');
    expect(big.length).toBe(4 * 64 * 2);
    expect(got).toEqual(prepareLinear({ w: view.slice(), n: 4, k: 64 }, 'fp32'));
  });

  it('a weight that cannot be prepared fails with a LoraplexError carrying a code; the threads go on', async () => {
    const err = await preparer.prepare(weight(4, 64, false), 'int3' as WeightFormat).then(() => null, (e: unknown) => e);
    expect(err).toBeInstanceOf(LoraplexError);
    expect((err as LoraplexError).code).toBe('internal_error');
    expect((err as LoraplexError).message).toMatch(/^internal error: .*prepare/);
    await expect(preparer.prepare(weight(4, 64, false), 'int8')).resolves.toMatchObject({ format: 'int8', n: 4, k: 64 });
  });
});
