import { prng } from '../../src/util/prng.js';
import { describe, expect, it } from 'vitest';
import type { LoraModule, RefLora, RefModelConfig, RefTensor, RefWeights } from './model-types.js';
import { referenceLogits } from './reference.js';
import { maxAbsDiff as maxAbsDiffOfRow } from './runtime.js';

/** mulberry32: small deterministic PRNG. */

function randTensor(rand: () => number, shape: number[], scale: number, offset = 0): RefTensor {
  const size = shape.reduce((a, b) => a * b, 1);
  const data = new Float32Array(size);
  for (let i = 0; i < size; i++) data[i] = offset + (rand() * 2 - 1) * scale;
  return { shape, data };
}

const BASE: RefModelConfig = {
  hiddenSize: 32,
  numLayers: 2,
  numHeads: 4,
  numKvHeads: 2,
  headDim: 8,
  intermediateSize: 48,
  vocabSize: 40,
  ropeTheta: 10000,
  rmsNormEps: 1e-5,
  tieWordEmbeddings: false,
  attentionBias: true,
  ropeScaling: null,
};

function buildWeights(cfg: RefModelConfig, seed: number): RefWeights {
  const r = prng(seed);
  const { hiddenSize: H, numHeads, numKvHeads, headDim: D, intermediateSize: I, vocabSize: V } = cfg;
  const w: RefWeights = new Map();
  w.set('model.embed_tokens.weight', randTensor(r, [V, H], 1));
  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `model.layers.${l}.`;
    w.set(`${p}input_layernorm.weight`, randTensor(r, [H], 0.2, 1));
    w.set(`${p}self_attn.q_proj.weight`, randTensor(r, [numHeads * D, H], 0.3));
    w.set(`${p}self_attn.k_proj.weight`, randTensor(r, [numKvHeads * D, H], 0.3));
    w.set(`${p}self_attn.v_proj.weight`, randTensor(r, [numKvHeads * D, H], 0.3));
    w.set(`${p}self_attn.o_proj.weight`, randTensor(r, [H, numHeads * D], 0.2));
    if (cfg.attentionBias) {
      w.set(`${p}self_attn.q_proj.bias`, randTensor(r, [numHeads * D], 0.1));
      w.set(`${p}self_attn.k_proj.bias`, randTensor(r, [numKvHeads * D], 0.1));
      w.set(`${p}self_attn.v_proj.bias`, randTensor(r, [numKvHeads * D], 0.1));
    }
    w.set(`${p}post_attention_layernorm.weight`, randTensor(r, [H], 0.2, 1));
    w.set(`${p}mlp.gate_proj.weight`, randTensor(r, [I, H], 0.2));
    w.set(`${p}mlp.up_proj.weight`, randTensor(r, [I, H], 0.2));
    w.set(`${p}mlp.down_proj.weight`, randTensor(r, [H, I], 0.2));
  }
  w.set('model.norm.weight', randTensor(r, [H], 0.2, 1));
  if (!cfg.tieWordEmbeddings) w.set('lm_head.weight', randTensor(r, [V, H], 0.3));
  return w;
}

const MODULES: { mod: LoraModule; name: string }[] = [
  { mod: 'q_proj', name: 'self_attn.q_proj' },
  { mod: 'k_proj', name: 'self_attn.k_proj' },
  { mod: 'v_proj', name: 'self_attn.v_proj' },
  { mod: 'o_proj', name: 'self_attn.o_proj' },
  { mod: 'gate_proj', name: 'mlp.gate_proj' },
  { mod: 'up_proj', name: 'mlp.up_proj' },
  { mod: 'down_proj', name: 'mlp.down_proj' },
];

function buildLora(cfg: RefModelConfig, weights: RefWeights, seed: number, rank: number, zeroB = false): RefLora {
  const r = prng(seed);
  const lora: RefLora = new Map();
  for (let l = 0; l < cfg.numLayers; l++) {
    for (const { mod, name } of MODULES) {
      const [out, inp] = weights.get(`model.layers.${l}.${name}.weight`)!.shape;
      const a = randTensor(r, [rank, inp], 0.3);
      const b = zeroB ? { shape: [out, rank], data: new Float32Array(out * rank) } : randTensor(r, [out, rank], 0.3);
      lora.set(`${l}.${mod}`, { a, b, scale: 0.5 + r() });
    }
  }
  return lora;
}

/** Over rows of logits (each pair of rows must have the same length). */
function maxAbsDiff(a: Float32Array[], b: Float32Array[]): number {
  expect(a.length).toBe(b.length);
  return Math.max(0, ...a.map((row, t) => maxAbsDiffOfRow(row, b[t])));
}

