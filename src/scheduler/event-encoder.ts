/** Turns what the engine did into the events it sends: tokens with their logprobs, ends, errors, prompt logprobs. */
import { toWireError } from '../errors.js';
import type { FinishReason, SampledToken } from '../runtime/generation.js';
import type { Sampler } from '../runtime/sampling.js';
import type { TextTokenizer } from '../runtime/tokenizer.js';
import type { LiveRequest } from './live-request.js';
import type { EngineEvent } from './request.js';
import type { PlannedRow } from './state.js';

export const errorEvent = (id: number, err: unknown): EngineEvent => ({ t: 'error', id, error: toWireError(err) });

export class EventEncoder {
  private readonly tokenizer: TextTokenizer | null;
  private readonly sampler: Sampler;

  constructor(tokenizer: TextTokenizer | null, sampler: Sampler) {
    this.tokenizer = tokenizer;
    this.sampler = sampler;
  }

  token(id: number, e: SampledToken): EngineEvent {
    const withLogprobs = e.logprob !== undefined;
    return {
      t: 'token',
      id,
      token: e.id,
      text: e.text,
      tokenText: withLogprobs ? this.piece(e.id) : undefined,
      logprob: e.logprob,
      top: e.top?.map((t) => ({ id: t.id, logprob: t.logprob, text: this.piece(t.id) })),
      special: e.special,
    };
  }

  end(live: LiveRequest, finishReason: FinishReason): EngineEvent {
    return { t: 'end', id: live.req.id, finishReason, completionTokens: live.gen.output.length, promptTokens: live.req.promptIds.length, cachedTokens: live.cachedTokens ?? 0, stopString: live.gen.stoppedBy };
  }

  /**
   * Logprobs of the prompt tokens a prefill chunk predicts (position p's logits predict token
   * p + 1); `first` is the chunk's first row in `logits`. Null when the chunk predicts none.
   */
  promptLogprobs(live: LiveRequest, row: PlannedRow, logits: Float32Array, first: number, V: number): EngineEvent | null {
    const prompt = live.req.promptIds;
    const tokens: Extract<EngineEvent, { t: 'prompt_logprobs' }>['tokens'] = [];
    if (row.start === 0) tokens.push({ token: prompt[0], text: this.piece(prompt[0]), logprob: null, top: [] });
    for (let j = 0; j < row.count && row.start + j + 1 < prompt.length; j++) {
      const next = prompt[row.start + j + 1];
      const lp = this.sampler.logprobOf(logits.subarray((first + j) * V, (first + j + 1) * V), next, live.req.promptLogprobs!);
      tokens.push({ token: next, text: this.piece(next), logprob: lp.logprob, top: lp.top.map((t) => ({ id: t.id, logprob: t.logprob, text: this.piece(t.id) })) });
    }
    return tokens.length > 0 ? { t: 'prompt_logprobs', id: live.req.id, from: row.start === 0 ? 0 : row.start + 1, tokens } : null;
  }

  /** One token's text on its own (logprobs responses). */
  private piece(id: number): string {
    return this.tokenizer ? this.tokenizer.decode([id], false) : String(id);
  }
}
