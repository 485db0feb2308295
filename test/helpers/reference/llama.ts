/**
 * One layer of the Llama family (Llama, Mistral, Qwen2, Qwen3) over every position, in place on the
 * hidden states: pre-norm attention with GQA, rotary positions (q/k RMS-normalized per head first
 * for Qwen3), causal softmax (within the sliding window, where the layer has one); then the SiLU-gated MLP. Written from the Hugging Face modeling code's
 * math; nothing from src/.
 */
import type { LoraModule, RefModelConfig, RefWeights } from '../model-types.js';
import { matVecT, rmsNorm, rmsNormHeads, tensor, type Vec } from './math.js';

export type Projector = (x: Vec, layer: number, mod: LoraModule, w: Float32Array, outDim: number, inDim: number, bias?: Float32Array) => Vec;

export function llamaLayer(cfg: RefModelConfig, weights: RefWeights, l: number, hs: Vec[], proj: Projector, invFreq: Vec): void {
  const { hiddenSize: H, numHeads, numKvHeads, headDim: D, intermediateSize: I } = cfg;
  const qDim = numHeads * D;
  const kvDim = numKvHeads * D;
  const group = numHeads / numKvHeads;
  const n = hs.length;
  const invSqrtD = 1 / Math.sqrt(D);
  // Sliding window (Mistral; Qwen from firstSlidingLayer on): query t sees keys t - W + 1 .. t.
  const window = cfg.slidingWindow != null && l >= (cfg.firstSlidingLayer ?? 0) ? cfg.slidingWindow : null;
  const first = (t: number): number => (window === null ? 0 : Math.max(0, t - window + 1));
  const p = `model.layers.${l}.`;
  const inNorm = tensor(weights, `${p}input_layernorm.weight`, [H]);
  const fused = cfg.fused === true;
  const wqkv = fused ? tensor(weights, `${p}self_attn.qkv_proj.weight`, [qDim + 2 * kvDim, H]) : null;
  const wq = fused ? null : tensor(weights, `${p}self_attn.q_proj.weight`, [qDim, H]);
  const wk = fused ? null : tensor(weights, `${p}self_attn.k_proj.weight`, [kvDim, H]);
  const wv = fused ? null : tensor(weights, `${p}self_attn.v_proj.weight`, [kvDim, H]);
  const wo = tensor(weights, `${p}self_attn.o_proj.weight`, [H, qDim]);
  const bq = cfg.attentionBias ? tensor(weights, `${p}self_attn.q_proj.bias`, [qDim]) : undefined;
  const bk = cfg.attentionBias ? tensor(weights, `${p}self_attn.k_proj.bias`, [kvDim]) : undefined;
  const bv = cfg.attentionBias ? tensor(weights, `${p}self_attn.v_proj.bias`, [kvDim]) : undefined;
  const postNorm = tensor(weights, `${p}post_attention_layernorm.weight`, [H]);
  const qNorm = cfg.qkNorm ? tensor(weights, `${p}self_attn.q_norm.weight`, [D]) : null;
  const kNorm = cfg.qkNorm ? tensor(weights, `${p}self_attn.k_norm.weight`, [D]) : null;
  const wGateUp = fused ? tensor(weights, `${p}mlp.gate_up_proj.weight`, [2 * I, H]) : null;
  const wGate = fused ? null : tensor(weights, `${p}mlp.gate_proj.weight`, [I, H]);
  const wUp = fused ? null : tensor(weights, `${p}mlp.up_proj.weight`, [I, H]);
  /**
   * On a fused checkpoint: the fused module (its own LoRA included) split into parts, each plus
   * what its own LoRA or DoRA changes (the part with it minus the part without it, both from the
   * part's rows of the fused weight).
   */
  const split = (x: Vec, mod: 'qkv_proj' | 'gate_up_proj', w: Float32Array, sizes: number[], parts: LoraModule[]): Vec[] => {
    const y = proj(x, l, mod, w, sizes.reduce((a, b) => a + b, 0), H);
    let off = 0;
    return sizes.map((size, i) => {
      const part = y.slice(off, off + size);
      const rows = w.subarray(off * H, (off + size) * H);
      off += size;
      const own = proj(x, l, parts[i], rows, size, H);
      const plain = matVecT(x, rows, size, H);
      for (let j = 0; j < size; j++) part[j] += own[j] - plain[j];
      return part;
    });
  };
  const rd = cfg.rotaryDim ?? D;
  const af = cfg.longRope?.attentionFactor ?? 1;
  const wDown = tensor(weights, `${p}mlp.down_proj.weight`, [H, I]);

  // Attention: project every position first (q, k rotated at their own position).
  const qs: Vec[] = [];
  const ks: Vec[] = [];
  const vs: Vec[] = [];
  for (let t = 0; t < n; t++) {
    const x = rmsNorm(hs[t], inNorm, cfg.rmsNormEps);
    const [q, k, v] = fused
      ? split(x, 'qkv_proj', wqkv!, [qDim, kvDim, kvDim], ['q_proj', 'k_proj', 'v_proj'])
      : [proj(x, l, 'q_proj', wq!, qDim, H, bq), proj(x, l, 'k_proj', wk!, kvDim, H, bk), proj(x, l, 'v_proj', wv!, kvDim, H, bv)];
    if (qNorm && kNorm) {
      rmsNormHeads(q, numHeads, D, qNorm, cfg.rmsNormEps);
      rmsNormHeads(k, numKvHeads, D, kNorm, cfg.rmsNormEps);
    }
    applyRopePartial(q, numHeads, D, rd, t, invFreq, af);
    applyRopePartial(k, numKvHeads, D, rd, t, invFreq, af);
    qs.push(q);
    ks.push(k);
    vs.push(v);
  }
  for (let t = 0; t < n; t++) {
    const attn = new Float64Array(qDim);
    for (let h = 0; h < numHeads; h++) {
      const qOff = h * D;
      const kvOff = Math.floor(h / group) * D;
      const scores = new Float64Array(t + 1);
      let max = -Infinity;
      for (let s = first(t); s <= t; s++) {
        let dot = 0;
        for (let d = 0; d < D; d++) dot += qs[t][qOff + d] * ks[s][kvOff + d];
        scores[s] = dot * invSqrtD;
        if (scores[s] > max) max = scores[s];
      }
      let sum = 0;
      for (let s = first(t); s <= t; s++) {
        scores[s] = Math.exp(scores[s] - max);
        sum += scores[s];
      }
      for (let s = first(t); s <= t; s++) {
        const w = scores[s] / sum;
        for (let d = 0; d < D; d++) attn[qOff + d] += w * vs[s][kvOff + d];
      }
    }
    const o = proj(attn, l, 'o_proj', wo, H, qDim);
    for (let i = 0; i < H; i++) hs[t][i] += o[i];
  }

  // MLP: down(silu(gate(x)) * up(x)).
  for (let t = 0; t < n; t++) {
    const x = rmsNorm(hs[t], postNorm, cfg.rmsNormEps);
    const [gate, up] = fused ? split(x, 'gate_up_proj', wGateUp!, [I, I], ['gate_proj', 'up_proj']) : [proj(x, l, 'gate_proj', wGate!, I, H), proj(x, l, 'up_proj', wUp!, I, H)];
    const act = new Float64Array(I);
    for (let i = 0; i < I; i++) act[i] = (gate[i] / (1 + Math.exp(-gate[i]))) * up[i];
    const down = proj(act, l, 'down_proj', wDown, H, I);
    for (let i = 0; i < H; i++) hs[t][i] += down[i];
  }
}

/** In place: the first `rd` dimensions of each head rotated (rotate_half within them) at `pos`, times `af`; the rest pass through. */
function applyRopePartial(x: Vec, numHeads: number, headDim: number, rd: number, pos: number, invFreq: Vec, af: number): void {
  const half = rd / 2;
  for (let h = 0; h < numHeads; h++) {
    const base = h * headDim;
    for (let i = 0; i < half; i++) {
      const angle = pos * invFreq[i];
      const c = Math.cos(angle) * af;
      const s = Math.sin(angle) * af;
      const a = x[base + i];
      const b = x[base + half + i];
      x[base + i] = a * c - b * s;
      x[base + half + i] = b * c + a * s;
    }
  }
}
