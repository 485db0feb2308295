/**
 * Independent reference forward pass of a Hugging Face Llama / Mistral / Qwen2 / Qwen3 decoder with
 * *unmerged* PEFT LoRA adapters, used to check the ONNX implementation numerically.
 *
 * It is written directly from the math (HF LlamaForCausalLM semantics) and deliberately shares
 * nothing with src/: no imports from the implementation, no onnxruntime, no dependencies.
 * Everything is accumulated in Float64; only the returned logits are Float32.
 * Each call is a full causal recompute for positions 0..n-1 (no KV cache across calls).
 */
import type { LoraModule, RefLora, RefLoraPair, RefModelConfig, RefWeights } from './model-types.js';

type Vec = Float64Array;

const LORA_MODULES: readonly LoraModule[] = [
  'q_proj',
  'k_proj',
  'v_proj',
  'o_proj',
  'gate_proj',
  'up_proj',
  'down_proj',
];

/** Fetches a tensor by HF name, checking that it exists and has the expected shape. */
function tensor(weights: RefWeights, name: string, shape: readonly number[]): Float32Array {
  const t = weights.get(name);
  if (!t) throw new Error(`reference: missing tensor "${name}"`);
  const same = t.shape.length === shape.length && t.shape.every((d, i) => d === shape[i]);
  if (!same) {
    throw new Error(`reference: tensor "${name}" has shape [${t.shape}], expected [${shape}]`);
  }
  if (t.data.length !== shape.reduce((a, b) => a * b, 1)) {
    throw new Error(`reference: tensor "${name}" data length ${t.data.length} does not match its shape`);
  }
  return t.data;
}

/** y = x W^T (+ b), W row-major [out, in]. */
function matVecT(x: Vec, w: Float32Array, outDim: number, inDim: number, bias?: Float32Array): Vec {
  const y = new Float64Array(outDim);
  for (let o = 0; o < outDim; o++) {
    let acc = bias ? bias[o] : 0;
    const row = o * inDim;
    for (let i = 0; i < inDim; i++) acc += x[i] * w[row + i];
    y[o] = acc;
  }
  return y;
}

/** y += scale * ((x A^T) B^T), A = [r, in], B = [out, r]. */
function addLora(y: Vec, x: Vec, pair: RefLoraPair, key: string, outDim: number, inDim: number): void {
  const r = pair.a.shape[0];
  const okA = pair.a.shape.length === 2 && pair.a.shape[1] === inDim && pair.a.data.length === r * inDim;
  const okB = pair.b.shape.length === 2 && pair.b.shape[0] === outDim && pair.b.shape[1] === r
    && pair.b.data.length === outDim * r;
  if (!okA || !okB) {
    throw new Error(`reference: LoRA "${key}" has A [${pair.a.shape}], B [${pair.b.shape}]; ` +
      `expected A [r, ${inDim}], B [${outDim}, r]`);
  }
  const t = matVecT(x, pair.a.data, r, inDim);
  const d = matVecT(t, pair.b.data, outDim, r);
  for (let o = 0; o < outDim; o++) y[o] += pair.scale * d[o];
}

/** v / sqrt(mean(v^2) + eps) * w */
function rmsNorm(v: Vec, w: Float32Array, eps: number): Vec {
  let ss = 0;
  for (let i = 0; i < v.length; i++) ss += v[i] * v[i];
  const inv = 1 / Math.sqrt(ss / v.length + eps);
  const out = new Float64Array(v.length);
  for (let i = 0; i < v.length; i++) out[i] = v[i] * inv * w[i];
  return out;
}

/** In place: RMSNorm of each head (numHeads × headDim) with the per-dimension weight w [headDim]. */
function rmsNormHeads(x: Vec, numHeads: number, headDim: number, w: Float32Array, eps: number): void {
  for (let h = 0; h < numHeads; h++) {
    const head = rmsNorm(x.subarray(h * headDim, (h + 1) * headDim), w, eps);
    x.set(head, h * headDim);
  }
}

