/** Checkpoint loading: every refusal names the file, the tensor and what was expected. */
import { closeSync, openSync, readFileSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CheckpointError } from '../../src/errors.js';
import { Checkpoint } from '../../src/runtime/checkpoint/checkpoint.js';
import { SafetensorsFile, floatToBf16, floatToHalf, halfToFloat, toFloat32 } from '../../src/runtime/checkpoint/safetensors.js';
import { parseModelSpec } from '../../src/runtime/arch/families.js';
import { writeSafetensors } from '../../src/runtime/checkpoint/writer.js';
import { makeTinyModel, tempDir } from '../helpers/tiny-model.js';

function expectCheckpointError(fn: () => unknown, ...parts: (string | RegExp)[]): void {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err, 'expected a CheckpointError').toBeInstanceOf(CheckpointError);
  const msg = (err as Error).message;
  for (const p of parts) expect(msg).toMatch(p);
}

function editConfig(dir: string, edit: (c: Record<string, unknown>) => void): void {
  const path = join(dir, 'config.json');
  const c = JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
  edit(c);
  writeFileSync(path, JSON.stringify(c));
}

describe('safetensors', () => {
  it('round-trips F32, F16 and BF16', () => {
    const dir = tempDir();
    const values = Float32Array.from([0, 1, -2.5, 3.14159, 65504, -1e-3, 1e-8]);
    writeSafetensors(join(dir, 'x.safetensors'), [
      { name: 'f32', shape: [7], dtype: 'F32', data: values },
      { name: 'f16', shape: [7], dtype: 'F16', data: values },
      { name: 'bf16', shape: [7], dtype: 'BF16', data: values },
    ], { format: 'pt' });
    const f = SafetensorsFile.open(join(dir, 'x.safetensors'));
    expect(Array.from(f.readFloat32('f32'))).toEqual(Array.from(values));
    const f16 = f.readFloat32('f16');
    const bf16 = f.readFloat32('bf16');
    values.forEach((v, i) => {
      expect(f16[i]).toBe(halfToFloat(floatToHalf(v)));
      expect(Math.abs(bf16[i] - v)).toBeLessThanOrEqual(Math.abs(v) / 128);
    });
    expect(f.metadata).toEqual({ format: 'pt' });
    f.close();
  });

  it('converts half and bfloat16 bit patterns exactly', () => {
    expect(halfToFloat(0x3c00)).toBe(1);
    expect(halfToFloat(0xc000)).toBe(-2);
    expect(halfToFloat(0x0001)).toBe(2 ** -24);
    expect(floatToHalf(1)).toBe(0x3c00);
    expect(floatToHalf(65504)).toBe(0x7bff);
    expect(floatToBf16(1)).toBe(0x3f80);
    const bytes = new Uint8Array(Uint16Array.from([0x3f80, 0xc000]).buffer);
    expect(Array.from(toFloat32(bytes, 'BF16'))).toEqual([1, -2]);
  });

  it('refuses an absurd header length', () => {
    const path = join(tempDir(), 'bad.safetensors');
    const buf = Buffer.alloc(16);
    buf.writeBigUInt64LE(1n << 40n);
    writeFileSync(path, buf);
    expectCheckpointError(() => SafetensorsFile.open(path), 'bad.safetensors', /header length 1099511627776 is impossible/);
  });

  it('refuses a truncated file, naming the tensor', () => {
    const dir = tempDir();
    const path = join(dir, 't.safetensors');
    writeSafetensors(path, [{ name: 'w', shape: [64], dtype: 'F32', data: new Float32Array(64) }]);
    truncateSync(path, readFileSync(path).length - 10);
    expectCheckpointError(() => SafetensorsFile.open(path), 't.safetensors', 'tensor w', /truncated/);
  });

  it('refuses unsupported dtypes and inconsistent sizes', () => {
    const dir = tempDir();
    const write = (header: object, dataBytes: number): string => {
      const path = join(dir, `h${Math.random()}.safetensors`);
      const json = Buffer.from(JSON.stringify(header));
      const fd = openSync(path, 'w');
      const len = Buffer.alloc(8);
      len.writeBigUInt64LE(BigInt(json.length));
      writeSync(fd, len);
      writeSync(fd, json);
      writeSync(fd, Buffer.alloc(dataBytes));
      closeSync(fd);
      return path;
    };
    expectCheckpointError(() => SafetensorsFile.open(write({ w: { dtype: 'I64', shape: [2], data_offsets: [0, 16] } }, 16)), 'tensor w', /dtype I64 is not supported/);
    expectCheckpointError(() => SafetensorsFile.open(write({ w: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } }, 8)), 'tensor w', /has 8 bytes but shape \[3\] of F32 needs 12/);
    expectCheckpointError(() => SafetensorsFile.open(write({ w: 5 }, 0)), 'tensor w');
  });
});

