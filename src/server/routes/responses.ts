/**
 * POST /v1/responses — OpenAI's Responses API, which the official client's `responses.create` and
 * the AI SDK's default `openai(id)` speak. `model` picks the adapter, as everywhere. Stateless:
 * responses are not stored, so `previous_response_id` and `store: true` are refused and the whole
 * conversation is sent as `input` (messages, function calls and their outputs). The input becomes a
 * chat conversation rendered by the model's (or adapter's) chat template; the answer is one
 * `message` output item. Streaming sends the Responses event stream (`response.created`,
 * `response.output_text.delta`, …, `response.completed`).
 */
import { responsesFormatGrammar } from '../grammar-fields.js';
import type { FastifyInstance } from 'fastify';
import { UnsupportedError, ValidationError } from '../../errors.js';
import type { FinishReason } from '../../runtime/generation.js';
import { answerConstraint } from '../answer-constraint.js';
import { answerConstrained, answerThinking, checkConstrainedPrompt, thinkingKwargs, type Thinking } from '../reasoning.js';
import { AnswerReader, type AnswerPiece, type AnswerTools } from '../answer-reader.js';
import type { ServerContext } from '../context.js';
import { checkFields, declaredFields } from '../fields.js';
import { checkShape } from '../prompt/limits.js';
import { chatMessages, chatPrompt, responseId, sampling, validRequest } from '../requests.js';
import { cachePartition } from '../cache-partition.js';
import type { ParsedToolCall } from '../../runtime/tool-calls/parser.js';
import { toolCallId, toolRequest } from '../tool-fields.js';
import { ErrorBody, ResponsesRequest } from '../schemas.js';
import type { SseStream } from '../sse.js';
import { admitted, begin, runGeneration, type Protocol, type Usage } from '../streaming.js';
import { Type } from 'typebox';

const FIELDS = declaredFields(ResponsesRequest);

type WireMessage = Parameters<typeof chatMessages>[0][number];

/** The text of Responses content (a string, or input_text / output_text parts). */
function textOf(content: unknown, at: string): string {
  if (content == null) return '';
  if (typeof content === 'string') return content;
  if (!Array.isArray(content)) throw new ValidationError(`${at} must be a string or a list of text parts`, at);
  return content
    .map((p: { type?: string; text?: string }, i) => {
      if (p?.type !== 'input_text' && p?.type !== 'output_text' && p?.type !== 'text') {
        throw new UnsupportedError(`${at}[${i}] has type ${JSON.stringify(p?.type)}; only text parts are supported`, `${at}[${i}]`);
      }
      return p.text ?? '';
    })
    .join('');
}

