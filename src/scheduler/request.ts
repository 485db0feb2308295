/**
 * The hand-off between the HTTP layer and the engine: a validated request (token ids or text to
 * tokenize, the resolved adapter, sampling and stopping) and the events that come back.
 */
import type { ChatMessage } from '../runtime/chat-template.js';
import type { FinishReason } from '../runtime/generation.js';
import type { SamplingParams } from '../runtime/sampling.js';

/** A token with its logprob and its text (for logprobs responses). */
export interface TokenAlt {
  id: number;
  logprob: number;
  text: string;
}

export type PromptInput =
  | { kind: 'ids'; ids: number[] }
  | { kind: 'text'; text: string }
  | { kind: 'chat'; messages: ChatMessage[]; tools: unknown[] | null; addGenerationPrompt: boolean };

/** One adapter version on disk. */
export interface AdapterSource {
  /** Cache/slot key: id@version. */
  key: string;
  name: string;
  dir: string;
}

export type AdapterSpec =
  | ({ kind: 'single' } & AdapterSource)
  | { kind: 'merge'; key: string; name: string; parts: (AdapterSource & { weight: number })[] };

export interface EngineRequest {
  id: number;
  prompt: PromptInput;
  /** null = the base model. */
  adapter: AdapterSpec | null;
  sampling: SamplingParams;
  /** null = as many as the context allows. */
  maxNewTokens: number | null;
  stopStrings: string[];
  stopTokenIds: number[];
  ignoreEos: boolean;
  /** Milliseconds from submission to the deadline. */
  timeoutMs: number;
  /** Return the prompt's token ids in the start event. */
  returnPromptIds?: boolean;
}

export type EngineEvent =
  | { t: 'start'; id: number; promptTokens: number; promptIds?: number[] }
  | {
      t: 'token';
      id: number;
      token: number;
      /** Text that became final with this token (stop strings and partial characters held back). */
      text: string;
      /** With logprobs: the token's own text, its logprob and the top alternatives. */
      tokenText?: string;
      logprob?: number;
      top?: TokenAlt[];
      special: boolean;
    }
  | { t: 'end'; id: number; finishReason: FinishReason; completionTokens: number; promptTokens: number }
  | { t: 'error'; id: number; code: string; status: number; type: string; message: string; param: string | null };

/** Combination keys are stable for the same recipe, whatever the order of the parts. */
export function mergeKey(parts: readonly { key: string; weight: number }[]): string {
  return `merge(${[...parts].sort((a, b) => a.key.localeCompare(b.key)).map((p) => `${p.key}*${p.weight}`).join('+')})`;
}
