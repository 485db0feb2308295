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
 * layout (a [in, rank], b [rank, out] with the scale s folded in). Accumulates in float64.
 */
export function doraScale(w: Float32Array, f: LoraFactor, m: Float32Array, what: string): Float32Array {
  const { rank, a, b } = f;
  const dout = m.length;
  const din = a.length / rank;
  if (w.length !== dout * din || b.length !== rank * dout) throw new Error(`${what}: base weight and factors disagree in shape`);
  const g = new Float32Array(dout);
  const bi = new Float64Array(rank);
  for (let i = 0; i < dout; i++) {
    for (let r = 0; r < rank; r++) bi[r] = b[r * dout + i];
    let sum = 0;
    const row = i * din;
    for (let j = 0; j < din; j++) {
      let v = w[row + j];
      const aj = j * rank;
      for (let r = 0; r < rank; r++) v += a[aj + r] * bi[r];
      sum += v * v;
    }
    const scale = m[i] / Math.sqrt(sum);
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