/** Responses input (+ instructions) → chat messages in OpenAI's chat wire form. */
export function inputMessages(body: ResponsesRequest): WireMessage[] {
  const out: WireMessage[] = [];
  if (body.instructions) out.push({ role: 'system', content: body.instructions });
  if (typeof body.input === 'string') {
    out.push({ role: 'user', content: body.input });
    return out;
  }
  // A reasoning item's text waits for the assistant turn it belongs to.
  let thinking: { text: string; at: string } | null = null;
  const takeThinking = (): Record<string, string> => {
    const t = thinking;
    thinking = null;
    return t ? { reasoning_content: t.text } : {};
  };
  body.input.forEach((item, i) => {
    const at = `input[${i}]`;
    const type = item.type ?? 'message';
    if (thinking && type !== 'function_call' && !(type === 'message' && item.role === 'assistant')) {
      throw new ValidationError(`${thinking.at}: a reasoning item must be followed by the assistant's message or function call it belongs to`, thinking.at);
    }
    switch (type) {
      case 'reasoning': {
        if (thinking) throw new ValidationError(`${at}: two reasoning items in a row; send one per assistant turn`, at);
        if (item.encrypted_content != null) throw new UnsupportedError(`${at}.encrypted_content is not supported: this server never encrypts reasoning; send its text as content`, `${at}.encrypted_content`);
        const content = Array.isArray(item.content) ? item.content.filter((p) => p?.type === 'reasoning_text') : [];
        const summary = Array.isArray(item.summary) ? (item.summary as { type?: string; text?: string }[]) : [];
        const parts = content.length > 0 ? content : summary;
        if (parts.some((p) => typeof p?.text !== 'string')) throw new ValidationError(`${at}: reasoning parts need text`, at);
        thinking = { text: parts.map((p) => p.text).join(''), at };
        break;
      }
      case 'message':
        out.push({ role: item.role ?? 'user', content: textOf(item.content, `${at}.content`), ...(item.role === 'assistant' ? takeThinking() : {}) });
        break;
      case 'function_call': {
        if (typeof item.call_id !== 'string' || typeof item.name !== 'string') throw new ValidationError(`${at}: a function_call needs call_id and name`, at);
        const call = { id: item.call_id, type: 'function', function: { name: item.name, arguments: item.arguments ?? '{}' } };
        const last = out.at(-1);
        // Consecutive calls are one assistant turn.
        if (!thinking && last?.role === 'assistant' && last.tool_calls && !last.content) last.tool_calls.push(call);
        else out.push({ role: 'assistant', content: null, tool_calls: [call], ...takeThinking() });
        break;
      }
      case 'function_call_output':
        if (typeof item.call_id !== 'string') throw new ValidationError(`${at}: a function_call_output needs call_id`, `${at}.call_id`);
        out.push({ role: 'tool', tool_call_id: item.call_id, content: textOf(item.output, `${at}.output`) });
        break;
      default:
        throw new UnsupportedError(`${at} has type ${JSON.stringify(type)}; supported: message, function_call, function_call_output, reasoning (responses are not stored, so references cannot be resolved)`, `${at}.type`);
    }
  });
  if (thinking) {
    const t: { at: string } = thinking;
    throw new ValidationError(`${t.at}: a reasoning item must be followed by the assistant's message or function call it belongs to`, t.at);
  }
  return out;
}

/** The response object without its status, output and usage (those come with the answer). */
type ResponseBase = Record<string, unknown>;

/**
 * The Responses API's answer and event stream: without tools the answer is one `message` output
 * item; with tools its text (if any) is a message and each parsed call a `function_call` item. A
 * thinking answer (see reasoning.ts) starts with a `reasoning` item holding the thinking twice:
 * as `reasoning_text` content (vLLM's form, the official client's type) and as its one
 * `summary_text` part, whatever `reasoning.summary` asks — there is no separate summarizer, and
 * the AI SDK and LangChain read reasoning only from summaries.
 */
