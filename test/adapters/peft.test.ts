/** PEFT adapter parsing: honoured fields give the right factors; refused fields name the field. */
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadPeftAdapter, parsePeftConfig, validatePeftAdapter } from '../../src/adapters/peft.js';
import { AdapterInvalidError } from '../../src/errors.js';
import { Checkpoint } from '../../src/runtime/checkpoint/checkpoint.js';
import { CheckpointProjections } from '../../src/runtime/checkpoint/projection-weights.js';
import { RowNorms } from '../../src/runtime/row-norms.js';
import { SafetensorsFile } from '../../src/runtime/checkpoint/safetensors.js';
import { writeSafetensors } from '../../src/runtime/checkpoint/writer.js';
import { makeTinyAdapter, makeTinyModel, moduleWeight, PHI3_MODULES } from '../helpers/tiny-model.js';

const tm = makeTinyModel({ seed: 3 });
const ckpt = Checkpoint.open(tm.dir);
const spec = ckpt.spec;
ckpt.close();

async function expectAdapterError(fn: () => unknown, param: string, ...parts: (string | RegExp)[]): Promise<void> {
  let err: unknown;
  try {
    await fn();
  } catch (e) {
    err = e;
  }
  expect(err, 'expected an AdapterInvalidError').toBeInstanceOf(AdapterInvalidError);
  expect((err as AdapterInvalidError).param).toBe(param);
  expect((err as AdapterInvalidError).statusCode).toBe(422);
  for (const p of parts) expect((err as Error).message).toMatch(p);
}

function editConfig(dir: string, edit: (c: Record<string, unknown>) => void): void {
  const path = join(dir, 'adapter_config.json');
  const c = JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
  edit(c);
  writeFileSync(path, JSON.stringify(c));
}

describe('honoured fields', () => {
  it('folds alpha/r, rsLoRA alpha/sqrt(r), rank_pattern and alpha_pattern into B, transposed', async () => {
    const cases = [
      makeTinyAdapter(tm, { seed: 1, r: 4, alpha: 8 }),
      makeTinyAdapter(tm, { seed: 2, r: 4, alpha: 8, useRslora: true }),
      makeTinyAdapter(tm, { seed: 3, r: 4, alpha: 8, rankPattern: { 'layers.0.self_attn.q_proj': 2 }, alphaPattern: { down_proj: 3 } }),
    ];
    for (const a of cases) {
      const loaded = await loadPeftAdapter(a.dir, spec, { maxRank: 64 });
      for (const [key, pair] of a.lora) {
        const f = loaded.weights.factors.get(key)!;
        const [rank, din] = pair.a.shape;
        const dout = pair.b.shape[0];
        expect(f.rank).toBe(rank);
        // a[i, j] = A[j, i]; b[j, o] = scale * B[o, j]
        expect(f.a[3 * rank + 1]).toBe(pair.a.data[1 * din + 3]);
        expect(f.b[1 * dout + 5]).toBeCloseTo(pair.scale * pair.b.data[5 * rank + 1], 6);
      }
    }
    const pattern = await loadPeftAdapter(cases[2].dir, spec, { maxRank: 64 });
    expect(pattern.weights.factors.get('0.q_proj')!.rank).toBe(2);
    expect(pattern.weights.factors.get('1.q_proj')!.rank).toBe(4);
    expect(cases[2].lora.get('0.down_proj')!.scale).toBe(3 / 4);
    expect(cases[1].lora.get('0.q_proj')!.scale).toBe(8 / 2);
  });

  it("loads a fused module's LoRA (Phi-3's qkv_proj, gate_up_proj) as its parts: the same A, B split by rows; validation reads the same", async () => {
    const phi = makeTinyModel({ flavour: 'phi3', seed: 9 });
    const phiSpec = Checkpoint.open(phi.dir).spec;
    const a = makeTinyAdapter(phi, { seed: 10, r: 3, targets: PHI3_MODULES });
    const loaded = await loadPeftAdapter(a.dir, phiSpec, { maxRank: 64 });
    expect(loaded.targets).toEqual(['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']);
    expect(validatePeftAdapter(a.dir, phiSpec, { maxRank: 64 })).toMatchObject({ targets: loaded.targets, bytes: loaded.bytes });
    const fused = a.lora.get('1.qkv_proj')!;
    const q = phiSpec.numHeads * phiSpec.headDim;
    const kv = phiSpec.numKvHeads * phiSpec.headDim;
    const r = 3;
    // k_proj: rows q..q+kv of B; b[j, o] = scale * B[q + o, j], a the same as q's.
    const k = loaded.weights.factors.get('1.k_proj')!;
    expect(k.b.length).toBe(kv * r);
    expect(k.b[2 * kv + 5]).toBeCloseTo(fused.scale * fused.b.data[(q + 5) * r + 2], 6);
    expect([...k.a]).toEqual([...loaded.weights.factors.get('1.q_proj')!.a]);
  });

  it('matches list entries against the end of module names, as PEFT does', async () => {
    const a = makeTinyAdapter(tm, { seed: 12, targets: ['q_proj', 'down_proj'], configOverrides: { target_modules: ['self_attn.q_proj', 'mlp.down_proj'] } });
    expect((await loadPeftAdapter(a.dir, spec, { maxRank: 64 })).targets).toEqual(['q_proj', 'down_proj']);
    const b = makeTinyAdapter(tm, { seed: 13, targets: ['q_proj'], configOverrides: { target_modules: ['layers.1.self_attn.q_proj'] } });
    await expect(loadPeftAdapter(b.dir, spec, { maxRank: 64 })).rejects.toThrow(/model.layers.0.self_attn.q_proj has LoRA factors but is not in target_modules/);
  });

  it('accepts "all-linear" and regex target_modules and layers without factors', async () => {
    const a = makeTinyAdapter(tm, { seed: 4, targets: ['q_proj', 'v_proj'], configOverrides: { target_modules: '.*\\.(q_proj|v_proj)' } });
    expect((await loadPeftAdapter(a.dir, spec, { maxRank: 64 })).targets).toEqual(['q_proj', 'v_proj']);
    expect(parsePeftConfig({ r: 8, target_modules: 'all-linear' }).targetModules).toHaveLength(7);
  });
});