describe('config.json → model spec', () => {
  const base = {
    architectures: ['LlamaForCausalLM'],
    hidden_size: 64,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    intermediate_size: 96,
    vocab_size: 100,
  };

  it('parses GQA, head_dim, rope_theta, llama3 rope scaling, eps, tie and Qwen2 bias', () => {
    const s = parseModelSpec({
      ...base,
      head_dim: 32,
      rope_theta: 500000,
      rms_norm_eps: 1e-5,
      tie_word_embeddings: true,
      rope_scaling: { rope_type: 'llama3', factor: 32, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 },
    });
    expect(s).toMatchObject({ family: 'llama', numKvHeads: 2, headDim: 32, ropeTheta: 500000, rmsNormEps: 1e-5, tieWordEmbeddings: true, attentionBias: false });
    expect(s.ropeScaling).toEqual({ ropeType: 'llama3', factor: 32, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 });
    expect(parseModelSpec({ ...base, architectures: ['Qwen2ForCausalLM'] })).toMatchObject({ attentionBias: true });
    expect(parseModelSpec(base).headDim).toBe(16);
  });

  it('parses Qwen3: q/k norms, its own head_dim, a bias only when attention_bias says so', () => {
    const s = parseModelSpec({ ...base, architectures: ['Qwen3ForCausalLM'], head_dim: 32 });
    expect(s).toMatchObject({ architecture: 'Qwen3ForCausalLM', headDim: 32, qkNorm: true, attentionBias: false });
    expect(parseModelSpec({ ...base, architectures: ['Qwen3ForCausalLM'], attention_bias: true })).toMatchObject({ attentionBias: true });
    expect(parseModelSpec({ ...base, architectures: ['Qwen2ForCausalLM'] })).toMatchObject({ qkNorm: false });
  });

  it("parses Gemma 2 and 3: defaults of their sliding pattern, caps, scalar, RoPE bases; refuses what they cannot run", () => {
    const g2 = parseModelSpec({ ...base, architectures: ['Gemma2ForCausalLM'], num_hidden_layers: 4, head_dim: 16 });
    expect(g2).toMatchObject({ family: 'gemma', slidingWindow: 4096, slidingLayers: [true, false, true, false], attnLogitSoftcap: 50, finalLogitSoftcap: 30, attentionScale: 1 / 4, tieWordEmbeddings: true, qkNorm: false, localRopeTheta: null, ropeTheta: 10000 });
    const g3 = parseModelSpec({ ...base, architectures: ['Gemma3ForCausalLM'], num_hidden_layers: 12, head_dim: 16, query_pre_attn_scalar: 64, sliding_window: 512, rope_scaling: { rope_type: 'linear', factor: 8 } });
    expect(g3.slidingLayers.map(Number).join('')).toBe('111110111110');
    expect(g3).toMatchObject({ slidingWindow: 512, attnLogitSoftcap: null, finalLogitSoftcap: null, attentionScale: 1 / 8, qkNorm: true, localRopeTheta: 10000, ropeTheta: 1000000, ropeScaling: { ropeType: 'linear', factor: 8 } });
    expect(parseModelSpec({ ...base, architectures: ['Gemma3ForCausalLM'], layer_types: ['full_attention', 'sliding_attention'] }).slidingLayers).toEqual([false, true]);
    expectCheckpointError(() => parseModelSpec({ ...base, architectures: ['Gemma2ForCausalLM'], layer_types: ['full_attention'] }), /layer_types must list/);
    expectCheckpointError(() => parseModelSpec({ ...base, architectures: ['Gemma2ForCausalLM'], hidden_activation: 'relu' }), /hidden_activation "relu" is not supported/);
    expectCheckpointError(() => parseModelSpec({ ...base, architectures: ['Gemma3ForCausalLM'], rope_scaling: { rope_type: 'yarn', factor: 2 } }), /rope_scaling type "yarn" is not supported for Gemma3ForCausalLM/);
  });

  it('parses Phi-3: partial rotary, LongRoPE with its attention factor, a sliding window on every layer; refuses bad factors', () => {
    const half = 4; // head_dim 16 × 0.5 / 2
    const phi = { ...base, architectures: ['Phi3ForCausalLM'], partial_rotary_factor: 0.5, max_position_embeddings: 131072, original_max_position_embeddings: 4096, sliding_window: 262144,
      rope_scaling: { type: 'longrope', short_factor: [1, 1, 1, 1], long_factor: [1, 2, 3, 4] } };
    const s = parseModelSpec(phi);
    expect(s).toMatchObject({ family: 'phi3', headDim: 16, rotaryDim: 8, slidingWindow: 262144, slidingLayers: [true, true], ropeScaling: { ropeType: 'longrope', originalMaxPositionEmbeddings: 4096, longFactor: [1, 2, 3, 4] } });
    expect((s.ropeScaling as { attentionFactor: number }).attentionFactor).toBeCloseTo(Math.sqrt(1 + Math.log(32) / Math.log(4096)), 12);
    expect(parseModelSpec({ ...phi, rope_scaling: null, sliding_window: null })).toMatchObject({ rotaryDim: 8, ropeScaling: null, slidingWindow: null });
    expectCheckpointError(() => parseModelSpec({ ...phi, rope_scaling: { type: 'longrope', short_factor: [1], long_factor: [1, 2, 3, 4] } }), new RegExp(`short_factor must be ${half} positive numbers`));
    expectCheckpointError(() => parseModelSpec({ ...phi, rope_scaling: { type: 'yarn' } }), /rope_scaling type "yarn" is not supported for Phi3ForCausalLM/);
  });

  it("carries only its own family's fields: none set to null for the families that lack them", () => {
    const fields = (cfg: Record<string, unknown>): string[] => Object.keys(parseModelSpec(cfg)).sort();
    const shared = ['architecture', 'bosTokenId', 'eosTokenIds', 'family', 'headDim', 'hiddenSize', 'intermediateSize', 'maxPositionEmbeddings', 'numHeads', 'numKvHeads', 'numLayers', 'rmsNormEps', 'ropeScaling', 'ropeTheta', 'rotaryDim', 'slidingLayers', 'slidingWindow', 'tieWordEmbeddings', 'vocabSize'];
    const plus = (...own: string[]): string[] => [...shared, ...own].sort();
    expect(fields(base)).toEqual(plus('attentionBias', 'qkNorm'));
    expect(fields({ ...base, architectures: ['Gemma2ForCausalLM'] })).toEqual(plus('attentionScale', 'attnLogitSoftcap', 'finalLogitSoftcap', 'localRopeTheta', 'qkNorm'));
    expect(fields({ ...base, architectures: ['Phi3ForCausalLM'] })).toEqual(plus());
  });

  it('refuses unsupported architectures, naming what is supported', () => {
    expectCheckpointError(() => parseModelSpec({ ...base, architectures: ['GPT2LMHeadModel'] }), /GPT2LMHeadModel is not supported; supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, Gemma2ForCausalLM, Gemma3ForCausalLM, Phi3ForCausalLM/);
    expectCheckpointError(() => parseModelSpec({ ...base, architectures: undefined }), /\(none given\)/);
  });

  it('refuses other rope scaling types and bad numbers', () => {
    expectCheckpointError(() => parseModelSpec({ ...base, rope_scaling: { type: 'yarn', factor: 4 } }), /rope_scaling type "yarn" is not supported \(supported: llama3\)/);
    expectCheckpointError(() => parseModelSpec({ ...base, hidden_size: -1 }), /hidden_size must be a positive integer, got -1/);
    expectCheckpointError(() => parseModelSpec({ ...base, num_key_value_heads: 3 }), /multiple of num_key_value_heads \(3\)/);
    expectCheckpointError(() => parseModelSpec({ ...base, hidden_act: 'gelu' }), /hidden_act "gelu" is not supported/);
  });
});

