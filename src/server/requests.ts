/**
 * Wire request → ValidRequest, the validation stage before the engine: cheap caps first (sizes,
 * list lengths, nesting of free-form fields), then the prompt is tokenized in a tokenizer thread,
 * then sampling, stopping and the context are checked. Each error names the field and the value.
 * The engine receives only what comes out of here.
 */
import { LoraplexError, UnsupportedError, ValidationError } from '../errors.js';
import type { ChatMessage } from '../runtime/chat-template.js';
import type { SamplingParams } from '../runtime/sampling.js';
import { checkContext, checkPrompt } from '../scheduler/core.js';
import type { ValidRequest } from '../scheduler/request.js';
import type { ServerContext } from './context.js';
import { checkPromptBytes, checkShape } from './prompt/limits.js';
import type { Resolved } from './resolve.js';
import { parseSampling, type RawSampling } from './sampling-fields.js';

export interface CommonFields extends RawSampling {
  max_tokens?: number | null;
  max_completion_tokens?: number | null;
  stop?: string | string[] | null;
  stop_token_ids?: number[] | null;
  ignore_eos?: boolean | null;
  n?: number | null;
}

/** Longest stop string accepted (characters). */
export const MAX_STOP_LENGTH = 1024;

export function sampling(body: CommonFields, vocabSize: number, logprobs: number | null): SamplingParams {
  return parseSampling({ ...body, logprobs }, vocabSize);
}

export function stopStrings(stop: string | string[] | null | undefined, param = 'stop'): string[] {
  if (stop == null) return [];
  const list = typeof stop === 'string' ? [stop] : stop;
  if (list.some((s) => s.length === 0)) throw new ValidationError('stop strings must not be empty', param);
  const long = list.find((s) => s.length > MAX_STOP_LENGTH);
  if (long !== undefined) throw new ValidationError(`stop strings may be at most ${MAX_STOP_LENGTH} characters; given one of ${long.length}`, param);
  return list;
}

export type PromptSource =
  | { kind: 'ids'; ids: readonly number[]; param: string }
  | { kind: 'text'; text: string; param: string }
  | { kind: 'chat'; messages: ChatMessage[]; tools: unknown[] | null; addGenerationPrompt: boolean; templateKwargs: Record<string, unknown> | null };

/** The prompt's token ids, validated: cheap caps here, tokenization in a tokenizer thread. */
export async function promptIds(ctx: ServerContext, source: PromptSource, adapter: Resolved): Promise<Int32Array> {
  const engine = ctx.requireEngine();
  const tokenizers = ctx.requireTokenizers();
  const { maxPositions, vocabSize } = engine.info;
  let ids: Int32Array;
  switch (source.kind) {
    case 'ids':
      if (source.ids.length > maxPositions) {
        throw new LoraplexError('context_length_exceeded', `the prompt has ${source.ids.length} tokens, more than the context length of ${maxPositions}`, { param: source.param });
      }
      checkPrompt(source.ids, vocabSize);
      return Int32Array.from(source.ids);
    case 'text':
      checkPromptBytes(Buffer.byteLength(source.text), maxPositions, tokenizers.info.maxTokenBytes, source.param);
      ids = await tokenizers.encodeText(source.text, true, source.param);
      break;
    case 'chat': {
      let bytes = 0;
      for (const m of source.messages) bytes += Buffer.byteLength(m.content ?? '');
      checkPromptBytes(bytes, maxPositions, tokenizers.info.maxTokenBytes, 'messages');
      ids = await tokenizers.encodeChat({
        messages: source.messages,
        tools: source.tools,
        addGenerationPrompt: source.addGenerationPrompt,
        templateKwargs: source.templateKwargs,
        adapterDir: adapter.spec?.kind === 'single' ? adapter.spec.dir : null,
      });
      break;
    }
  }
  checkPrompt(ids, vocabSize);
  return ids;
}

/** One choice of a request, ready for the engine. */
export function validRequest(ctx: ServerContext, ids: Int32Array, body: CommonFields, adapter: Resolved, s: SamplingParams, choice = 0): Omit<ValidRequest, 'id'> {
  const { maxPositions, kvCapacity, vocabSize } = ctx.requireEngine().info;
  const given = body.max_completion_tokens ?? body.max_tokens ?? null;
  if (given === null && ids.length >= maxPositions) {
    throw new LoraplexError('context_length_exceeded', `the prompt has ${ids.length} tokens, which leaves no room to generate in the context length of ${maxPositions}`, { param: 'messages' in body ? 'messages' : 'prompt' });
  }
  const maxNewTokens = given ?? maxPositions - ids.length;
  checkContext(ids.length, maxNewTokens, maxPositions, kvCapacity);
  const stopTokenIds = body.stop_token_ids ?? [];
  const bad = stopTokenIds.find((id) => id >= vocabSize);
  if (bad !== undefined) throw new ValidationError(`stop_token_ids: ${bad} is outside the vocabulary (0..${vocabSize - 1})`, 'stop_token_ids');
  return {
    promptIds: ids,
    adapter: adapter.spec,
    // n > 1 with a seed: each choice gets its own, reproducible stream.
    sampling: s.seed !== null && choice > 0 ? { ...s, seed: (s.seed + choice) >>> 0 } : s,
    stop: { maxNewTokens, stopStrings: stopStrings(body.stop), stopTokenIds, ignoreEos: body.ignore_eos === true },
    timeoutMs: ctx.settings.requestTimeoutMs,
  };
}

type WireMessage = { role: string; content?: string | null | { type: string; text?: string }[]; name?: string; tool_calls?: unknown[]; tool_call_id?: string };

/** OpenAI messages → template messages (text content only); free-form parts are size-checked. */
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
    if (m.tool_calls !== undefined) {
      checkShape(m.tool_calls, `messages[${i}].tool_calls`);
      out.tool_calls = m.tool_calls;
    }
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