describe('refusals name the field', () => {
  it.each([
    [{ use_dora: 'yes' }, 'use_dora', /use_dora must be true or false, got "yes"/],
    [{ modules_to_save: ['lm_head'] }, 'modules_to_save', /modules_to_save \["lm_head"\] is not supported/],
    [{ bias: 'all' }, 'bias', /bias "all" is not supported/],
    [{ peft_type: 'IA3' }, 'peft_type', /peft_type "IA3" is not supported/],
    [{ target_modules: ['q_proj', 'c_attn', 'embed_tokens'] }, 'target_modules', /\["c_attn","embed_tokens"\] are not supported; supported: q_proj/],
    [{ r: 0 }, 'r', /r must be a positive integer, got 0/],
    [{ lora_alpha: 'x' }, 'lora_alpha', /lora_alpha must be a positive number, got "x"/],
    [{ rank_pattern: { q_proj: -1 } }, 'rank_pattern', /rank_pattern\["q_proj"\] must be a positive number/],
  ] as const)('%j', async (override, param, message) => {
    const a = makeTinyAdapter(tm, { seed: 5 });
    editConfig(a.dir, (c) => Object.assign(c, override));
    await expectAdapterError(() => loadPeftAdapter(a.dir, spec, { maxRank: 64 }), param, message);
  });

  it('refuses pickle weights', async () => {
    const a = makeTinyAdapter(tm, { seed: 6 });
    renameSync(join(a.dir, 'adapter_model.safetensors'), join(a.dir, 'adapter_model.bin'));
    await expectAdapterError(() => loadPeftAdapter(a.dir, spec, { maxRank: 64 }), 'adapter_model', /adapter_model.bin \(a pickle\) is not loaded/);
  });

  it('refuses a rank above the configured maximum', async () => {
    const a = makeTinyAdapter(tm, { seed: 7, r: 16 });
    await expectAdapterError(() => loadPeftAdapter(a.dir, spec, { maxRank: 8 }), 'r', /rank 16 of model.layers.0.self_attn.q_proj is above the maximum LoRA rank 8/);
  });

  it('refuses shapes that do not match the base model', async () => {
    const other = makeTinyModel({ seed: 8, intermediateSize: 128 });
    const a = makeTinyAdapter(other, { seed: 8, targets: ['up_proj'] });
    await expectAdapterError(
      () => loadPeftAdapter(a.dir, spec, { maxRank: 64 }),
      'adapter_model',
      /model.layers.0.mlp.up_proj.lora_B.weight has shape \[128,4\], expected \[96,4\]/,
    );
  });

  it('refuses a rank that contradicts the config, a lone lora_A and unknown tensors', async () => {
    const a = makeTinyAdapter(tm, { seed: 9, r: 4 });
    editConfig(a.dir, (c) => (c.r = 8));
    await expectAdapterError(() => loadPeftAdapter(a.dir, spec, { maxRank: 64 }), 'adapter_model', /has shape \[4,64\], expected \[8,64\]/);

    const b = makeTinyAdapter(tm, { seed: 10 });
    writeSafetensors(join(b.dir, 'adapter_model.safetensors'), [
      { name: 'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight', shape: [4, 64], dtype: 'F32', data: new Float32Array(256) },
    ]);
    await expectAdapterError(() => loadPeftAdapter(b.dir, spec, { maxRank: 64 }), 'adapter_model', /q_proj has lora_A but no lora_B/);

    writeSafetensors(join(b.dir, 'adapter_model.safetensors'), [
      { name: 'base_model.model.lm_head.lora_A.weight', shape: [4, 64], dtype: 'F32', data: new Float32Array(256) },
    ]);
    await expectAdapterError(() => loadPeftAdapter(b.dir, spec, { maxRank: 64 }), 'adapter_model', /lm_head.lora_A.weight is not a LoRA factor of a supported projection/);
  });

  it('refuses factors for a module outside target_modules and a missing config', async () => {
    const a = makeTinyAdapter(tm, { seed: 11, targets: ['q_proj', 'k_proj'] });
    editConfig(a.dir, (c) => (c.target_modules = ['q_proj']));
    await expectAdapterError(() => loadPeftAdapter(a.dir, spec, { maxRank: 64 }), 'target_modules', /k_proj has LoRA factors but is not in target_modules/);
    renameSync(join(a.dir, 'adapter_config.json'), join(a.dir, 'x.json'));
    await expectAdapterError(() => loadPeftAdapter(a.dir, spec, { maxRank: 64 }), 'adapter_config', /no adapter_config.json/);
  });
});

