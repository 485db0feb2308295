/**
 * DoRA (weight-decomposed LoRA, PEFT `use_dora`): a module's weight becomes
 * W' = m ⊙ (W + s·B·A) / ‖W + s·B·A‖, the norm taken per output row over the input dimension, so
 * y = g ⊙ (x·Wᵀ + s·x·Aᵀ·Bᵀ) + b with one vector g = m / ‖W + s·B·A‖ per module.
 *
 * g is computed once per load, on the loader thread, from the checkpoint's full-precision W (not
 * the served, quantized one): it is then the g the adapter was trained with whatever format serves the base,
 * and the same for every format. The slots take it in two parts: g folded into B (so the LoRA
 * delta is already g ⊙ s·x·Aᵀ·Bᵀ) and g − 1, which the graph multiplies with the base output
 * (without its bias) of the DoRA rows' tokens and adds. Plain LoRA and base rows never enter that
 * term, so they are computed exactly as without DoRA.
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
 * g = m / ‖W + s·B·A‖ per output row, from the row norms (runtime/row-norms.ts computes them from
 * the base weight and the factors). Throws AdapterInvalidError for a scale that is not finite or
 * beyond MAX_DORA_SCALE (a zero-norm row, or a magnitude far from the row's norm).
 */
export function doraScale(norms: Float32Array, m: Float32Array, what: string): Float32Array {
  const g = new Float32Array(m.length);
  for (let i = 0; i < m.length; i++) {
    const scale = m[i] / norms[i];
    if (!(Math.abs(scale) <= MAX_DORA_SCALE)) {
      throw new AdapterInvalidError(
        `${what}: row ${i} gets the DoRA scale ${scale} (magnitude ${m[i]} over the row norm ${norms[i]} of W + s·B·A); it must be finite and at most ${MAX_DORA_SCALE} in size`,
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
