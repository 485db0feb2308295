/**
 * The adapter loader thread: what it loads is what loading on the calling thread gives, and its
 * errors reach the caller with their codes, params and messages (the HTTP layer answers 422 for
 * adapter_invalid, 424 for adapter_load_failed), not as a generic internal error.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadAdapterHere, ThreadLoader, type LoaderOptions } from '../../src/adapters/loader.js';
import type { AdapterSpec } from '../../src/adapters/spec.js';
import { LoraplexError } from '../../src/errors.js';
import { Checkpoint } from '../../src/runtime/checkpoint/checkpoint.js';
import { makeTinyAdapter, makeTinyModel, tempDir } from '../helpers/tiny-model.js';

const tm = makeTinyModel({ seed: 31 });
const ckpt = Checkpoint.open(tm.dir);
const opts: LoaderOptions = { spec: ckpt.spec, maxRank: 16, strictBase: null, slotDtype: 'float32' };
ckpt.close();
const alpha = makeTinyAdapter(tm, { seed: 32, r: 4 });
const beta = makeTinyAdapter(tm, { seed: 33, r: 2, targets: ['q_proj', 'v_proj'] });
// Valid headers, a NaN in the first factor.
const nan = makeTinyAdapter(tm, { seed: 34, r: 2, targets: ['q_proj'] });
{
  const path = join(nan.dir, 'adapter_model.safetensors');
  const buf = readFileSync(path);
  buf.writeFloatLE(NaN, 8 + Number(buf.readBigUInt64LE(0)));
  writeFileSync(path, buf);
}

const single = (name: string, dir: string, more: Partial<AdapterSpec> = {}): AdapterSpec => ({ kind: 'single', key: `${name}@1`, name, dir, ...more }) as AdapterSpec;
const loader = new ThreadLoader(opts);
afterAll(() => loader.close());

/** What loading on this thread throws, as the wire would carry it. */
async function hereFailure(spec: AdapterSpec): Promise<LoraplexError> {
  try {
    await loadAdapterHere(spec, opts);
  } catch (err) {
    return LoraplexError.from(err);
  }
  throw new Error('expected the load to fail');
}

describe('ThreadLoader', () => {
  it('loads the same factors as loading on the calling thread, a single adapter and a merge', async () => {
    const merge: AdapterSpec = { kind: 'merge', key: 'm', name: 'm', parts: [{ key: 'a', name: 'alpha', dir: alpha.dir, weight: 0.5 }, { key: 'b', name: 'beta', dir: beta.dir, weight: -1 }] };
    for (const spec of [single('alpha', alpha.dir), merge]) {
      const threaded = await loader.load(spec);
      const inline = await loadAdapterHere(spec, opts);
      expect([...threaded.factors.keys()]).toEqual([...inline.factors.keys()]);
      for (const [k, f] of inline.factors) {
        expect(threaded.factors.get(k)!.a).toEqual(f.a);
        expect(threaded.factors.get(k)!.b).toEqual(f.b);
      }
    }
  });

  it('an adapter whose weights are not finite fails with adapter_invalid, its param and message kept', async () => {
    const spec = single('nan-weights', nan.dir);
    const err = await loader.load(spec).then(() => null, (e: unknown) => e);
    expect(err).toBeInstanceOf(LoraplexError);
    expect((err as LoraplexError).toWire()).toEqual((await hereFailure(spec)).toWire());
    expect((err as LoraplexError).code).toBe('adapter_invalid');
    expect((err as LoraplexError).param).toBe('adapter_model');
    expect((err as LoraplexError).message).toMatch(/is not a finite float32 value/);
  });

  it('a directory that changed since it was registered fails with adapter_load_failed (424)', async () => {
    const spec = single('alpha', alpha.dir, { verify: true, key: 'not-its-digest' });
    const err = (await loader.load(spec).then(() => null, (e: unknown) => e)) as LoraplexError;
    expect(err.toWire()).toEqual((await hereFailure(spec)).toWire());
    expect(err.code).toBe('adapter_load_failed');
    expect(err.statusCode).toBe(424);
  });

  it('a missing directory fails as it does on the calling thread, and the loader goes on loading', async () => {
    const spec = single('gone', join(tempDir(), 'nothing-here'));
    const err = (await loader.load(spec).then(() => null, (e: unknown) => e)) as LoraplexError;
    expect(err.toWire()).toEqual((await hereFailure(spec)).toWire());
    expect(err.code).not.toBe('internal_error');
    await expect(loader.load(single('beta', beta.dir))).resolves.toMatchObject({ factors: expect.any(Map) });
  });
});