/** Rotary inverse frequencies (length headDim/2), with optional Llama 3 scaling. */
function inverseFrequencies(cfg: RefModelConfig): Vec {
  const half = cfg.headDim / 2;
  const invFreq = new Float64Array(half);
  for (let i = 0; i < half; i++) invFreq[i] = 1 / Math.pow(cfg.ropeTheta, (2 * i) / cfg.headDim);
  const s = cfg.ropeScaling;
  if (!s) return invFreq;
  if (s.ropeType !== 'llama3') throw new Error(`reference: unsupported rope scaling "${String(s.ropeType)}"`);
  const lowFreqWavelen = s.originalMaxPositionEmbeddings / s.lowFreqFactor;
  const highFreqWavelen = s.originalMaxPositionEmbeddings / s.highFreqFactor;
  for (let i = 0; i < half; i++) {
    const f = invFreq[i];
    const wavelen = (2 * Math.PI) / f;
    if (wavelen < highFreqWavelen) continue;
    if (wavelen > lowFreqWavelen) {
      invFreq[i] = f / s.factor;
    } else {
      const smooth = (s.originalMaxPositionEmbeddings / wavelen - s.lowFreqFactor) /
        (s.highFreqFactor - s.lowFreqFactor);
      invFreq[i] = ((1 - smooth) * f) / s.factor + smooth * f;
    }
  }
  return invFreq;
}

/** In place: each head of `x` (numHeads × headDim) becomes x*cos + rotate_half(x)*sin at `pos`. */
function applyRope(x: Vec, numHeads: number, headDim: number, pos: number, invFreq: Vec): void {
  const half = headDim / 2;
  for (let h = 0; h < numHeads; h++) {
    const base = h * headDim;
    for (let i = 0; i < half; i++) {
      const angle = pos * invFreq[i];
      const c = Math.cos(angle);
      const s = Math.sin(angle);
      const a = x[base + i]; // first half
      const b = x[base + half + i]; // second half
      // rotate_half(x) = concat(-x[half:], x[:half])
      x[base + i] = a * c - b * s;
      x[base + half + i] = b * c + a * s;
    }
  }
}

