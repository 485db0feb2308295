/**
 * How long a step takes, learned from the steps that ran: ms ≈ fixed + perRow·decodeRows +
 * perToken·prefillTokens, fitted by least squares over the recent steps (older steps weigh less,
 * so the fit follows the machine as its load changes). The scheduler asks it how many prompt
 * tokens fit beside this step's decode rows within a target step time: steps are sized by time,
 * not by a token count, so a slow or busy machine gets shorter prefill chunks instead of steps that
 * stall every stream for seconds.
 */

/** Weight of a step in the fit after `n` newer steps: FORGET^n. */
const FORGET = 0.97;
/** Keeps the normal equations solvable before the steps span all three terms. */
const RIDGE = 1e-6;

export class StepTimeModel {
  /** Σ w·x·xᵀ (3×3, row-major) and Σ w·x·y for x = [1, decodeRows, prefillTokens], y = ms. */
  private readonly xx = new Float64Array(9);
  private readonly xy = new Float64Array(3);
  /** Weight of the recent steps that had prefill tokens (the per-token cost is known once it is > 0). */
  private prefillWeight = 0;
  /** Σ w·ms and Σ w·tokens over the steps with prefill tokens (their average cost per prompt token). */
  private prefillMs = 0;
  private prefillTokens = 0;

  observe(decodeRows: number, prefillTokens: number, ms: number): void {
    if (!(ms >= 0 && Number.isFinite(ms))) return;
    const x = [1, decodeRows, prefillTokens];
    for (let i = 0; i < 9; i++) this.xx[i] *= FORGET;
    for (let i = 0; i < 3; i++) this.xy[i] *= FORGET;
    for (let i = 0; i < 3; i++) {
      for (let j = 0; j < 3; j++) this.xx[i * 3 + j] += x[i] * x[j];
      this.xy[i] += x[i] * ms;
    }
    this.prefillWeight = this.prefillWeight * FORGET + (prefillTokens > 0 ? 1 : 0);
    this.prefillMs = this.prefillMs * FORGET + (prefillTokens > 0 ? ms : 0);
    this.prefillTokens = this.prefillTokens * FORGET + prefillTokens;
  }

  /** [fixed ms, ms per decode row, ms per prefill token], or null before any step with prefill. */
  fit(): [number, number, number] | null {
    if (this.prefillWeight < 0.5) return null;
    const a = Array.from(this.xx);
    for (let i = 0; i < 3; i++) a[i * 4] += RIDGE * (1 + a[i * 4]);
    return solve3(a, Array.from(this.xy));
  }

  /**
   * Prompt tokens that fit beside `decodeRows` decode rows in `targetMs`, between `min` and `max`
   * (`max` itself while nothing is known).
   *
   * A prompt token is never free: when the fit says it costs nothing or less (a few noisy steps
   * can, e.g. a small model's prompt step that ran faster than a decode step), it is charged what
   * prompt steps cost on average per token, an over-estimate (it includes their fixed cost), so
   * the step stays under the target.
   */
  prefillBudget(decodeRows: number, targetMs: number, min: number, max: number): number {
    const f = this.fit();
    if (!f) return max;
    const perToken = f[2] > 0 ? f[2] : this.prefillMs / this.prefillTokens;
    if (!(perToken > 0)) return max;
    const room = targetMs - Math.max(0, f[0]) - Math.max(0, f[1]) * decodeRows;
    return Math.max(min, Math.min(max, Math.floor(room / perToken)));
  }
}

/** Solves a 3×3 system by Gaussian elimination with partial pivoting (null when singular). */
function solve3(a: number[], b: number[]): [number, number, number] | null {
  for (let c = 0; c < 3; c++) {
    let p = c;
    for (let r = c + 1; r < 3; r++) if (Math.abs(a[r * 3 + c]) > Math.abs(a[p * 3 + c])) p = r;
    if (Math.abs(a[p * 3 + c]) < 1e-12) return null;
    if (p !== c) {
      for (let k = 0; k < 3; k++) [a[c * 3 + k], a[p * 3 + k]] = [a[p * 3 + k], a[c * 3 + k]];
      [b[c], b[p]] = [b[p], b[c]];
    }
    for (let r = c + 1; r < 3; r++) {
      const m = a[r * 3 + c] / a[c * 3 + c];
      for (let k = c; k < 3; k++) a[r * 3 + k] -= m * a[c * 3 + k];
      b[r] -= m * b[c];
    }
  }
  const x = [0, 0, 0];
  for (let r = 2; r >= 0; r--) {
    let s = b[r];
    for (let k = r + 1; k < 3; k++) s -= a[r * 3 + k] * x[k];
    x[r] = s / a[r * 3 + r];
  }
  return [x[0], x[1], x[2]];
}
