/** The build cache, the fp16 option and execution provider selection. */
import { appendFileSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { RuntimeConfigError } from '../../src/errors.js';
import { buildModel } from '../../src/runtime/graph/build.js';
import { DecoderModel } from '../../src/runtime/model.js';
import { referenceLogits } from '../helpers/reference.js';
import { loadAdapter, logitsOf, maxAbsDiff } from '../helpers/runtime.js';
import { makeTinyAdapter, makeTinyModel, tempDir } from '../helpers/tiny-model.js';

describe('build cache', () => {
  it('reuses a build, and rebuilds when the options or the checkpoint change', async () => {
    const tm = makeTinyModel({ seed: 51 });
    const cacheDir = tempDir();
    const first = await buildModel(tm.dir, { weights: 'int4', activations: 'fp32' }, { cacheDir });
    const again = await buildModel(tm.dir, { weights: 'int4', activations: 'fp32' }, { cacheDir });
    expect(first.built).toBe(true);
    expect(again.built).toBe(false);
    expect(again.dir).toBe(first.dir);
    const other = await buildModel(tm.dir, { weights: 'int8', activations: 'fp32' }, { cacheDir });
    expect(other.built).toBe(true);
    expect(other.dir).not.toBe(first.dir);
    appendFileSync(join(tm.dir, 'config.json'), ' ');
    const changed = await buildModel(tm.dir, { weights: 'int4', activations: 'fp32' }, { cacheDir });
    expect(changed.built).toBe(true);
    expect(changed.dir).not.toBe(first.dir);
    expect(readdirSync(cacheDir).filter((d) => d.includes('.tmp-'))).toEqual([]);
  });

  it('reports build progress up to the total', async () => {
    const tm = makeTinyModel({ seed: 52, numLayers: 3 });
    const seen: [number, number][] = [];
    await buildModel(tm.dir, { weights: 'fp32', activations: 'fp32' }, { cacheDir: tempDir(), progress: (d, t) => seen.push([d, t]) });
    expect(seen.at(-1)).toEqual([5, 5]);
  });

  it('prepares weights on helper threads with byte-identical results', async () => {
    const tm = makeTinyModel({ seed: 56, flavour: 'qwen2' });
    for (const weights of ['int4', 'nf4', 'fp32', 'w8a8'] as const) {
      const inline = await buildModel(tm.dir, { weights, activations: 'fp32' }, { cacheDir: tempDir(), parallel: false });
      const threaded = await buildModel(tm.dir, { weights, activations: 'fp32' }, { cacheDir: tempDir(), parallel: true });
      for (const f of ['model.onnx', 'model.onnx.data']) {
        expect(readFileSync(join(threaded.dir, f)).equals(readFileSync(join(inline.dir, f))), `${weights} ${f}`).toBe(true);
      }
    }
  });

  it('refuses unknown weight formats', async () => {
    const tm = makeTinyModel({ seed: 53 });
    await expect(buildModel(tm.dir, { weights: 'int3' as 'int4', activations: 'fp32' }, { cacheDir: tempDir() })).rejects.toThrow(
      /weight format "int3" is not one of fp32, int8, int4, nf4, w8a8/,
    );
  });

  it('refuses w8a8 with fp16 activations, naming why', async () => {
    const tm = makeTinyModel({ seed: 53 });
    await expect(buildModel(tm.dir, { weights: 'w8a8', activations: 'fp16' }, { cacheDir: tempDir() })).rejects.toThrow(/"w8a8" needs fp32 activations/);
  });
});

describe('fp16 activations', () => {
  it('builds and runs (on CPU here) within fp16 precision of the reference', async () => {
    const tm = makeTinyModel({ seed: 54, flavour: 'qwen2' });
    const built = await buildModel(tm.dir, { weights: 'fp32', activations: 'fp16' }, { cacheDir: tempDir() });
    const model = await DecoderModel.load(built, { device: 'cpu', allowCpuFallback: false, threads: 1, kvCacheTokens: 64, adapterSlots: 2, maxLoraRank: 8 });
    const toks = [5, 9, 100, 3];
    const out = await model.step([{ seq: model.newSequence(), tokens: toks, slot: -1, logits: 'last' }]);
    const ref = referenceLogits(tm.cfg, tm.weights, toks);
    expect(maxAbsDiff(out.logits, ref[3])).toBeLessThan(0.05);
    // LoRA and DoRA rows (fp16 slots, the DoRA scales' g − 1 among them) beside a base row.
    const lora = makeTinyAdapter(tm, { seed: 56, r: 4 });
    const dora = makeTinyAdapter(tm, { seed: 57, r: 4, dora: 0.3 });
    const slots = [await loadAdapter(model, lora), await loadAdapter(model, dora)];
    const rows = [{ slot: slots[1], lora: dora.lora }, { slot: -1, lora: null }, { slot: slots[0], lora: lora.lora }];
    const mixed = await model.step(rows.map((r) => ({ seq: model.newSequence(), tokens: toks, slot: r.slot, logits: 'last' as const })));
    rows.forEach((r, i) => expect(maxAbsDiff(logitsOf(mixed, i), referenceLogits(tm.cfg, tm.weights, toks, r.lora)[3]), `row ${i}`).toBeLessThan(0.05));
    await model.close();
  });
});

describe('lm_head accuracy', () => {
  it('fp32 compute for the lm_head is its own build and gives other logits than int8 compute, both near the reference', async () => {
    const tm = makeTinyModel({ seed: 58, flavour: 'llama', hiddenSize: 128, vocabSize: 256, tieWordEmbeddings: false });
    const cacheDir = tempDir();
    const toks = [5, 9, 100, 3, 77];
    const ref = referenceLogits(tm.cfg, tm.weights, toks)[4];
    const logits: Float32Array[] = [];
    const dirs: string[] = [];
    for (const lmHeadAccuracy of ['int8', 'fp32'] as const) {
      const built = await buildModel(tm.dir, { weights: 'int8', activations: 'fp32', lmHeadAccuracy }, { cacheDir });
      expect(built.options.lmHeadAccuracy).toBe(lmHeadAccuracy);
      dirs.push(built.dir);
      const model = await DecoderModel.load(built, { device: 'cpu', allowCpuFallback: false, threads: 1, kvCacheTokens: 64, adapterSlots: 1, maxLoraRank: 8 });
      const out = await model.step([{ seq: model.newSequence(), tokens: toks, slot: -1, logits: 'last' }]);
      logits.push(out.logits.slice());
      // (int8 weights on a random model: within the format's error of the reference.)
      expect(maxAbsDiff(out.logits, ref)).toBeLessThan(1);
      await model.close();
    }
    expect(dirs[0]).not.toBe(dirs[1]);
    expect(maxAbsDiff(logits[0], logits[1])).toBeGreaterThan(0);
    await expect(buildModel(tm.dir, { weights: 'int8', activations: 'fp32', lmHeadAccuracy: 'int4' as never }, { cacheDir })).rejects.toThrow(/lm_head accuracy "int4" is not one of int8, fp32/);
  });
});

describe('execution providers', () => {
  it('says clearly when a device is unusable, and falls back only when allowed', async () => {
    const tm = makeTinyModel({ seed: 55 });
    const built = await buildModel(tm.dir, { weights: 'fp32', activations: 'fp32' }, { cacheDir: tempDir() });
    const opts = { threads: 1, kvCacheTokens: 64, adapterSlots: 2, maxLoraRank: 8 };
    const err = await DecoderModel.load(built, { ...opts, device: 'cuda', allowCpuFallback: false }).catch((e: unknown) => e);
    if (!(err instanceof Error)) {
      // A machine where CUDA works: the model runs there, and that is all there is to check.
      expect((err as DecoderModel).device).toBe('cuda');
      await (err as DecoderModel).close();
      return;
    }
    expect(err).toBeInstanceOf(RuntimeConfigError);
    expect((err as Error).message).toMatch(/execution provider cuda is not usable here: .*--allow-cpu-fallback/);
    const logs: string[] = [];
    const model = await DecoderModel.load(built, { ...opts, device: 'cuda', allowCpuFallback: true, log: (m) => logs.push(m) });
    expect(model.device).toBe('cpu');
    expect(logs.join('\n')).toMatch(/falling back to cpu as allowed/);
    await model.close();
  });
});