function responsesProtocol(base: ResponseBase, promptTokens: number, tools: AnswerTools | null, thinking: Thinking | null): Protocol {
  const msgId = `msg_${responseId('').slice(1)}`;
  const rsId = `rs_${responseId('').slice(1)}`;
  const message = (text: string, done: boolean) => ({ type: 'message', id: msgId, status: done ? 'completed' : 'in_progress', role: 'assistant', content: done ? [{ type: 'output_text', text, annotations: [], logprobs: [] }] : [] });
  const reasoningItem = (text: string, done: boolean) => ({ type: 'reasoning', id: rsId, status: done ? 'completed' : 'in_progress', summary: done ? [{ type: 'summary_text', text }] : [], content: done ? [{ type: 'reasoning_text', text }] : [], encrypted_content: null });
  const functionCall = (c: ParsedToolCall, callId: string, itemId: string, done: boolean) => ({ type: 'function_call', id: itemId, call_id: callId, name: c.name, arguments: done ? c.arguments : '', status: done ? 'completed' : 'in_progress' });
  /** The answer's output items: its thinking, its text as a message (left out when the answer is only calls), then one item per call. */
  const outputOf = (a: AnswerPiece): unknown[] => [
    ...(a.reasoning ? [reasoningItem(a.reasoning, true)] : []),
    ...(a.calls.length > 0 && a.content.trim() === '' ? [] : [message(a.content, true)]),
    ...a.calls.map((c) => functionCall(c, toolCallId(), `fc_${responseId('').slice(1)}`, true)),
  ];
  const final = (output: unknown[], reason: FinishReason, u: Usage, reasoningTokens: number) => ({
    ...base,
    status: reason === 'length' ? 'incomplete' : 'completed',
    incomplete_details: reason === 'length' ? { reason: 'max_output_tokens' } : null,
    output,
    usage: { input_tokens: promptTokens, input_tokens_details: { cached_tokens: u.cachedTokens }, output_tokens: u.completionTokens, output_tokens_details: { reasoning_tokens: reasoningTokens }, total_tokens: promptTokens + u.completionTokens },
  });

  // The stream's state: sequence numbers, the text so far, the output items sent so far, the
  // message's index among them (-1: not opened yet), and the reasoning item's.
  let seq = 0;
  let text = '';
  const items: unknown[] = [];
  let msgIndex = -1;
  let rsIndex = -1;
  let reasoningText = '';
  let reasoningDone = false;
  const reader = new AnswerReader(thinking, tools);
  const emit = (sse: SseStream, type: string, data: Record<string, unknown>): void => sse.sendEvent(type, { type, sequence_number: seq++, ...data });
  const sendReasoning = (sse: SseStream, piece: string): void => {
    if (!piece || reasoningDone) return;
    if (rsIndex < 0) {
      rsIndex = items.length;
      items.push(null);
      emit(sse, 'response.output_item.added', { output_index: rsIndex, item: reasoningItem('', false) });
      emit(sse, 'response.content_part.added', { item_id: rsId, output_index: rsIndex, content_index: 0, part: { type: 'reasoning_text', text: '' } });
      emit(sse, 'response.reasoning_summary_part.added', { item_id: rsId, output_index: rsIndex, summary_index: 0, part: { type: 'summary_text', text: '' } });
    }
    reasoningText += piece;
    emit(sse, 'response.reasoning_text.delta', { item_id: rsId, output_index: rsIndex, content_index: 0, delta: piece });
    emit(sse, 'response.reasoning_summary_text.delta', { item_id: rsId, output_index: rsIndex, summary_index: 0, delta: piece });
  };
  /** The thinking is over (the answer began, or the generation ended): its item is done. */
  const closeReasoning = (sse: SseStream): void => {
    if (rsIndex < 0 || reasoningDone) return;
    reasoningDone = true;
    const t = reasoningText;
    emit(sse, 'response.reasoning_text.done', { item_id: rsId, output_index: rsIndex, content_index: 0, text: t });
    emit(sse, 'response.content_part.done', { item_id: rsId, output_index: rsIndex, content_index: 0, part: { type: 'reasoning_text', text: t } });
    emit(sse, 'response.reasoning_summary_text.done', { item_id: rsId, output_index: rsIndex, summary_index: 0, text: t });
    emit(sse, 'response.reasoning_summary_part.done', { item_id: rsId, output_index: rsIndex, summary_index: 0, part: { type: 'summary_text', text: t } });
    items[rsIndex] = reasoningItem(t, true);
    emit(sse, 'response.output_item.done', { output_index: rsIndex, item: items[rsIndex] });
  };
  const openMessage = (sse: SseStream): void => {
    if (msgIndex >= 0) return;
    closeReasoning(sse);
    msgIndex = items.length;
    items.push(null);
    emit(sse, 'response.output_item.added', { output_index: msgIndex, item: message('', false) });
    emit(sse, 'response.content_part.added', { item_id: msgId, output_index: msgIndex, content_index: 0, part: { type: 'output_text', text: '', annotations: [], logprobs: [] } });
  };
  const sendText = (sse: SseStream, piece: string): void => {
    if (!piece) return;
    openMessage(sse);
    text += piece;
    emit(sse, 'response.output_text.delta', { item_id: msgId, output_index: msgIndex, content_index: 0, delta: piece, logprobs: [] });
  };
  const sendCalls = (sse: SseStream, calls: ParsedToolCall[]): void => {
    if (calls.length > 0) closeReasoning(sse);
    for (const c of calls) {
      const at = items.length;
      const itemId = `fc_${responseId('').slice(1)}`;
      const callId = toolCallId();
      items.push(functionCall(c, callId, itemId, true));
      emit(sse, 'response.output_item.added', { output_index: at, item: functionCall(c, callId, itemId, false) });
      emit(sse, 'response.function_call_arguments.delta', { item_id: itemId, output_index: at, delta: c.arguments });
      emit(sse, 'response.function_call_arguments.done', { item_id: itemId, output_index: at, arguments: c.arguments });
      emit(sse, 'response.output_item.done', { output_index: at, item: items[at] });
    }
  };
  const send = (sse: SseStream, p: AnswerPiece): void => {
    sendReasoning(sse, p.reasoning);
    sendText(sse, p.content);
    sendCalls(sse, p.calls);
  };
  return {
    whole: ([r], u) => {
      const a = AnswerReader.readAll(r.tokens, thinking, tools);
      return final(outputOf(a), r.finishReason, u, a.reasoningTokens);
    },
    start: (sse) => {
      emit(sse, 'response.created', { response: { ...base, status: 'in_progress', incomplete_details: null, output: [], usage: null } });
      emit(sse, 'response.in_progress', { response: { ...base, status: 'in_progress', incomplete_details: null, output: [], usage: null } });
      // A plain answer is one message, opened at once; with tools or thinking it opens on its first text.
      if (!tools && !thinking) openMessage(sse);
    },
    token: (sse, _choice, e) => {
      if (e.text) send(sse, reader.pushToken(e.text));
    },
    end: (sse, _choice, e) => {
      send(sse, reader.end());
      closeReasoning(sse);
      // An answer without text or calls is an empty message.
      if (msgIndex < 0 && !items.some((it) => (it as { type?: string } | null)?.type === 'function_call')) openMessage(sse);
      if (msgIndex >= 0) {
        const part = { type: 'output_text', text, annotations: [], logprobs: [] };
        emit(sse, 'response.output_text.done', { item_id: msgId, output_index: msgIndex, content_index: 0, text, logprobs: [] });
        emit(sse, 'response.content_part.done', { item_id: msgId, output_index: msgIndex, content_index: 0, part });
        items[msgIndex] = message(text, true);
        emit(sse, 'response.output_item.done', { output_index: msgIndex, item: items[msgIndex] });
      }
      const response = final(items, e.finishReason, { promptTokens, completionTokens: e.completionTokens, cachedTokens: e.cachedTokens }, reader.reasoningTokens);
      emit(sse, response.status === 'completed' ? 'response.completed' : 'response.incomplete', { response });
    },
    error: (sse, err) => emit(sse, 'error', { code: err.code, message: err.message, param: err.param }),
    doneMarker: false,
  };
}

