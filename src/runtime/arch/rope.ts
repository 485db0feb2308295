/**
 * Rotary position embeddings: the scalings families configure and the cos/sin tables the decoder
 * turns into initializers. Which scaling a checkpoint may use is its family's call (arch/*.ts).
 */

/** Llama 3: low frequencies divided by `factor`, high ones kept, a smooth ramp between. */
export interface Llama3RopeScaling {
  ropeType: 'llama3';
  factor: number;
  lowFreqFactor: number;
  highFreqFactor: number;
  originalMaxPositionEmbeddings: number;
}

/** Position indices divided by `factor` (Gemma 3's global layers). */
export interface LinearRopeScaling {
  ropeType: 'linear';
  factor: number;
}

/**
 * Phi-3's LongRoPE (`longrope`, formerly `su`): per-frequency divisors, `shortFactor` for positions
 * within the original context and `longFactor` beyond it, and cos/sin scaled by `attentionFactor`.
 */
export interface LongRopeScaling {
  ropeType: 'longrope';
  shortFactor: number[];
  longFactor: number[];
  originalMaxPositionEmbeddings: number;
  attentionFactor: number;
}

export type RopeScaling = Llama3RopeScaling | LinearRopeScaling | LongRopeScaling;

/** What a rotary table is computed from (a model spec is one; a family may derive others, e.g. for its sliding layers). */
export interface Rope {
  ropeTheta: number;
  /** Dimensions of each head that RoPE rotates (the first ones; Phi-4-mini's partial_rotary_factor). */
  rotaryDim: number;
  ropeScaling: RopeScaling | null;
}

/** Rotary inverse frequencies [rotaryDim/2], scaled as configured (`long`: LongRoPE's long factors). */
export function ropeInvFreq(rope: Rope, long = false): Float64Array {
  const half = rope.rotaryDim / 2;
  const inv = new Float64Array(half);
  for (let i = 0; i < half; i++) inv[i] = 1 / Math.pow(rope.ropeTheta, (2 * i) / rope.rotaryDim);
  const s = rope.ropeScaling;
  if (s?.ropeType === 'longrope') {
    const f = long ? s.longFactor : s.shortFactor;
    for (let i = 0; i < half; i++) inv[i] /= f[i];
  } else if (s?.ropeType === 'linear') {
    for (let i = 0; i < half; i++) inv[i] /= s.factor;
  } else if (s) {
    const lowWavelen = s.originalMaxPositionEmbeddings / s.lowFreqFactor;
    const highWavelen = s.originalMaxPositionEmbeddings / s.highFreqFactor;
    for (let i = 0; i < half; i++) {
      const wavelen = (2 * Math.PI) / inv[i];
      if (wavelen < highWavelen) continue;
      if (wavelen > lowWavelen) {
        inv[i] /= s.factor;
      } else {
        const smooth = (s.originalMaxPositionEmbeddings / wavelen - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor);
        inv[i] = ((1 - smooth) * inv[i]) / s.factor + smooth * inv[i];
      }
    }
  }
  return inv;
}

/**
 * cos and sin [maxPositions, rotaryDim/2] of position × inverse frequency. LongRoPE: positions past
 * the original context use the long factors, and both tables carry its attention factor.
 */
export function rotaryTable(rope: Rope, maxPositions: number): { cos: Float32Array; sin: Float32Array; half: number } {
  const inv = ropeInvFreq(rope);
  const s = rope.ropeScaling;
  const long = s?.ropeType === 'longrope' ? { from: s.originalMaxPositionEmbeddings, inv: ropeInvFreq(rope, true), scale: s.attentionFactor } : null;
  const half = inv.length;
  const cos = new Float32Array(maxPositions * half);
  const sin = new Float32Array(maxPositions * half);
  for (let pos = 0; pos < maxPositions; pos++) {
    const f = long && pos >= long.from ? long.inv : inv;
    const scale = long?.scale ?? 1;
    for (let i = 0; i < half; i++) {
      const angle = pos * f[i];
      cos[pos * half + i] = Math.cos(angle) * scale;
      sin[pos * half + i] = Math.sin(angle) * scale;
    }
  }
  return { cos, sin, half };
}