export function referenceLogits(
  cfg: RefModelConfig,
  weights: RefWeights,
  tokenIds: readonly number[],
  lora?: RefLora | null,
): Float32Array[] {
  const { hiddenSize: H, numHeads, numKvHeads, headDim: D, intermediateSize: I, vocabSize: V } = cfg;
  if (numHeads % numKvHeads !== 0) throw new Error('reference: numHeads must be a multiple of numKvHeads');
  if (D % 2 !== 0) throw new Error('reference: headDim must be even');
  const qDim = numHeads * D;
  const kvDim = numKvHeads * D;
  const group = numHeads / numKvHeads;
  const n = tokenIds.length;

  if (lora) {
    for (const key of lora.keys()) {
      const [layer, mod] = key.split('.');
      const li = Number(layer);
      const known = Number.isInteger(li) && li >= 0 && li < cfg.numLayers && String(li) === layer &&
        (LORA_MODULES as readonly string[]).includes(mod ?? '') && key.split('.').length === 2;
      if (!known) throw new Error(`reference: unexpected LoRA key "${key}"`);
    }
  }

  /** Linear layer with optional bias and optional LoRA for `${layer}.${module}`. */
  const proj = (x: Vec, layer: number, mod: LoraModule, w: Float32Array, outDim: number, inDim: number,
    bias?: Float32Array): Vec => {
    const y = matVecT(x, w, outDim, inDim, bias);
    const key = `${layer}.${mod}`;
    const pair = lora?.get(key);
    if (pair) addLora(y, x, pair, key, outDim, inDim);
    return y;
  };

  const embed = tensor(weights, 'model.embed_tokens.weight', [V, H]);
  const hs: Vec[] = tokenIds.map((tok) => {
    if (!Number.isInteger(tok) || tok < 0 || tok >= V) throw new Error(`reference: token id ${tok} out of range`);
    return Float64Array.from(embed.subarray(tok * H, (tok + 1) * H));
  });

  const invFreq = inverseFrequencies(cfg);
  const invSqrtD = 1 / Math.sqrt(D);

  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `model.layers.${l}.`;
    const inNorm = tensor(weights, `${p}input_layernorm.weight`, [H]);
    const wq = tensor(weights, `${p}self_attn.q_proj.weight`, [qDim, H]);
    const wk = tensor(weights, `${p}self_attn.k_proj.weight`, [kvDim, H]);
    const wv = tensor(weights, `${p}self_attn.v_proj.weight`, [kvDim, H]);
    const wo = tensor(weights, `${p}self_attn.o_proj.weight`, [H, qDim]);
    const bq = cfg.attentionBias ? tensor(weights, `${p}self_attn.q_proj.bias`, [qDim]) : undefined;
    const bk = cfg.attentionBias ? tensor(weights, `${p}self_attn.k_proj.bias`, [kvDim]) : undefined;
    const bv = cfg.attentionBias ? tensor(weights, `${p}self_attn.v_proj.bias`, [kvDim]) : undefined;
    const postNorm = tensor(weights, `${p}post_attention_layernorm.weight`, [H]);
    const qNorm = cfg.qkNorm ? tensor(weights, `${p}self_attn.q_norm.weight`, [D]) : null;
    const kNorm = cfg.qkNorm ? tensor(weights, `${p}self_attn.k_norm.weight`, [D]) : null;
    const wGate = tensor(weights, `${p}mlp.gate_proj.weight`, [I, H]);
    const wUp = tensor(weights, `${p}mlp.up_proj.weight`, [I, H]);
    const wDown = tensor(weights, `${p}mlp.down_proj.weight`, [H, I]);

    // Attention: project every position first (q, k rotated at their own position).
    const qs: Vec[] = [];
    const ks: Vec[] = [];
    const vs: Vec[] = [];
    for (let t = 0; t < n; t++) {
      const x = rmsNorm(hs[t], inNorm, cfg.rmsNormEps);
      const q = proj(x, l, 'q_proj', wq, qDim, H, bq);
      const k = proj(x, l, 'k_proj', wk, kvDim, H, bk);
      const v = proj(x, l, 'v_proj', wv, kvDim, H, bv);
      if (qNorm && kNorm) {
        rmsNormHeads(q, numHeads, D, qNorm, cfg.rmsNormEps);
        rmsNormHeads(k, numKvHeads, D, kNorm, cfg.rmsNormEps);
      }
      applyRope(q, numHeads, D, t, invFreq);
      applyRope(k, numKvHeads, D, t, invFreq);
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
        for (let s = 0; s <= t; s++) {
          let dot = 0;
          for (let d = 0; d < D; d++) dot += qs[t][qOff + d] * ks[s][kvOff + d];
          scores[s] = dot * invSqrtD;
          if (scores[s] > max) max = scores[s];
        }
        let sum = 0;
        for (let s = 0; s <= t; s++) {
          scores[s] = Math.exp(scores[s] - max);
          sum += scores[s];
        }
        for (let s = 0; s <= t; s++) {
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
      const gate = proj(x, l, 'gate_proj', wGate, I, H);
      const up = proj(x, l, 'up_proj', wUp, I, H);
      const act = new Float64Array(I);
      for (let i = 0; i < I; i++) act[i] = (gate[i] / (1 + Math.exp(-gate[i]))) * up[i];
      const down = proj(act, l, 'down_proj', wDown, H, I);
      for (let i = 0; i < H; i++) hs[t][i] += down[i];
    }
  }

  const finalNorm = tensor(weights, 'model.norm.weight', [H]);
  const head = cfg.tieWordEmbeddings ? embed : tensor(weights, 'lm_head.weight', [V, H]);
  return hs.map((h) => Float32Array.from(matVecT(rmsNorm(h, finalNorm, cfg.rmsNormEps), head, V, H)));
}
