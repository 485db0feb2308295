/**
 * Sampling parameters from a request (OpenAI field names, as the HTTP API and the CLI take them) →
 * validated SamplingParams. Each error names the field, the allowed range and the value.
 */
import { ValidationError } from '../errors.js';
import { GREEDY, MAX_LOGPROBS, type SamplingParams } from '../runtime/sampling.js';

/** Most logit_bias entries a request may carry (each is applied to every token it samples). */
export const MAX_LOGIT_BIAS = 1024;

export interface RawSampling {
  temperature?: unknown;
  top_p?: unknown;
  top_k?: unknown;
  min_p?: unknown;
  repetition_penalty?: unknown;
  frequency_penalty?: unknown;
  presence_penalty?: unknown;
  logit_bias?: unknown;
  seed?: unknown;
  /** Alternatives per token (0..20), or null for none. */
  logprobs?: unknown;
}

function num(raw: RawSampling, key: keyof RawSampling, def: number, min: number, max: number, opts: { minExclusive?: boolean; integer?: boolean } = {}): number {
  const v = raw[key];
  if (v === undefined || v === null) return def;
  const ok =
    typeof v === 'number' &&
    Number.isFinite(v) &&
    (opts.minExclusive ? v > min : v >= min) &&
    v <= max &&
    (!opts.integer || Number.isInteger(v));
  if (!ok) {
    const range = `${opts.minExclusive ? '>' : '>='} ${min} and <= ${max}`;
    throw new ValidationError(`${key} must be ${opts.integer ? 'an integer' : 'a number'} ${range}; given ${JSON.stringify(v)}`, key);
  }
  return v as number;
}

/** Temperatures below this are greedy. */
export const MIN_TEMPERATURE = 1e-5;

const greedyBelow = (t: number): number => (t < MIN_TEMPERATURE ? 0 : t);

export function parseSampling(raw: RawSampling, vocabSize: number): SamplingParams {
  let logitBias: Map<number, number> | null = null;
  if (raw.logit_bias != null) {
    if (typeof raw.logit_bias !== 'object' || Array.isArray(raw.logit_bias)) {
      throw new ValidationError('logit_bias must be an object mapping token ids to numbers', 'logit_bias');
    }
    const entries = Object.entries(raw.logit_bias as Record<string, unknown>);
    if (entries.length > MAX_LOGIT_BIAS) throw new ValidationError(`logit_bias may hold at most ${MAX_LOGIT_BIAS} entries; given ${entries.length}`, 'logit_bias');
    logitBias = new Map();
    for (const [k, v] of entries) {
      const id = Number(k);
      if (!/^\d+$/.test(k) || id >= vocabSize) throw new ValidationError(`logit_bias key ${JSON.stringify(k)} is not a token id (0..${vocabSize - 1})`, 'logit_bias');
      if (typeof v !== 'number' || !(v >= -100 && v <= 100)) throw new ValidationError(`logit_bias[${k}] must be a number >= -100 and <= 100; given ${JSON.stringify(v)}`, 'logit_bias');
      logitBias.set(id, v);
    }
    if (logitBias.size === 0) logitBias = null;
  }
  let seed: number | null = null;
  if (raw.seed != null) {
    if (typeof raw.seed !== 'number' || !Number.isSafeInteger(raw.seed)) throw new ValidationError(`seed must be an integer; given ${JSON.stringify(raw.seed)}`, 'seed');
    // Fold 64-bit seeds into the generator's 32 bits.
    seed = Number(BigInt.asUintN(32, BigInt(raw.seed) ^ (BigInt(raw.seed) >> 32n)));
  }
  return {
    // Temperatures this close to 0 are greedy (as in vLLM): 1/T would overflow the softmax.
    temperature: greedyBelow(num(raw, 'temperature', 1, 0, 2)),
    topP: num(raw, 'top_p', GREEDY.topP, 0, 1, { minExclusive: true }),
    topK: num(raw, 'top_k', 0, -1, vocabSize, { integer: true }) === -1 ? 0 : num(raw, 'top_k', 0, -1, vocabSize, { integer: true }),
    minP: num(raw, 'min_p', 0, 0, 1),
    // Below 0.01 the penalty divides logits into infinities.
    repetitionPenalty: num(raw, 'repetition_penalty', 1, 0.01, 10),
    frequencyPenalty: num(raw, 'frequency_penalty', 0, -2, 2),
    presencePenalty: num(raw, 'presence_penalty', 0, -2, 2),
    logitBias,
    seed,
    logprobs: raw.logprobs == null ? null : num(raw, 'logprobs', 0, 0, MAX_LOGPROBS, { integer: true }),
  };
}
