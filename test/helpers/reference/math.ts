/**
 * The reference's arithmetic, shared by its families: tensors by name with shape checks, y = x·Wᵀ,
 * unmerged LoRA, RMSNorm, rotary embeddings. Float64 throughout; nothing from src/.
 */
import type { RefLoraPair, RefModelConfig, RefWeights } from '../model-types.js';

export type Vec = Float64Array;

/** Fetches a tensor by HF name, checking that it exists and has the expected shape. */
export function tensor(weights: RefWeights, name: string, shape: readonly number[]): Float32Array {
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
export function matVecT(x: Vec, w: Float32Array, outDim: number, inDim: number, bias?: Float32Array): Vec {
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
export function addLora(y: Vec, x: Vec, pair: RefLoraPair, key: string, outDim: number, inDim: number): void {
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

/**
 * A DoRA module's output as PEFT's DoRA forward computes it (fp32 reference, float64 here):
 * y = m / ‖W + s·B·A‖ ⊙ (x·Wᵀ + s·x·Aᵀ·Bᵀ) + bias, the norm over each output row of W + s·B·A.
 */
export function doraLinear(x: Vec, w: Float32Array, pair: RefLoraPair, key: string, outDim: number, inDim: number, bias?: Float32Array): Vec {
  const m = pair.magnitude!;
  if (m.shape.length !== 1 || m.shape[0] !== outDim) throw new Error(`reference: DoRA magnitude of "${key}" has shape [${m.shape}], expected [${outDim}]`);
  const y = matVecT(x, w, outDim, inDim);
  addLora(y, x, pair, key, outDim, inDim);
  const r = pair.a.shape[0];
  const row = new Float64Array(inDim);
  for (let o = 0; o < outDim; o++) {
    // Row o of W + s·B·A.
    for (let i = 0; i < inDim; i++) row[i] = w[o * inDim + i];
    for (let k = 0; k < r; k++) {
      const bs = pair.scale * pair.b.data[o * r + k];
      for (let i = 0; i < inDim; i++) row[i] += bs * pair.a.data[k * inDim + i];
    }
    let norm = 0;
    for (let i = 0; i < inDim; i++) norm += row[i] * row[i];
    y[o] = (m.data[o] / Math.sqrt(norm)) * y[o] + (bias ? bias[o] : 0);
  }
  return y;
}

/** v / sqrt(mean(v^2) + eps) * w */
export function rmsNorm(v: Vec, w: Float32Array, eps: number): Vec {
  let ss = 0;
  for (let i = 0; i < v.length; i++) ss += v[i] * v[i];
  const inv = 1 / Math.sqrt(ss / v.length + eps);
  const out = new Float64Array(v.length);
  for (let i = 0; i < v.length; i++) out[i] = v[i] * inv * w[i];
  return out;
}

/** In place: RMSNorm of each head (numHeads × headDim) with the per-dimension weight w [headDim]. */
export function rmsNormHeads(x: Vec, numHeads: number, headDim: number, w: Float32Array, eps: number): void {
  for (let h = 0; h < numHeads; h++) {
    const head = rmsNorm(x.subarray(h * headDim, (h + 1) * headDim), w, eps);
    x.set(head, h * headDim);
  }
}

/** Rotary inverse frequencies (length headDim/2), with optional Llama 3 scaling. */
export function inverseFrequencies(cfg: RefModelConfig, seqLen = 0): Vec {
  const dim = cfg.rotaryDim ?? cfg.headDim;
  const half = dim / 2;
  const invFreq = new Float64Array(half);
  for (let i = 0; i < half; i++) invFreq[i] = 1 / Math.pow(cfg.ropeTheta, (2 * i) / dim);
  const lr = cfg.longRope;
  if (lr) {
    // transformers: the long factors once the sequence is longer than the original context.
    const f = seqLen > lr.original ? lr.long : lr.short;
    for (let i = 0; i < half; i++) invFreq[i] /= f[i];
    return invFreq;
  }
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
export function applyRope(x: Vec, numHeads: number, headDim: number, pos: number, invFreq: Vec): void {
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

