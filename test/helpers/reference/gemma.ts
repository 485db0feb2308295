/**
 * One layer of the Gemma family (Gemma 2, Gemma 3 text) over every position, in place on the hidden
 * states, from the Hugging Face modeling code's math: (1 + w) RMSNorms before and after attention
 * and the MLP; q/k normalized per head (Gemma 3); RoPE with the sliding layers' own base (Gemma 3)
 * or positions scaled for the global ones; scores scaled by query_pre_attn_scalar^-0.5 and
 * soft-capped (Gemma 2); sliding-window layers; a gelu(tanh)-gated MLP. Nothing from src/.
 */
import type { RefGemma, RefModelConfig, RefWeights } from '../model-types.js';
import type { Projector } from './llama.js';
import { applyRope, tensor, type Vec } from './math.js';

/** x / rms(x) · (1 + w) */
export function gemmaNorm(v: Vec, w: Float32Array, eps: number): Vec {
  let ss = 0;
  for (let i = 0; i < v.length; i++) ss += v[i] * v[i];
  const inv = 1 / Math.sqrt(ss / v.length + eps);
  const out = new Float64Array(v.length);
  for (let i = 0; i < v.length; i++) out[i] = v[i] * inv * (1 + w[i]);
  return out;
}

const geluTanh = (x: number): number => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x)));

function frequencies(cfg: RefModelConfig, gm: RefGemma, local: boolean): Vec {
  const half = cfg.headDim / 2;
  const base = local && gm.localRopeTheta !== null ? gm.localRopeTheta : cfg.ropeTheta;
  const factor = local && gm.localRopeTheta !== null ? 1 : gm.globalRopeFactor;
  return Float64Array.from({ length: half }, (_, i) => 1 / Math.pow(base, (2 * i) / cfg.headDim) / factor);
}

export function gemmaLayer(cfg: RefModelConfig, weights: RefWeights, l: number, hs: Vec[], proj: Projector): void {
  const gm = cfg.gemma!;
  const { hiddenSize: H, numHeads, numKvHeads, headDim: D, intermediateSize: I, rmsNormEps: eps } = cfg;
  const qDim = numHeads * D;
  const kvDim = numKvHeads * D;
  const group = numHeads / numKvHeads;
  const n = hs.length;
  const p = `model.layers.${l}.`;
  const w = (name: string, shape: number[]): Float32Array => tensor(weights, `${p}${name}`, shape);
  const sliding = cfg.slidingWindow != null && gm.slidingLayers[l];
  const invFreq = frequencies(cfg, gm, sliding);
  const scale = 1 / Math.sqrt(gm.queryPreAttnScalar);
  const headNorm = (x: Vec, heads: number, nw: Float32Array): void => {
    for (let h = 0; h < heads; h++) x.set(gemmaNorm(x.subarray(h * D, (h + 1) * D), nw, eps), h * D);
  };

  const qs: Vec[] = [];
  const ks: Vec[] = [];
  const vs: Vec[] = [];
  for (let t = 0; t < n; t++) {
    const x = gemmaNorm(hs[t], w('input_layernorm.weight', [H]), eps);
    const q = proj(x, l, 'q_proj', w('self_attn.q_proj.weight', [qDim, H]), qDim, H);
    const k = proj(x, l, 'k_proj', w('self_attn.k_proj.weight', [kvDim, H]), kvDim, H);
    const v = proj(x, l, 'v_proj', w('self_attn.v_proj.weight', [kvDim, H]), kvDim, H);
    if (cfg.qkNorm) {
      headNorm(q, numHeads, w('self_attn.q_norm.weight', [D]));
      headNorm(k, numKvHeads, w('self_attn.k_norm.weight', [D]));
    }
    applyRope(q, numHeads, D, t, invFreq);
    applyRope(k, numKvHeads, D, t, invFreq);
    qs.push(q);
    ks.push(k);
    vs.push(v);
  }
  const out: Vec[] = [];
  for (let t = 0; t < n; t++) {
    const first = sliding ? Math.max(0, t - cfg.slidingWindow! + 1) : 0;
    const attn = new Float64Array(qDim);
    for (let h = 0; h < numHeads; h++) {
      const kvOff = Math.floor(h / group) * D;
      const scores: number[] = [];
      for (let s = first; s <= t; s++) {
        let dot = 0;
        for (let d = 0; d < D; d++) dot += qs[t][h * D + d] * ks[s][kvOff + d];
        let score = dot * scale;
        if (gm.attnSoftcap !== null) score = Math.tanh(score / gm.attnSoftcap) * gm.attnSoftcap;
        scores.push(score);
      }
      const max = Math.max(...scores);
      const e = scores.map((s) => Math.exp(s - max));
      const sum = e.reduce((a, b) => a + b, 0);
      for (let s = first; s <= t; s++) for (let d = 0; d < D; d++) attn[h * D + d] += (e[s - first] / sum) * vs[s][kvOff + d];
    }
    out.push(attn);
  }
  for (let t = 0; t < n; t++) {
    const o = gemmaNorm(proj(out[t], l, 'o_proj', w('self_attn.o_proj.weight', [H, qDim]), H, qDim), w('post_attention_layernorm.weight', [H]), eps);
    for (let i = 0; i < H; i++) hs[t][i] += o[i];
    const x = gemmaNorm(hs[t], w('pre_feedforward_layernorm.weight', [H]), eps);
    const gate = proj(x, l, 'gate_proj', w('mlp.gate_proj.weight', [I, H]), I, H);
    const up = proj(x, l, 'up_proj', w('mlp.up_proj.weight', [I, H]), I, H);
    const act = Float64Array.from(gate, (g, i) => geluTanh(g) * up[i]);
    const down = gemmaNorm(proj(act, l, 'down_proj', w('mlp.down_proj.weight', [H, I]), H, I), w('post_feedforward_layernorm.weight', [H]), eps);
    for (let i = 0; i < H; i++) hs[t][i] += down[i];
  }
}