const TOKENS = [3, 17, 0, 39, 8, 8, 25, 11];

describe('referenceLogits', () => {
  it('returns finite logits of vocab size for every position, and they vary', () => {
    const w = buildWeights(BASE, 1);
    const out = referenceLogits(BASE, w, TOKENS);
    expect(out).toHaveLength(TOKENS.length);
    for (const row of out) {
      expect(row).toHaveLength(BASE.vocabSize);
      expect(row.every(Number.isFinite)).toBe(true);
    }
    // positions 4 and 5 hold the same token; context/rotary must make them differ
    expect(maxAbsDiff([out[4]], [out[5]])).toBeGreaterThan(1e-3);
  });

  it('is causal: logits at t do not depend on later tokens', () => {
    const w = buildWeights(BASE, 2);
    const a = referenceLogits(BASE, w, TOKENS);
    const changed = [...TOKENS.slice(0, 4), 1, 2, 30, 31];
    const b = referenceLogits(BASE, w, changed);
    expect(maxAbsDiff(a.slice(0, 4), b.slice(0, 4))).toBe(0);
    expect(maxAbsDiff(a.slice(4), b.slice(4))).toBeGreaterThan(1e-3);
    // a prefix alone gives the same logits
    expect(maxAbsDiff(a.slice(0, 3), referenceLogits(BASE, w, TOKENS.slice(0, 3)))).toBe(0);
  });

  it('a LoRA with all-zero B equals the base model; a non-zero one does not', () => {
    const w = buildWeights(BASE, 3);
    const base = referenceLogits(BASE, w, TOKENS);
    expect(maxAbsDiff(base, referenceLogits(BASE, w, TOKENS, buildLora(BASE, w, 4, 4, true)))).toBe(0);
    expect(maxAbsDiff(base, referenceLogits(BASE, w, TOKENS, null))).toBe(0);
    expect(maxAbsDiff(base, referenceLogits(BASE, w, TOKENS, buildLora(BASE, w, 4, 4)))).toBeGreaterThan(1e-3);
  });

  it('unmerged LoRA on every module equals merged weights W + scale * B A', () => {
    const rank = 3;
    const w = buildWeights(BASE, 5);
    const lora = buildLora(BASE, w, 6, rank);
    const merged: RefWeights = new Map(w);
    for (let l = 0; l < BASE.numLayers; l++) {
      for (const { mod, name } of MODULES) {
        const key = `model.layers.${l}.${name}.weight`;
        const { shape, data } = w.get(key)!;
        const [out, inp] = shape;
        const { a, b, scale } = lora.get(`${l}.${mod}`)!;
        const m = new Float32Array(out * inp);
        for (let o = 0; o < out; o++) {
          for (let i = 0; i < inp; i++) {
            let ba = 0;
            for (let k = 0; k < rank; k++) ba += b.data[o * rank + k] * a.data[k * inp + i];
            m[o * inp + i] = data[o * inp + i] + scale * ba;
          }
        }
        merged.set(key, { shape, data: m });
      }
    }
    const unmerged = referenceLogits(BASE, w, TOKENS, lora);
    const viaMerge = referenceLogits(BASE, merged, TOKENS);
    expect(maxAbsDiff(unmerged, viaMerge)).toBeLessThan(1e-5);
    expect(maxAbsDiff(unmerged, referenceLogits(BASE, w, TOKENS))).toBeGreaterThan(1e-3);
  });

  it('handles MHA (numKvHeads == numHeads), GQA and MQA with finite outputs', () => {
    for (const numKvHeads of [4, 2, 1]) {
      const cfg = { ...BASE, numKvHeads, attentionBias: numKvHeads !== 2 };
      const w = buildWeights(cfg, 7);
      const out = referenceLogits(cfg, w, TOKENS, buildLora(cfg, w, 8, 2));
      expect(out).toHaveLength(TOKENS.length);
      for (const row of out) expect(row.every(Number.isFinite)).toBe(true);
    }
  });

  it('GQA with duplicated kv heads equals MHA with the kv heads repeated', () => {
    const gqa = { ...BASE, numKvHeads: 2 };
    const mha = { ...BASE, numKvHeads: 4 };
    const w = buildWeights(gqa, 9);
    const wm: RefWeights = new Map(w);
    const D = BASE.headDim;
    const H = BASE.hiddenSize;
    for (let l = 0; l < BASE.numLayers; l++) {
      for (const kind of ['k', 'v']) {
        const wt = w.get(`model.layers.${l}.self_attn.${kind}_proj.weight`)!.data;
        const bt = w.get(`model.layers.${l}.self_attn.${kind}_proj.bias`)!.data;
        const nw = new Float32Array(4 * D * H);
        const nb = new Float32Array(4 * D);
        for (let h = 0; h < 4; h++) {
          const src = Math.floor(h / 2); // q head h uses kv head floor(h / group)
          nw.set(wt.subarray(src * D * H, (src + 1) * D * H), h * D * H);
          nb.set(bt.subarray(src * D, (src + 1) * D), h * D);
        }
        wm.set(`model.layers.${l}.self_attn.${kind}_proj.weight`, { shape: [4 * D, H], data: nw });
        wm.set(`model.layers.${l}.self_attn.${kind}_proj.bias`, { shape: [4 * D], data: nb });
      }
    }
    expect(maxAbsDiff(referenceLogits(gqa, w, TOKENS), referenceLogits(mha, wm, TOKENS))).toBeLessThan(1e-6);
  });

  it('tied embeddings use embed_tokens as the head', () => {
    const tied = { ...BASE, tieWordEmbeddings: true };
    const w = buildWeights(tied, 10);
    const untied: RefWeights = new Map(w);
    untied.set('lm_head.weight', w.get('model.embed_tokens.weight')!);
    expect(maxAbsDiff(referenceLogits(tied, w, TOKENS), referenceLogits(BASE, untied, TOKENS))).toBe(0);
  });

  it('with zero attention and MLP outputs, logits are norm(embedding) · lm_head (hand-computed)', () => {
    const cfg = { ...BASE, numLayers: 1, attentionBias: false };
    const w = buildWeights(cfg, 11);
    for (const name of ['self_attn.o_proj', 'mlp.down_proj']) {
      const t = w.get(`model.layers.0.${name}.weight`)!;
      w.set(`model.layers.0.${name}.weight`, { shape: t.shape, data: new Float32Array(t.data.length) });
    }
    const out = referenceLogits(cfg, w, [5, 6]);
    const H = cfg.hiddenSize;
    const emb = w.get('model.embed_tokens.weight')!.data.subarray(6 * H, 7 * H);
    const g = w.get('model.norm.weight')!.data;
    const head = w.get('lm_head.weight')!.data;
    const ms = emb.reduce((s, v) => s + v * v, 0) / H;
    const x = Array.from(emb, (v, i) => (v / Math.sqrt(ms + cfg.rmsNormEps)) * g[i]);
    for (let o = 0; o < cfg.vocabSize; o++) {
      const expected = x.reduce((s, v, i) => s + v * head[o * H + i], 0);
      expect(out[1][o]).toBeCloseTo(expected, 5);
    }
  });

  describe('llama3 rope scaling', () => {
    const w = buildWeights(BASE, 12);

    it('is a no-op when every wavelength is in the high-frequency (kept) band, even with factor 8', () => {
      // wavelengths are 2π·10000^(2i/8) ≤ 2π·1000 ≈ 6283 < highFreqWavelen = 100000 / 4
      const cfg: RefModelConfig = {
        ...BASE,
        ropeScaling: {
          ropeType: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 100000,
        },
      };
      expect(maxAbsDiff(referenceLogits(cfg, w, TOKENS), referenceLogits(BASE, w, TOKENS))).toBe(0);
    });

    it('changes logits when wavelengths fall in the scaled bands', () => {
      const cfg: RefModelConfig = {
        ...BASE,
        ropeScaling: {
          ropeType: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 64,
        },
      };
      const a = referenceLogits(cfg, w, TOKENS);
      const b = referenceLogits(BASE, w, TOKENS);
      expect(maxAbsDiff(a.slice(0, 1), b.slice(0, 1))).toBe(0); // position 0 has no rotation
      expect(maxAbsDiff(a, b)).toBeGreaterThan(1e-3);
    });

    // With ropeTheta = 1 every inv_freq is 1 (wavelength 2π). If the scaled inv_freq is 1 + 2π, every
    // angle p·(1 + 2π) equals p modulo 2π, so the model must match the unscaled ropeTheta = 1 model.
    // A wrong band choice, a wrong smooth formula, or multiplying instead of dividing breaks this.
    const theta1 = { ...BASE, ropeTheta: 1 };
    const unscaled = referenceLogits(theta1, w, TOKENS);

    it('low-frequency band divides inv_freq by factor (hand-computed: 1 / factor = 1 + 2π)', () => {
      // lowFreqWavelen = 4 / 1 = 4 < 2π → low band → inv_freq = 1 / factor = 1 + 2π
      const cfg: RefModelConfig = {
        ...theta1,
        ropeScaling: {
          ropeType: 'llama3', factor: 1 / (1 + 2 * Math.PI), lowFreqFactor: 1, highFreqFactor: 4,
          originalMaxPositionEmbeddings: 4,
        },
      };
      expect(maxAbsDiff(referenceLogits(cfg, w, TOKENS), unscaled)).toBeLessThan(1e-5);
      // sanity: without the 2π wrap (factor 1/2, inv_freq 2) the logits do differ
      const other = { ...cfg, ropeScaling: { ...cfg.ropeScaling!, factor: 0.5 } };
      expect(maxAbsDiff(referenceLogits(other, w, TOKENS), unscaled)).toBeGreaterThan(1e-3);
    });

    it('medium band uses the smooth interpolation (hand-computed: smooth = 0.25)', () => {
      // original = 4π: lowFreqWavelen = 4π > 2π > highFreqWavelen = 4π/5 → medium band.
      // smooth = (4π/2π − 1) / (5 − 1) = 0.25; inv_freq = 0.75·(1 + 8π/3) + 0.25·1 = 1 + 2π.
      const cfg: RefModelConfig = {
        ...theta1,
        ropeScaling: {
          ropeType: 'llama3', factor: 1 / (1 + (8 * Math.PI) / 3), lowFreqFactor: 1, highFreqFactor: 5,
          originalMaxPositionEmbeddings: 4 * Math.PI,
        },
      };
      expect(maxAbsDiff(referenceLogits(cfg, w, TOKENS), unscaled)).toBeLessThan(1e-5);
    });
  });

  describe('one-layer attention with rotary, computed by hand', () => {
    // hidden = headDim = vocab = 8, one head, all projections identity, MLP off, norms weight 1, so
    // logits_t = rmsNorm(e_t + Σ_s softmax_s(R_t x_t · R_s x_s / √8) x_s), with x = rmsNorm(embedding)
    // (e = embedding) and R_p rotating each plane (i, i + 4) by p·invFreq[i] from axis i towards axis i + 4.
    const N = 8;
    const cfg: RefModelConfig = {
      hiddenSize: N, numLayers: 1, numHeads: 1, numKvHeads: 1, headDim: N, intermediateSize: 4, vocabSize: N,
      ropeTheta: 10000, rmsNormEps: 1e-6, tieWordEmbeddings: false, attentionBias: false, ropeScaling: null,
    };
    const r = prng(14);
    const eye = new Float32Array(N * N);
    for (let i = 0; i < N; i++) eye[i * N + i] = 1;
    const ones = new Float32Array(N).fill(1);
    const w: RefWeights = new Map([
      ['model.embed_tokens.weight', randTensor(r, [N, N], 1)],
      ['model.layers.0.input_layernorm.weight', { shape: [N], data: ones }],
      ['model.layers.0.post_attention_layernorm.weight', { shape: [N], data: ones }],
      ['model.norm.weight', { shape: [N], data: ones }],
      ['lm_head.weight', { shape: [N, N], data: eye }],
      ['model.layers.0.mlp.gate_proj.weight', randTensor(r, [4, N], 1)],
      ['model.layers.0.mlp.up_proj.weight', randTensor(r, [4, N], 1)],
      ['model.layers.0.mlp.down_proj.weight', { shape: [N, 4], data: new Float32Array(N * 4) }],
    ]);
    for (const m of ['q', 'k', 'v', 'o']) w.set(`model.layers.0.self_attn.${m}_proj.weight`, { shape: [N, N], data: eye });
    const tokens = [2, 7, 0, 5, 5, 3, 1, 6, 4, 2];

    const norm = (v: number[]): number[] => {
      const ms = v.reduce((a, b) => a + b * b, 0) / v.length;
      return v.map((x) => x / Math.sqrt(ms + cfg.rmsNormEps));
    };
    function expected(invFreq: number[]): number[][] {
      const emb = w.get('model.embed_tokens.weight')!.data;
      const embs = tokens.map((t) => Array.from(emb.subarray(t * N, (t + 1) * N)));
      const xs = embs.map(norm);
      const rot = (x: number[], p: number): number[] => {
        const y = [...x];
        for (let i = 0; i < 4; i++) {
          const [c, s] = [Math.cos(p * invFreq[i]), Math.sin(p * invFreq[i])];
          y[i] = c * x[i] - s * x[i + 4];
          y[i + 4] = s * x[i] + c * x[i + 4];
        }
        return y;
      };
      const dot = (a: number[], b: number[]): number => a.reduce((acc, v, i) => acc + v * b[i], 0);
      return xs.map((x, t) => {
        const q = rot(x, t);
        const e = xs.slice(0, t + 1).map((xs_, s) => Math.exp(dot(q, rot(xs_, s)) / Math.sqrt(N)));
        const z = e.reduce((a, b) => a + b, 0);
        const h = embs[t].map((v, i) => v + xs.slice(0, t + 1).reduce((acc, xs_, s) => acc + (e[s] / z) * xs_[i], 0));
        return norm(h);
      });
    }
    const check = (c: RefModelConfig, invFreq: number[]): void => {
      const got = referenceLogits(c, w, tokens);
      const want = expected(invFreq);
      for (let t = 0; t < tokens.length; t++) {
        for (let i = 0; i < N; i++) expect(Math.abs(got[t][i] - want[t][i])).toBeLessThan(1e-5);
      }
    };

    it('plain rope: invFreq = 10000^(-2i/8) = [1, 0.1, 0.01, 0.001]', () => {
      check(cfg, [1, 0.1, 0.01, 0.001]);
      // a wrong frequency set must be detectable by this check
      expect(() => check(cfg, [1, 0.1, 0.1, 0.001])).toThrow();
    });

    it('llama3 scaling: kept, smoothed (0.25) and divided bands', () => {
      // wavelengths 2π, 20π, 200π, 2000π; original 35π, factor 8, low 1, high 4:
      // highFreqWavelen = 8.75π → i=0 kept; lowFreqWavelen = 35π → i=1 medium with
      // smooth = (35π/20π − 1)/3 = 0.25 → 0.75·0.1/8 + 0.25·0.1 = 0.034375; i=2,3 divided by 8.
      const scaled: RefModelConfig = {
        ...cfg,
        ropeScaling: {
          ropeType: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 35 * Math.PI,
        },
      };
      check(scaled, [1, 0.034375, 0.00125, 0.000125]);
    });
  });

  it('MLP computed by hand: logits = rmsNorm(e + down(silu(gate x) * up x)) with attention off', () => {
    const cfg: RefModelConfig = { ...BASE, numLayers: 1, attentionBias: false, tieWordEmbeddings: true };
    const w = buildWeights(cfg, 15);
    const o = w.get('model.layers.0.self_attn.o_proj.weight')!;
    w.set('model.layers.0.self_attn.o_proj.weight', { shape: o.shape, data: new Float32Array(o.data.length) });
    const { hiddenSize: H, intermediateSize: I } = cfg;
    const get = (name: string): Float32Array => w.get(name)!.data;
    const rms = (v: number[], g: Float32Array): number[] => {
      const ms = v.reduce((a, b) => a + b * b, 0) / v.length;
      return v.map((x, i) => (x / Math.sqrt(ms + cfg.rmsNormEps)) * g[i]);
    };
    const mv = (m: Float32Array, x: number[], rows: number): number[] =>
      Array.from({ length: rows }, (_, r) => x.reduce((acc, v, c) => acc + v * m[r * x.length + c], 0));
    const tok = 9;
    const e = Array.from(get('model.embed_tokens.weight').subarray(tok * H, (tok + 1) * H));
    const x = rms(e, get('model.layers.0.post_attention_layernorm.weight'));
    const g = mv(get('model.layers.0.mlp.gate_proj.weight'), x, I);
    const u = mv(get('model.layers.0.mlp.up_proj.weight'), x, I);
    const act = g.map((z, i) => (z / (1 + Math.exp(-z))) * u[i]);
    const h = mv(get('model.layers.0.mlp.down_proj.weight'), act, H).map((d, i) => e[i] + d);
    const want = mv(get('model.embed_tokens.weight'), rms(h, get('model.norm.weight')), cfg.vocabSize);
    const got = referenceLogits(cfg, w, [tok])[0];
    for (let i = 0; i < cfg.vocabSize; i++) expect(Math.abs(got[i] - want[i])).toBeLessThan(1e-5);
  });

  it('throws a clear error for a missing tensor', () => {
    const w = buildWeights(BASE, 13);
    w.delete('model.layers.1.mlp.up_proj.weight');
    expect(() => referenceLogits(BASE, w, TOKENS)).toThrow(/missing tensor "model\.layers\.1\.mlp\.up_proj\.weight"/);
    const tiedMissing = buildWeights(BASE, 13);
    tiedMissing.delete('lm_head.weight');
    expect(() => referenceLogits(BASE, tiedMissing, TOKENS)).toThrow(/lm_head\.weight/);
  });
});
