/**
 * Wire request fields → the engine's request: sampling (validated by the runtime's rules), stopping,
 * max tokens, chat messages. Each error names the field and the value.
 */
import { UnsupportedError, ValidationError } from '../errors.js';
import type { ChatMessage } from '../runtime/chat-template.js';
import { parseSampling, type RawSampling } from '../runtime/sampling-params.js';
import type { SamplingParams } from '../runtime/sampling.js';
import type { EngineRequest, PromptInput } from '../scheduler/request.js';
import type { Resolved } from './resolve.js';

export interface CommonFields extends RawSampling {
  max_tokens?: number | null;
  max_completion_tokens?: number | null;
  stop?: string | string[] | null;
  stop_token_ids?: number[] | null;
  ignore_eos?: boolean | null;
  n?: number | null;
}

export function sampling(body: CommonFields, vocabSize: number, logprobs: number | null): SamplingParams {
  return parseSampling({ ...body, logprobs }, vocabSize);
}

export function stopStrings(stop: string | string[] | null | undefined): string[] {
  if (stop == null) return [];
  const list = typeof stop === 'string' ? [stop] : stop;
  if (list.some((s) => s.length === 0)) throw new ValidationError('stop strings must not be empty', 'stop');
  return list;
}

export function engineRequest(
  body: CommonFields,
  prompt: PromptInput,
  adapter: Resolved,
  s: SamplingParams,
  timeoutMs: number,
  choice = 0,
): Omit<EngineRequest, 'id'> {
  const stopIds = body.stop_token_ids ?? [];
  return {
    prompt,
    adapter: adapter.spec,
    // n > 1 with a seed: each choice gets its own, reproducible stream.
    sampling: s.seed !== null && choice > 0 ? { ...s, seed: (s.seed + choice) >>> 0 } : s,
    maxNewTokens: body.max_completion_tokens ?? body.max_tokens ?? null,
    stopStrings: stopStrings(body.stop),
    stopTokenIds: stopIds,
    ignoreEos: body.ignore_eos === true,
    timeoutMs,
  };
}

type WireMessage = { role: string; content?: string | null | { type: string; text?: string }[]; name?: string; tool_calls?: unknown[]; tool_call_id?: string };

/** OpenAI messages → template messages (text content only). */
export function chatMessages(messages: WireMessage[]): ChatMessage[] {
  return messages.map((m, i) => {
    let content: string | null;
    if (m.content == null) content = null;
    else if (typeof m.content === 'string') content = m.content;
    else {
      const parts = m.content;
      const other = parts.find((p) => p.type !== 'text');
      if (other) throw new UnsupportedError(`messages[${i}].content has a part of type ${JSON.stringify(other.type)}; only text is supported`, `messages[${i}].content`);
      content = parts.map((p) => p.text ?? '').join('');
    }
    if (content === null && !m.tool_calls) throw new ValidationError(`messages[${i}].content must be given (a string or text parts)`, `messages[${i}].content`);
    const out: ChatMessage = { role: m.role, content };
    if (m.name !== undefined) out.name = m.name;
    if (m.tool_calls !== undefined) out.tool_calls = m.tool_calls;
    if (m.tool_call_id !== undefined) out.tool_call_id = m.tool_call_id;
    return out;
  });
}

/** Unique ids for responses. */
export function responseId(prefix: string): string {
  return `${prefix}-${Date.now().toString(36)}${Math.random().toString(36).slice(2, 10)}`;
}

/** UTF-8 bytes of a token's text, as OpenAI's logprobs report them. */
export function utf8Bytes(text: string): number[] {
  return [...Buffer.from(text, 'utf8')];
}