/** `reasoning.effort` as the template's enable_thinking (null: not asked). */
function effortThinking(effort: string | null | undefined): boolean | null {
  if (effort == null) return null;
  return !(effort === 'none' || effort === 'minimal');
}

export function responsesRoutes(app: FastifyInstance, ctx: ServerContext): void {
  app.post<{ Body: ResponsesRequest }>(
    '/v1/responses',
    {
      schema: {
        tags: ['openai'],
        summary: 'Create a response (OpenAI Responses API, stateless); `model` selects the adapter',
        body: ResponsesRequest,
        response: { 200: Type.Object({ id: Type.String(), object: Type.Literal('response'), status: Type.String(), output: Type.Array(Type.Any()) }, { additionalProperties: true }), 400: ErrorBody, 404: ErrorBody, 422: ErrorBody, 429: ErrorBody, 503: ErrorBody },
      },
    },
    async (request, reply) => {
      const body = request.body;
      const { gone, engine, resolved } = begin(ctx, request, reply, { model: body.model, lora_scale: body.lora_scale });
      checkFields(body, FIELDS, request.log);
      if (body.previous_response_id != null) throw new UnsupportedError('previous_response_id is not supported: responses are not stored; send the whole conversation as input', 'previous_response_id');
      if (body.store === true) throw new UnsupportedError('store: true is not supported: responses are not stored (send store: false or leave it out)', 'store');
      if (body.truncation != null && body.truncation !== 'disabled') throw new UnsupportedError(`truncation ${JSON.stringify(body.truncation)} is not supported; only "disabled"`, 'truncation');
      if (body.include && body.include.length > 0) throw new UnsupportedError(`include ${JSON.stringify(body.include)} is not supported`, 'include');
      const grammar = responsesFormatGrammar(body.text?.format);
      if (body.tools != null) checkShape(body.tools, 'tools');
      const toolReq = toolRequest(body.tools, body.tool_choice, body.parallel_tool_calls, 'responses');
      if (Array.isArray(body.input)) checkShape(body.input, 'input');
      const messages = chatMessages(inputMessages(body));
      const s = sampling({ temperature: body.temperature, top_p: body.top_p }, engine.info.vocabSize, null);
      // reasoning.effort turns the template's thinking on or off; a grammar turns it off (see reasoning.ts).
      const thinkOn = effortThinking(body.reasoning?.effort);
      const constrained = answerConstrained(grammar, toolReq);
      const constraintParam = grammar ? 'text.format' : 'tool_choice';
      const templateKwargs = thinkingKwargs(thinkOn === null ? null : { enable_thinking: thinkOn }, constrained, constraintParam, 'reasoning.effort');
      return admitted(ctx, request, 1, gone, async (ticket) => {
        const chat = await chatPrompt(ctx, { kind: 'chat', messages, tools: toolReq?.templateTools ?? null, addGenerationPrompt: true, templateKwargs }, resolved);
        if (thinkOn === true && !chat.reasoning.templateThinks) {
          throw new UnsupportedError(`reasoning.effort ${JSON.stringify(body.reasoning?.effort)} cannot be honoured: this model's chat template does not think (it writes no <think> block); send "none" or leave reasoning out`, 'reasoning.effort');
        }
        checkConstrainedPrompt(chat.reasoning, constrained, constraintParam);
        const thinking = answerThinking(ctx.settings.reasoningParser, chat.reasoning);
        const ids = chat.ids;
        const { format, grammar: constraint, grammarParam } = answerConstraint(ctx, toolReq, chat.toolCallFormat, grammar, { param: 'text.format', name: 'text.format' });
        const req = validRequest(ctx, ids, { max_tokens: body.max_output_tokens ?? null }, resolved, s, 0, { cachePartition: cachePartition(request.cacheTenant, body.cache_salt), grammar: constraint, grammarParam });
        const base = {
          id: `resp_${responseId('').slice(1)}`,
          object: 'response' as const,
          created_at: Math.floor(Date.now() / 1000),
          model: resolved.model,
          instructions: body.instructions ?? null,
          max_output_tokens: body.max_output_tokens ?? null,
          temperature: body.temperature ?? 1,
          top_p: body.top_p ?? 1,
          tools: body.tools ?? [],
          tool_choice: body.tool_choice ?? 'auto',
          parallel_tool_calls: body.parallel_tool_calls !== false,
          text: { format: { type: 'text' } },
          reasoning: { effort: body.reasoning?.effort ?? null, summary: body.reasoning?.summary ?? body.reasoning?.generate_summary ?? null },
          truncation: 'disabled',
          previous_response_id: null,
          store: false,
          metadata: body.metadata ?? {},
          user: body.user ?? null,
          error: null,
        };
        const protocol = responsesProtocol(base, ids.length, toolReq && format ? { format, names: toolReq.names } : null, thinking);
        return runGeneration({ ctx, request, reply, gone, ticket, resolved, choices: [{ req, promptTokens: ids.length }], stream: body.stream === true, protocol, logPrompt: () => messages, user: body.user });
      });
    },
  );
}
