/**
 * Per-row sampling, in place over one row's logits, with scratch buffers reused across tokens and
 * rows (no per-token allocation proportional to the vocabulary).
 *
 * Order: logit_bias → repetition_penalty (prompt + output) → frequency/presence penalties (output)
 * → logprobs are taken here (the request's distribution at temperature 1) → temperature 0: argmax;
 * else temperature → top_k → top_p → min_p → a draw from the row's own seeded generator, so a seed
 * gives the same tokens whatever else shares the batch.
 *
 * Logits that hold NaN or +Inf (a row whose adapter overflows) are refused with `numerical_error`
 * instead of being sampled into garbage; the scan that finds the best token finds them too.
 */
import { LoraplexError } from '../errors.js';

export interface SamplingParams {
  /** 0 = greedy. */
  temperature: number;
  /** 0 = off. */
  topK: number;
  /** 1 = off. */
  topP: number;
  /** 0 = off. */
  minP: number;
  /** 1 = off; > 1 discourages tokens already in the prompt or output (HF semantics). */
  repetitionPenalty: number;
  /** OpenAI semantics over output tokens: logit -= frequency * count + presence * (count > 0). */
  frequencyPenalty: number;
  presencePenalty: number;
  /** token id → bias added to its logit (OpenAI's -100..100). */
  logitBias: ReadonlyMap<number, number> | null;
  /** null = a random seed. */
  seed: number | null;
  /** Alternatives to report per token (0..20); null = no logprobs. */
  logprobs: number | null;
}

export const GREEDY: SamplingParams = Object.freeze({
  temperature: 0,
  topK: 0,
  topP: 1,
  minP: 0,
  repetitionPenalty: 1,
  frequencyPenalty: 0,
  presencePenalty: 0,
  logitBias: null,
  seed: null,
  logprobs: null,
});

export const MAX_LOGPROBS = 20;

/** xoshiro128**: small, fast, seedable; one per row. */
export class Rng {
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;

