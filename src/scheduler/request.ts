/**
 * The hand-off between the HTTP layer and the engine. The engine accepts only a `ValidRequest`:
 * the prompt already as token ids, the adapter resolved, sampling and stopping validated and
 * clamped. Nothing that costs more than O(prompt) to check — tokenizing, rendering a chat template,
 * parsing wire fields — ever runs on the engine thread, so no request can slow everyone's steps.
 */
import type { WireError } from '../errors.js';
import type { FinishReason } from '../runtime/generation.js';
import type { GrammarSpec } from '../runtime/grammar/compiler.js';
import type { SamplingParams } from '../runtime/sampling.js';
import type { AdapterSpec } from '../adapters/spec.js';

export type { AdapterSpec } from '../adapters/spec.js';

export interface StopSpec {
  /** Tokens to generate at most (the server resolves "as many as the context allows"). */
  maxNewTokens: number;
  stopStrings: string[];
  stopTokenIds: number[];
  ignoreEos: boolean;
  /** Tokens to generate before EOS, stop ids or stop strings may end the request (0: none). */
  minTokens: number;
}

export interface ValidRequest {
  id: number;
  /** The prompt's token ids, each inside the vocabulary; prompt + maxNewTokens fits the context. */
  promptIds: Int32Array;
  /** null = the base model. */
  adapter: AdapterSpec | null;
  sampling: SamplingParams;
  stop: StopSpec;
  /** Milliseconds from submission to the deadline. */
  timeoutMs: number;
  /**
   * Who the request belongs to, for the fair share of batch rows: an opaque digest of its API key
   * (never the key itself). Absent or null: the server has no keys, and rows are shared per adapter.
   */
  tenant?: string | null;
  /**
   * Report each prompt token's logprob (and this many alternatives) as the prompt is read; null =
   * no. Its prefill computes logits for every prompt token, so the server caps the prompt's length.
   */
  promptLogprobs: number | null;
  /** Constrain the output to this grammar (compiled beforehand with the engine's compileGrammar); null = free text. */
  grammar: GrammarSpec | null;
  /**
   * Prefix-cache partition: only requests with the same partition share cached KV blocks ('' = the
   * shared one). An opaque digest (of the API key and cache_salt), never a key itself.
   */
  cachePartition: string;
}

/** A token with its logprob and its text (for logprobs responses). */
export interface TokenLogprobText {
  id: number;
  logprob: number;
  text: string;
}

export type EngineEvent =
  /** The request took a batch row for the first time (it is no longer waiting). */
  | { t: 'running'; id: number }
  | {
      t: 'token';
      id: number;
      token: number;
      /** Text that became final with this token (stop strings and partial characters held back). */
      text: string;
      /** With logprobs: the token's own text, its logprob and the top alternatives. */
      tokenText?: string;
      logprob?: number;
      top?: TokenLogprobText[];
      special: boolean;
    }
  /** Prompt tokens `from`.. with their logprobs (the first prompt token has none: null). */
  | { t: 'prompt_logprobs'; id: number; from: number; tokens: PromptTokenLogprob[] }
  /** `cachedTokens`: prompt tokens whose KV came from the prefix cache. */
  /** `stopString`: the stop string that ended it (null or absent: none did). */
  | { t: 'end'; id: number; finishReason: FinishReason; completionTokens: number; promptTokens: number; cachedTokens: number; stopString?: string | null }
  | { t: 'error'; id: number; error: WireError };

export interface PromptTokenLogprob {
  token: number;
  text: string;
  logprob: number | null;
  top: TokenLogprobText[];
}

export type TokenEngineEvent = Extract<EngineEvent, { t: 'token' }>;
