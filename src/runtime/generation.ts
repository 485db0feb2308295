/**
 * One sequence's generation state: its sampling parameters and generator, the history the penalties
 * read, streaming detokenization and stop criteria. Each sequence stops and retires on its own.
 */
import { IncrementalDetokenizer, type Decoder } from './detokenizer.js';
import { Rng, type SampleResult, type Sampler, type SamplingParams, type TokenLogprob } from './sampling.js';
import { StopStringMatcher } from './stopping.js';

export type FinishReason = 'stop' | 'length';

export interface StopCriteria {
  /** Tokens to generate at most. */
  maxNewTokens: number;
  /** End-of-sequence ids (generation_config may list several). */
  eosIds: ReadonlySet<number>;
  /** Extra ids that end generation (not included in the text). */
  stopTokenIds: ReadonlySet<number>;
  /** Strings that end generation; the match and what follows are not included. */
  stopStrings: readonly string[];
  /** Keep going past EOS (benchmarks). */
  ignoreEos?: boolean;
  /**
   * Tokens to generate at least (vLLM's min_tokens): before that, EOS and stop token ids cannot be
   * sampled and stop strings are not looked for.
   */
  minTokens?: number;
}

export interface SampledToken {
  id: number;
  /** Text that became final with this token (may be ''). */
  text: string;
  logprob?: number;
  top?: TokenLogprob[];
  /** Set on the last token of the sequence. */
  finishReason: FinishReason | null;
  /** True when this token is a stop/EOS token (counted, but contributes no text). */
  special: boolean;
}

export class Generation {
  readonly params: SamplingParams;
  readonly stop: StopCriteria;
  readonly output: number[] = [];
  finishReason: FinishReason | null = null;
  /** The stop string that ended the generation (null: none did). */
  stoppedBy: string | null = null;
  private readonly rng: Rng;
  private readonly seen: Set<number>;
  private readonly counts = new Map<number, number>();
  private readonly detok: IncrementalDetokenizer | null;
  private readonly matcher: StopStringMatcher;

  constructor(prompt: ArrayLike<number> & Iterable<number>, params: SamplingParams, stop: StopCriteria, decoder: Decoder | null) {
    this.params = params;
    this.stop = stop;
    this.rng = new Rng(params.seed ?? Math.floor(Math.random() * 2 ** 32));
    this.seen = new Set(params.repetitionPenalty !== 1 ? prompt : []);
    this.detok = decoder ? new IncrementalDetokenizer(decoder, prompt) : null;
    this.matcher = new StopStringMatcher(decoder ? stop.stopStrings : []);
  }

  get done(): boolean {
    return this.finishReason !== null;
  }

  /** Samples the next token from this row's logits (modified in place) and applies the stop criteria. */
  next(logits: Float32Array, sampler: Sampler): SampledToken {
    if (this.done) throw new Error('generation already finished');
    if (this.output.length < (this.stop.minTokens ?? 0)) {
      if (!this.stop.ignoreEos) for (const id of this.stop.eosIds) if (id < logits.length) logits[id] = -Infinity;
      for (const id of this.stop.stopTokenIds) if (id < logits.length) logits[id] = -Infinity;
    }
    const r: SampleResult = sampler.sample(logits, this.params, { seen: this.seen, outputCounts: this.counts }, this.rng);
    return this.accept(r);
  }

  /** Applies a token chosen elsewhere (forced or sampled) to the state. */
  accept(r: SampleResult): SampledToken {
    const id = r.id;
    this.output.push(id);
    const isEos = !this.stop.ignoreEos && this.stop.eosIds.has(id);
    const event: SampledToken = { id, text: '', logprob: r.logprob, top: r.top, finishReason: null, special: false };
    if (isEos || this.stop.stopTokenIds.has(id)) {
      event.special = true;
      event.text = this.flushText().text;
      return this.finish(event, 'stop');
    }
    if (this.params.repetitionPenalty !== 1) this.seen.add(id);
    if (this.params.frequencyPenalty !== 0 || this.params.presencePenalty !== 0) this.counts.set(id, (this.counts.get(id) ?? 0) + 1);
    if (this.detok && this.output.length <= (this.stop.minTokens ?? 0)) {
      event.text = this.detok.push(id);
    } else if (this.detok) {
      const m = this.matcher.push(this.detok.push(id));
      event.text = m.text;
      if (m.stopped) {
        this.stoppedBy = m.stop ?? null;
        return this.finish(event, 'stop');
      }
    }
    if (this.output.length >= this.stop.maxNewTokens) {
      const tail = this.flushText();
      event.text += tail.text;
      return this.finish(event, tail.stopped ? 'stop' : 'length');
    }
    return event;
  }

  /** Text held back by the detokenizer and the stop matcher; `stopped` when it completed a stop string. */
  private flushText(): { text: string; stopped: boolean } {
    if (!this.detok) return { text: '', stopped: false };
    const m = this.matcher.push(this.detok.flush());
    if (m.stopped) this.stoppedBy = m.stop ?? null;
    return m.stopped ? m : { text: m.text + this.matcher.flush(), stopped: false };
  }

  private finish(event: SampledToken, reason: FinishReason): SampledToken {
    this.finishReason = reason;
    event.finishReason = reason;
    return event;
  }
}
