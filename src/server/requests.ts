/**
 * Wire request → ValidRequest, the validation stage before the engine: cheap caps first (sizes,
 * list lengths, nesting of free-form fields), then the prompt is tokenized in a tokenizer thread,
 * then sampling, stopping and the context are checked. Each error names the field and the value.
 * The engine receives only what comes out of here.
 */
import type { GrammarSpec } from '../runtime/grammar/compiler.js';
import { checkGrammarCompatible } from './grammar-fields.js';
import { LoraplexError, UnsupportedError, ValidationError } from '../errors.js';
import type { ChatMessage } from '../runtime/chat-template.js';
import type { SamplingParams } from '../runtime/sampling.js';
import { checkContext, checkPrompt } from '../scheduler/limits.js';
import type { ValidRequest } from '../scheduler/request.js';
import type { ServerContext } from './context.js';
import { checkPromptBytes, checkShape } from './prompt/limits.js';
import type { Resolved } from './resolve.js';
import type { ChatPrompt } from './prompt/tasks.js';
import { parseSampling, type RawSampling } from './sampling-fields.js';

export interface CommonFields extends RawSampling {
  max_tokens?: number | null;
  max_completion_tokens?: number | null;
  stop?: string | string[] | null;
  stop_token_ids?: number[] | null;
  ignore_eos?: boolean | null;
  n?: number | null;
  min_tokens?: number | null;
}

/** Most prompt tokens a request may ask logprobs for (every one of them gets a logits row). */
export const MAX_PROMPT_LOGPROB_TOKENS = 128;

/** Keeps the last `keep` prompt tokens (TGI's truncate, vLLM's truncate_prompt_tokens). */
export function truncatePrompt(ids: Int32Array, keep: number | null | undefined): Int32Array {
  return keep != null && ids.length > keep ? ids.subarray(ids.length - keep) : ids;
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
    case 'chat':
      return (await chatPrompt(ctx, source, adapter)).ids;
  }
  checkPrompt(ids, vocabSize);
  return ids;
}

/** A conversation rendered by the adapter's (or the model's) chat template and tokenized, with the template's tool-call format. */
export async function chatPrompt(ctx: ServerContext, source: Extract<PromptSource, { kind: 'chat' }>, adapter: Resolved): Promise<ChatPrompt> {
  const { maxPositions, vocabSize } = ctx.requireEngine().info;
  const tokenizers = ctx.requireTokenizers();
  let bytes = 0;
  for (const m of source.messages) bytes += Buffer.byteLength(m.content ?? '');
  checkPromptBytes(bytes, maxPositions, tokenizers.info.maxTokenBytes, 'messages');
  const chat = await tokenizers.encodeChat({
    messages: source.messages,
    tools: source.tools,
    addGenerationPrompt: source.addGenerationPrompt,
    templateKwargs: source.templateKwargs,
    adapterDir: adapter.spec?.kind === 'single' ? adapter.spec.dir : null,
  });
  checkPrompt(chat.ids, vocabSize);
  return chat;
}

/**
 * One choice of a request, ready for the engine. `cachePartition` (from cachePartition(): the API
 * key's tenant and cache_salt) has no default, so no route can forget it and share by accident.
 */
export function validRequest(
  ctx: ServerContext,
  ids: Int32Array,
  body: CommonFields,
  adapter: Resolved,
  s: SamplingParams,
  choice: number,
  opts: { cachePartition: string; promptLogprobs?: number | null; minTokensParam?: string; grammar?: GrammarSpec | null; grammarParam?: string },
): Omit<ValidRequest, 'id'> {
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
  const minTokens = body.min_tokens ?? 0;
  if (minTokens > maxNewTokens) throw new ValidationError(`${opts.minTokensParam ?? 'min_tokens'} (${minTokens}) must be <= max_tokens (${maxNewTokens})`, opts.minTokensParam ?? 'min_tokens');
  const promptLogprobs = opts.promptLogprobs ?? null;
  if (promptLogprobs !== null && ids.length > MAX_PROMPT_LOGPROB_TOKENS) {
    throw new ValidationError(`prompt logprobs are available for prompts of up to ${MAX_PROMPT_LOGPROB_TOKENS} tokens; this one has ${ids.length}`, 'decoder_input_details');
  }
  const grammar = opts.grammar ?? null;
  const stop = { maxNewTokens, stopStrings: stopStrings(body.stop), stopTokenIds, ignoreEos: body.ignore_eos === true, minTokens };
  checkGrammarCompatible(grammar, stop, opts.grammarParam ?? 'response_format');
  return {
    promptIds: ids,
    promptLogprobs,
    grammar,
    adapter: adapter.spec,
    // n > 1 with a seed: each choice gets its own, reproducible stream.
    sampling: s.seed !== null && choice > 0 ? { ...s, seed: (s.seed + choice) >>> 0 } : s,
    stop,
    timeoutMs: ctx.settings.requestTimeoutMs,
    cachePartition: opts.cachePartition,
  };
}