/** Rewrites an adapter's tensors: `edit` returns the new values (null drops the tensor). */
function rewriteTensors(dir: string, edit: (name: string, data: Float32Array, shape: readonly number[]) => { data: Float32Array; shape: readonly number[] } | null): void {
  const path = join(dir, 'adapter_model.safetensors');
  const file = SafetensorsFile.open(path);
  const tensors = [...file.tensors].flatMap(([name, info]) => {
    const t = edit(name, file.readFloat32(name), info.shape);
    return t ? [{ name, shape: t.shape, dtype: 'F32' as const, data: t.data }] : [];
  });
  file.close();
  writeSafetensors(path, tensors);
}

describe('DoRA', () => {
  const base = { weights: new CheckpointProjections(tm.dir), norms: new RowNorms() };
  const load = (dir: string) => loadPeftAdapter(dir, spec, { maxRank: 64, base });

  it('computes g = m / ‖W + s·B·A‖ per row, folds it into B and keeps it for the slots', async () => {
    const a = makeTinyAdapter(tm, { seed: 30, r: 4, targets: ['q_proj', 'down_proj'], dora: 0.3 });
    const loaded = await load(a.dir);
    expect(loaded.config.useDora).toBe(true);
    expect(loaded.bytes).toBe((await loadPeftAdapter(makeTinyAdapter(tm, { seed: 30, r: 4, targets: ['q_proj', 'down_proj'] }).dir, spec, { maxRank: 64 })).bytes + 4 * (64 + 64) * 2);
    for (const key of ['0.q_proj', '1.down_proj']) {
      const ref = a.lora.get(key)!;
      const [r, din] = ref.a.shape;
      const dout = ref.b.shape[0];
      const w = moduleWeight(tm, Number(key[0]), key.slice(2) as 'q_proj');
      const f = loaded.weights.factors.get(key)!;
      for (let o = 0; o < dout; o++) {
        let norm = 0;
        for (let i = 0; i < din; i++) {
          let v = w[o * din + i];
          for (let k = 0; k < r; k++) v += ref.scale * ref.b.data[o * r + k] * ref.a.data[k * din + i];
          norm += v * v;
        }
        const g = ref.magnitude!.data[o] / Math.sqrt(norm);
        expect(f.doraScale![o]).toBeCloseTo(g, 5);
        // b [rank, out]: B transposed, times the scale and g.
        for (let k = 0; k < r; k++) expect(f.b[k * dout + o]).toBeCloseTo(ref.b.data[o * r + k] * ref.scale * g, 5);
      }
    }
  });

  it('accepts the magnitude saved with a .weight suffix, and Phi-3 fused modules (magnitude split by rows)', async () => {
    const a = makeTinyAdapter(tm, { seed: 31, dora: true, magnitudeSuffix: 'lora_magnitude_vector.weight' });
    const b = makeTinyAdapter(tm, { seed: 31, dora: true });
    const fa = (await load(a.dir)).weights.factors.get('1.v_proj')!;
    expect(fa.doraScale).toEqual((await load(b.dir)).weights.factors.get('1.v_proj')!.doraScale);
    const phi = makeTinyModel({ flavour: 'phi3', seed: 32 });
    const phiSpec = Checkpoint.open(phi.dir).spec;
    const fused = makeTinyAdapter(phi, { seed: 33, targets: PHI3_MODULES, dora: true });
    const w = (await loadPeftAdapter(fused.dir, phiSpec, { maxRank: 64, base: { weights: new CheckpointProjections(phi.dir), norms: base.norms } })).weights;
    expect([...w.factors.keys()].filter((k) => k.startsWith('0.'))).toEqual(['0.q_proj', '0.k_proj', '0.v_proj', '0.o_proj', '0.gate_proj', '0.up_proj', '0.down_proj']);
    expect(w.factors.get('0.k_proj')!.doraScale!.length).toBe(phiSpec.numKvHeads * phiSpec.headDim);
  });

  it('refuses magnitudes without use_dora, use_dora without magnitudes, and wrong shapes', async () => {
    const a = makeTinyAdapter(tm, { seed: 34, dora: true });
    editConfig(a.dir, (c) => (c.use_dora = false));
    await expectAdapterError(() => validatePeftAdapter(a.dir, spec, { maxRank: 64 }), 'use_dora', /lora_magnitude_vector is a DoRA magnitude but the adapter does not set use_dora/);
    const b = makeTinyAdapter(tm, { seed: 35, dora: true });
    rewriteTensors(b.dir, (name, data, shape) => (name.endsWith('layers.1.mlp.up_proj.lora_magnitude_vector') ? null : { data, shape }));
    await expectAdapterError(() => validatePeftAdapter(b.dir, spec, { maxRank: 64 }), 'adapter_model', /model.layers.1.mlp.up_proj has no lora_magnitude_vector, which use_dora requires/);
    const c = makeTinyAdapter(tm, { seed: 36, dora: true });
    rewriteTensors(c.dir, (name, data, shape) => (name.includes('layers.0.self_attn.k_proj.lora_magnitude') ? { data: data.subarray(1), shape: [shape[0] - 1] } : { data, shape }));
    await expectAdapterError(() => validatePeftAdapter(c.dir, spec, { maxRank: 64 }), 'adapter_model', /k_proj.lora_magnitude_vector has shape \[31\], expected \[32\]/);
    const d = makeTinyAdapter(tm, { seed: 37, dora: true });
    rewriteTensors(d.dir, (name, data, shape) => (name.includes('lora_A') && name.includes('layers.0.mlp.down_proj') ? null : { data, shape }));
    rewriteTensors(d.dir, (name, data, shape) => (name.includes('lora_B') && name.includes('layers.0.mlp.down_proj') ? null : { data, shape }));
    await expectAdapterError(() => validatePeftAdapter(d.dir, spec, { maxRank: 64 }), 'adapter_model', /model.layers.0.mlp.down_proj has a lora_magnitude_vector but no LoRA factors/);
  });

  it.each([
    ['NaN', Number.NaN, /holds NaN at index 3; DoRA magnitudes must be finite/],
    ['Infinity', Number.POSITIVE_INFINITY, /holds Infinity at index 3/],
    ['absurd', 1e6, /holds 1000000 at index 3; DoRA magnitudes must be finite and at most 10000/],
  ])('refuses a %s magnitude at upload (validation) and at load', async (_, value, message) => {
    const a = makeTinyAdapter(tm, { seed: 38, dora: true });
    rewriteTensors(a.dir, (name, data, shape) => {
      if (name.includes('layers.1.self_attn.o_proj.lora_magnitude')) data[3] = value;
      return { data, shape };
    });
    await expectAdapterError(() => validatePeftAdapter(a.dir, spec, { maxRank: 64 }), 'adapter_model', /o_proj.lora_magnitude_vector/, message);
    await expectAdapterError(() => load(a.dir), 'adapter_model', message);
  });

  it('refuses at load a scale that is not finite or too large (a row of W + s·B·A with norm 0)', async () => {
    // B = −W·A⁺ is hard to build; instead a magnitude 2000× the norm (finite, within the magnitude bound).
    const a = makeTinyAdapter(tm, { seed: 39, dora: true });
    rewriteTensors(a.dir, (name, data, shape) => {
      if (name.includes('layers.0.mlp.gate_proj.lora_magnitude')) data[5] *= 2000;
      return { data, shape };
    });
    expect(validatePeftAdapter(a.dir, spec, { maxRank: 64 }).config.useDora).toBe(true);
    await expectAdapterError(() => load(a.dir), 'adapter_model', /gate_proj.lora_magnitude_vector: row 5 gets the DoRA scale .* it must be finite and at most 1000/);
  });

  it('refuses to load without the base weights (a server always has them)', async () => {
    await expect(loadPeftAdapter(makeTinyAdapter(tm, { seed: 40, dora: true }).dir, spec, { maxRank: 64 })).rejects.toThrow(/needs the base model weights/);
  });
});