  constructor(seed: number) {
    // splitmix32 to spread the seed over the state
    let x = seed >>> 0;
    const next = (): number => {
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.s0 = next();
    this.s1 = next();
    this.s2 = next();
    this.s3 = next() || 1;
  }

  /** Uniform in [0, 1). */
  next(): number {
    const result = Math.imul(rotl(Math.imul(this.s1, 5) >>> 0, 7), 9) >>> 0;
    const t = (this.s1 << 9) >>> 0;
    this.s2 ^= this.s0;
    this.s3 ^= this.s1;
    this.s1 ^= this.s2;
    this.s0 ^= this.s3;
    this.s2 ^= t;
    this.s3 = rotl(this.s3, 11);
    return result / 4294967296;
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

export interface TokenLogprob {
  id: number;
  logprob: number;
}

export interface SampleResult {
  id: number;
  /** Present when the row asked for logprobs. */
  logprob?: number;
  top?: TokenLogprob[];
}

/** What the penalties need to know about a row's history. */
export interface RowHistory {
  /** Tokens of the prompt and output so far (repetition penalty). */
  seen: ReadonlySet<number>;
  /** Output token counts (frequency/presence penalties). */
  outputCounts: ReadonlyMap<number, number>;
}

export class Sampler {
  private readonly vocab: number;
  private readonly order: Int32Array;
  private readonly probs: Float32Array;

  constructor(vocabSize: number) {
    this.vocab = vocabSize;
    this.order = new Int32Array(vocabSize);
    this.probs = new Float32Array(vocabSize);
  }

  /** Samples one token from `logits` (modified in place). */
  sample(logits: Float32Array, p: SamplingParams, history: RowHistory, rng: Rng): SampleResult {
    const V = this.vocab;
    if (logits.length !== V) throw new Error(`logits of length ${logits.length}, vocabulary ${V}`);
    if (p.logitBias) for (const [id, bias] of p.logitBias) if (id >= 0 && id < V) logits[id] += bias;
    if (p.repetitionPenalty !== 1) {
      for (const id of history.seen) {
        if (id < 0 || id >= V) continue;
        logits[id] = logits[id] > 0 ? logits[id] / p.repetitionPenalty : logits[id] * p.repetitionPenalty;
      }
    }
    if (p.frequencyPenalty !== 0 || p.presencePenalty !== 0) {
      for (const [id, count] of history.outputCounts) {
        if (id >= 0 && id < V) logits[id] -= p.frequencyPenalty * count + p.presencePenalty;
      }
    }

    const best = checkedArgmax(logits);
    let logZ = 0;
    if (p.logprobs !== null) logZ = logSumExp(logits);

    let id: number;
    if (p.temperature === 0) {
      id = best;
    } else {
      id = this.draw(logits, p, rng, logits[best]);
    }
    if (p.logprobs === null) return { id };
    return { id, logprob: logits[id] - logZ, top: this.topN(logits, Math.min(p.logprobs, MAX_LOGPROBS), logZ) };
  }

  private draw(logits: Float32Array, p: SamplingParams, rng: Rng, max: number): number {
    const V = this.vocab;
    const probs = this.probs;
    const order = this.order;
    const invT = 1 / p.temperature;
    let total = 0;
    for (let i = 0; i < V; i++) {
      const e = Math.exp((logits[i] - max) * invT);
      probs[i] = e;
      total += e;
    }
    // Candidates sorted by probability: the top k when top_k is set; otherwise everything above a
    // small fraction of the best (enough for the nucleus whenever their mass reaches top_p, because
    // every token left out is less likely than every token kept), falling back to the whole vocabulary.
    let n: number;
    if (p.topK > 0 && p.topK < V) {
      n = this.topKIndices(probs, p.topK);
    } else if (p.topP < 1 || p.minP > 0) {
      n = 0;
      const floor = 1e-4; // relative to the most likely token, whose e = 1
      let mass = 0;
      for (let i = 0; i < V; i++) {
        if (probs[i] >= floor) {
          order[n++] = i;
          mass += probs[i];
        }
      }
      if (mass < p.topP * total) {
        n = V;
        for (let i = 0; i < V; i++) order[i] = i;
      }
      sortByProb(order, n, probs);
    } else {
      // Plain temperature sampling over the whole vocabulary.
      let r = rng.next() * total;
      for (let i = 0; i < V; i++) {
        r -= probs[i];
        if (r <= 0) return i;
      }
      return argmax(probs);
    }
    // Restrict to the candidates: top_p keeps the smallest prefix whose mass reaches top_p of the
    // candidates' mass (HF order: top_k, then top_p on the renormalised rest); min_p cuts below
    // min_p times the best.
    let kept = n;
    let candMass = 0;
    for (let j = 0; j < n; j++) candMass += probs[order[j]];
    if (p.topP < 1) {
      let acc = 0;
      for (let j = 0; j < n; j++) {
        acc += probs[order[j]];
        if (acc >= p.topP * candMass) {
          kept = j + 1;
          break;
        }
      }
    }
    if (p.minP > 0) {
      const cut = p.minP * probs[order[0]];
      let j = 1;
      while (j < kept && probs[order[j]] >= cut) j++;
      kept = j;
    }
    let keptMass = 0;
    for (let j = 0; j < kept; j++) keptMass += probs[order[j]];
    let r = rng.next() * keptMass;
    for (let j = 0; j < kept; j++) {
      r -= probs[order[j]];
      if (r <= 0) return order[j];
    }
    return order[kept - 1];
  }

  /** Puts the k largest of `values` into order[0..k) sorted descending; returns k. */
  private topKIndices(values: Float32Array, k: number): number {
    const order = this.order;
    // A min-heap of size k over indices.
    let size = 0;
    const less = (a: number, b: number): boolean => values[a] < values[b] || (values[a] === values[b] && a > b);
    const siftDown = (i: number): void => {
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < size && less(order[l], order[m])) m = l;
        if (r < size && less(order[r], order[m])) m = r;
        if (m === i) return;
        [order[i], order[m]] = [order[m], order[i]];
        i = m;
      }
    };
    for (let i = 0; i < values.length; i++) {
      if (size < k) {
        order[size] = i;
        let c = size++;
        while (c > 0) {
          const parent = (c - 1) >> 1;
          if (!less(order[c], order[parent])) break;
          [order[c], order[parent]] = [order[parent], order[c]];
          c = parent;
        }
      } else if (less(order[0], i)) {
        order[0] = i;
        siftDown(0);
      }
    }
    sortByProb(order, size, values);
    return size;
  }

  /** The logprob of `id` under `logits` (temperature 1, nothing applied) and the `n` most likely tokens. */
  logprobOf(logits: Float32Array, id: number, n: number): { logprob: number; top: TokenLogprob[] } {
    const logZ = logSumExp(logits);
    return { logprob: logits[id] - logZ, top: this.topN(logits, Math.min(n, MAX_LOGPROBS), logZ) };
  }

  private topN(logits: Float32Array, n: number, logZ: number): TokenLogprob[] {
    if (n <= 0) return [];
    const k = this.topKIndices(logits, n);
    const out: TokenLogprob[] = [];
    for (let j = 0; j < k; j++) out.push({ id: this.order[j], logprob: logits[this.order[j]] - logZ });
    return out;
  }
}

/** Sorts order[0..n) by values descending (ties: lower id first). */
function sortByProb(order: Int32Array, n: number, values: Float32Array): void {
  order.subarray(0, n).sort((a, b) => values[b] - values[a] || a - b);
}

/** The index of the largest logit; throws `numerical_error` if any logit is NaN or +Inf, or all are -Inf. */
export function checkedArgmax(a: Float32Array): number {
  let best = 0;
  let bad = false;
  for (let i = 0; i < a.length; i++) {
    const v = a[i];
    if (v !== v || v === Infinity) bad = true;
    else if (v > a[best] || a[best] !== a[best]) best = i;
  }
  if (bad || a[best] === -Infinity) {
    throw new LoraplexError('numerical_error', 'the model produced non-finite logits (NaN or +Inf) for this request, so it was stopped; an adapter whose weights overflow causes this');
  }
  return best;
}

export function argmax(a: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < a.length; i++) if (a[i] > a[best]) best = i;
  return best;
}

export function logSumExp(a: ArrayLike<number>): number {
  let max = -Infinity;
  for (let i = 0; i < a.length; i++) if (a[i] > max) max = a[i];
  if (max === -Infinity) return -Infinity;
  let s = 0;
  for (let i = 0; i < a.length; i++) s += Math.exp(a[i] - max);
  return max + Math.log(s);
}