describe('checkpoint directory', () => {
  it('opens single-file and sharded checkpoints alike', () => {
    const single = makeTinyModel({ seed: 1 });
    const sharded = makeTinyModel({ seed: 1, shards: 3 });
    const a = Checkpoint.open(single.dir);
    const b = Checkpoint.open(sharded.dir);
    expect(b.files.length).toBe(3);
    for (const name of ['model.embed_tokens.weight', 'model.layers.1.mlp.down_proj.weight', 'lm_head.weight']) {
      expect(Array.from(b.read(name))).toEqual(Array.from(a.read(name)));
    }
    a.close();
    b.close();
  });

  it('refuses a missing tensor, naming it and its expected shape', () => {
    const tm = makeTinyModel({ seed: 2 });
    const weights = [...tm.weights.entries()].filter(([n]) => n !== 'model.layers.1.self_attn.k_proj.weight');
    writeSafetensors(join(tm.dir, 'model.safetensors'), weights.map(([name, t]) => ({ name, shape: t.shape, dtype: 'F32', data: t.data })));
    expectCheckpointError(() => Checkpoint.open(tm.dir), 'model.layers.1.self_attn.k_proj.weight is missing', 'expected shape [32,64]');
  });

  it("refuses a Qwen3 checkpoint without a layer's k_norm, naming it and its [head_dim] shape", () => {
    const tm = makeTinyModel({ seed: 4, flavour: 'qwen3', headDim: 32 });
    const weights = [...tm.weights.entries()].filter(([n]) => n !== 'model.layers.0.self_attn.k_norm.weight');
    writeSafetensors(join(tm.dir, 'model.safetensors'), weights.map(([name, t]) => ({ name, shape: t.shape, dtype: 'F32', data: t.data })));
    expectCheckpointError(() => Checkpoint.open(tm.dir), 'model.layers.0.self_attn.k_norm.weight is missing', 'expected shape [32]');
  });

  it('refuses a tensor of the wrong shape, naming file, tensor and expectation', () => {
    const tm = makeTinyModel({ seed: 3 });
    editConfig(tm.dir, (c) => (c.intermediate_size = 80));
    expectCheckpointError(() => Checkpoint.open(tm.dir), 'model.safetensors', 'model.layers.0.mlp.gate_proj.weight has shape [96,64], expected [80,64]');
  });

  it('refuses missing weights, pickles and a broken shard index', () => {
    const empty = tempDir();
    expectCheckpointError(() => Checkpoint.open(empty), /no config.json/);
    const tm = makeTinyModel({ seed: 4 });
    const dir2 = tempDir();
    writeFileSync(join(dir2, 'config.json'), readFileSync(join(tm.dir, 'config.json')));
    writeFileSync(join(dir2, 'pytorch_model.bin'), 'not loaded');
    expectCheckpointError(() => Checkpoint.open(dir2), /pytorch_model.bin is a pickle and is not loaded/);
    const sharded = makeTinyModel({ seed: 5, shards: 2 });
    const idx = join(sharded.dir, 'model.safetensors.index.json');
    const index = JSON.parse(readFileSync(idx, 'utf8')) as { weight_map: Record<string, string> };
    index.weight_map['lm_head.weight'] = 'model-00009-of-00009.safetensors';
    writeFileSync(idx, JSON.stringify(index));
    expectCheckpointError(() => Checkpoint.open(sharded.dir), /shard model-00009-of-00009.safetensors is listed but missing/);
  });

  it('merges eos ids from generation_config.json', () => {
    const tm = makeTinyModel({ seed: 6 });
    writeFileSync(join(tm.dir, 'generation_config.json'), JSON.stringify({ eos_token_id: [2, 7] }));
    const c = Checkpoint.open(tm.dir);
    expect(c.spec.eosTokenIds).toEqual([2, 7]);
    c.close();
  });
});