type WireMessage = { role: string; content?: string | null | { type: string; text?: string }[]; name?: string; tool_calls?: unknown[]; tool_call_id?: string; reasoning_content?: string | null; reasoning?: string | null };

/** Roles a conversation may hold (`developer` is OpenAI's newer name for `system`). */
const ROLES = new Set(['system', 'developer', 'user', 'assistant', 'tool']);

/**
 * OpenAI messages → template messages, checked as strictly as OpenAI checks them: known roles,
 * text content, a user or assistant turn, `tool` messages that name their `tool_call_id`, and
 * assistant `tool_calls` of `{id, type: "function", function: {name, arguments}}` whose arguments
 * (a JSON string on the wire) reach the template as an object, as Hugging Face templates expect.
 * An assistant message with `content: null` and tool calls renders with empty content.
 */
export function chatMessages(messages: WireMessage[]): ChatMessage[] {
  const out = messages.map((m, i) => {
    const at = `messages[${i}]`;
    if (!ROLES.has(m.role)) throw new ValidationError(`${at}.role ${JSON.stringify(m.role)} is not one of ${[...ROLES].join(', ')}`, `${at}.role`);
    const role = m.role === 'developer' ? 'system' : m.role;
    let content: string | null;
    if (m.content == null) content = null;
    else if (typeof m.content === 'string') content = m.content;
    else {
      const parts = m.content;
      const other = parts.find((p) => p.type !== 'text');
      if (other) throw new UnsupportedError(`${at}.content has a part of type ${JSON.stringify(other.type)}; only text is supported`, `${at}.content`);
      content = parts.map((p) => p.text ?? '').join('');
    }
    if (m.tool_calls !== undefined && role !== 'assistant') throw new ValidationError(`${at}.tool_calls is only allowed on assistant messages`, `${at}.tool_calls`);
    if (content === null && !(role === 'assistant' && m.tool_calls?.length)) throw new ValidationError(`${at}.content must be given (a string or text parts)`, `${at}.content`);
    const msg: ChatMessage = { role, content: content ?? '' };
    if (m.name !== undefined) msg.name = m.name;
    // Thinking sent back with an assistant turn (either name, as this server returns both).
    const reasoning = m.reasoning_content ?? m.reasoning ?? null;
    if (reasoning !== null) {
      if (role !== 'assistant') throw new ValidationError(`${at}.reasoning_content is only allowed on assistant messages`, `${at}.${m.reasoning_content != null ? 'reasoning_content' : 'reasoning'}`);
      if (m.reasoning_content != null && m.reasoning != null && m.reasoning_content !== m.reasoning) {
        throw new ValidationError(`${at}.reasoning_content and ${at}.reasoning differ; send one (they name the same text)`, `${at}.reasoning`);
      }
      msg.reasoning_content = reasoning;
    }
    if (m.tool_calls !== undefined) {
      checkShape(m.tool_calls, `${at}.tool_calls`);
      msg.tool_calls = m.tool_calls.map((c, j) => toolCall(c, `${at}.tool_calls[${j}]`));
    }
    if (role === 'tool') {
      if (typeof m.tool_call_id !== 'string' || m.tool_call_id === '') throw new ValidationError(`${at}.tool_call_id is required on tool messages`, `${at}.tool_call_id`);
      msg.tool_call_id = m.tool_call_id;
    } else if (m.tool_call_id !== undefined) throw new ValidationError(`${at}.tool_call_id is only allowed on tool messages`, `${at}.tool_call_id`);
    return msg;
  });
  if (!out.some((m) => m.role === 'user' || m.role === 'assistant')) throw new ValidationError('messages must hold at least one user or assistant message', 'messages');
  return out;
}

function toolCall(c: unknown, at: string): unknown {
  const call = c as { id?: unknown; type?: unknown; function?: { name?: unknown; arguments?: unknown } } | null;
  if (!call || typeof call !== 'object' || typeof call.function !== 'object' || call.function === null || typeof call.function.name !== 'string') {
    throw new ValidationError(`${at} must be {"id", "type": "function", "function": {"name", "arguments"}}`, at);
  }
  if (call.type !== undefined && call.type !== 'function') throw new ValidationError(`${at}.type must be "function"`, `${at}.type`);
  let args: unknown = call.function.arguments ?? {};
  if (typeof args === 'string') {
    try {
      args = JSON.parse(args);
    } catch {
      throw new ValidationError(`${at}.function.arguments must be a JSON object in a string`, `${at}.function.arguments`);
    }
  }
  return { id: call.id, type: 'function', function: { name: call.function.name, arguments: args } };
}

/** Unique ids for responses. */
export function responseId(prefix: string): string {
  return `${prefix}-${Date.now().toString(36)}${Math.random().toString(36).slice(2, 10)}`;
}

/** UTF-8 bytes of a token's text, as OpenAI's logprobs report them. */
export function utf8Bytes(text: string): number[] {
  return [...Buffer.from(text, 'utf8')];
}
