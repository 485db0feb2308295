/**
 * DoRA (weight-decomposed LoRA, PEFT `use_dora`): a module's weight becomes
 * W' = m ⊙ (W + s·B·A) / ‖W + s·B·A‖, the norm taken per output row over the input dimension, so
 * y = g ⊙ (x·Wᵀ + s·x·Aᵀ·Bᵀ) + b with one vector g = m / ‖W + s·B·A‖ per module.
 *
 * g is computed here, once per load, from the checkpoint's full-precision W (not the served,
 * quantized one): it is then the g the adapter was trained with whatever format serves the base,
 * and the same for every format. The slots take it in two parts: g folded into B (so the LoRA
 * delta is already g ⊙ s·x·Aᵀ·Bᵀ) and g − 1, which the graph multiplies with the base output
 * (without its bias) and adds. For plain LoRA slots g − 1 is exactly 0, so their rows are
 * computed exactly as without DoRA.
 */
import { AdapterInvalidError } from '../errors.js';
import type { LoraFactor } from '../runtime/lora-stacks.js';

/**
 * The largest |m| accepted in a magnitude vector. m starts as the row norms of the base weight
 * (order 1–100 for real models); values far beyond only overflow the activations.
 */
export const MAX_DORA_MAGNITUDE = 1e4;
/** The largest |g| accepted at load: a trained DoRA module rescales its rows by a few percent. */
export const MAX_DORA_SCALE = 1e3;

/** Throws AdapterInvalidError unless every magnitude is finite and within MAX_DORA_MAGNITUDE. */
export function checkMagnitudes(m: Float32Array, what: string): void {
  for (let i = 0; i < m.length; i++) {
    const v = m[i];
    if (!(Math.abs(v) <= MAX_DORA_MAGNITUDE)) {
      throw new AdapterInvalidError(`${what} holds ${v} at index ${i}; DoRA magnitudes must be finite and at most ${MAX_DORA_MAGNITUDE} in size`, 'adapter_model');
    }
  }
}

/**
 * g = m / ‖W + s·B·A‖ per output row. `w` is the base weight [out, in]; `f` the factor in runtime
 * layout (a [in, rank], b [rank, out] with the scale s folded in). Row i's squared norm is
 * ‖wᵢ‖² + 2·Σᵣ bᵢᵣ·(wᵢ·aᵣ) + bᵢᵀ·(A·Aᵀ)·bᵢ, accumulated in float64: the products wᵢ·aᵣ are the only
 * [out × in × rank] work, done as contiguous dot products four ranks at a time.
 */
export function doraScale(w: Float32Array, f: LoraFactor, m: Float32Array, what: string): Float32Array {
  const { rank, a, b } = f;
  const dout = m.length;
  const din = a.length / rank;
  if (w.length !== dout * din || b.length !== rank * dout) throw new Error(`${what}: base weight and factors disagree in shape`);
  // Aᵀ [rank, in] (rows contiguous), padded to a multiple of 4 rows of zeros; and the Gram A·Aᵀ.
  const rank4 = Math.ceil(rank / 4) * 4;
  const at = new Float64Array(rank4 * din);
  for (let j = 0; j < din; j++) for (let r = 0; r < rank; r++) at[r * din + j] = a[j * rank + r];
  const gram = new Float64Array(rank * rank);
  for (let r = 0; r < rank; r++) {
    for (let q = 0; q <= r; q++) {
      let s = 0;
      for (let j = 0; j < din; j++) s += at[r * din + j] * at[q * din + j];
      gram[r * rank + q] = gram[q * rank + r] = s;
    }
  }
  const g = new Float32Array(dout);
  const wa = new Float64Array(rank4);
  for (let i = 0; i < dout; i++) {
    const row = i * din;
    let ww = 0;
    for (let j = 0; j < din; j++) ww += w[row + j] * w[row + j];
    for (let r = 0; r < rank4; r += 4) {
      let s0 = 0;
      let s1 = 0;
      let s2 = 0;
      let s3 = 0;
      const o0 = r * din;
      for (let j = 0; j < din; j++) {
        const x = w[row + j];
        s0 += x * at[o0 + j];
        s1 += x * at[o0 + din + j];
        s2 += x * at[o0 + 2 * din + j];
        s3 += x * at[o0 + 3 * din + j];
      }
      wa[r] = s0;
      wa[r + 1] = s1;
      wa[r + 2] = s2;
      wa[r + 3] = s3;
    }
    let cross = 0;
    let lora = 0;
    for (let r = 0; r < rank; r++) {
      const br = b[r * dout + i];
      cross += br * wa[r];
      let s = 0;
      for (let q = 0; q < rank; q++) s += gram[r * rank + q] * b[q * dout + i];
      lora += br * s;
    }
    const sum = ww + 2 * cross + lora;
    const scale = m[i] / Math.sqrt(Math.max(sum, 0));
    if (!(Math.abs(scale) <= MAX_DORA_SCALE)) {
      throw new AdapterInvalidError(
        `${what}: row ${i} gets the DoRA scale ${scale} (magnitude ${m[i]} over the row norm ${Math.sqrt(sum)} of W + s·B·A); it must be finite and at most ${MAX_DORA_SCALE} in size`,
        'adapter_model',
      );
    }
    g[i] = scale;
  }
  return g;
}

/** The factor with g folded into B (columns of b [rank, out] scaled by g) and g kept for the slots. */
export function withDoraScale(f: LoraFactor, g: Float32Array): LoraFactor {
  const dout = g.length;
  const b = f.b.slice();
  for (let r = 0; r < f.rank; r++) for (let i = 0; i < dout; i++) b[r * dout + i] *= g[i];
  return { ...f, b, doraScale: g };
}
