/**
 * Anthropic's Messages API: POST /v1/messages (whole or streamed with Anthropic's event sequence)
 * and POST /v1/messages/count_tokens. `model` picks the adapter, as everywhere; errors come in
 * Anthropic's shape; `x-api-key` is accepted like a bearer key (app.ts). The conversation is
 * rendered by the model's (or adapter's) chat template like any chat request, and the answer is
 * read back as thinking, text and tool_use blocks.
 */
import type { FastifyInstance } from 'fastify';
import { UnsupportedError, ValidationError } from '../../errors.js';
import type { FinishReason } from '../../runtime/generation.js';
import type { ParsedToolCall } from '../../runtime/tool-calls/parser.js';
import { answerConstraint } from '../answer-constraint.js';
import { AnswerReader, type AnswerPiece, type AnswerTools } from '../answer-reader.js';
import { conversation, functionTools, thinkingOmitted, thinkingSwitch, toolChoice } from '../anthropic/conversation.js';
import { anthropicFormatGrammar } from '../grammar-fields.js';
import type { GrammarSpec } from '../../runtime/grammar/compiler.js';
import { AnthropicErrorBody, CountTokensRequest, MessageResponse, MessagesRequest } from '../anthropic/schemas.js';
import { cachePartition } from '../cache-partition.js';
import type { ServerContext } from '../context.js';
import { anthropicErrorType } from '../errors.js';
import { checkFields, declaredFields } from '../fields.js';
import { checkShape } from '../prompt/limits.js';
import type { ChatPrompt } from '../prompt/tasks.js';
import { answerConstrained, answerThinking, checkConstrainedPrompt, thinkingKwargs, type Thinking } from '../reasoning.js';
import { chatMessages, chatPrompt, responseId, sampling, stopStrings, validRequest } from '../requests.js';
import { resolveAdapter, type Resolved } from '../resolve.js';
import type { SseStream } from '../sse.js';
import { admitted, begin, runGeneration, type Protocol, type Usage } from '../streaming.js';
import { toolRequest, type ToolRequest } from '../tool-fields.js';
import { Type } from 'typebox';

const FIELDS = declaredFields(MessagesRequest);
const COUNT_FIELDS = declaredFields(CountTokensRequest);

/** A request's conversation, tools and thinking switch, ready to render. */
interface Prepared {
  messages: ReturnType<typeof chatMessages>;
  tools: ToolRequest | null;
  /** output_config.format's grammar. */
  grammar: GrammarSpec | null;
  /** Template variables (enable_thinking). */
  templateKwargs: Record<string, unknown> | null;
  thinkOn: boolean | null;
  constrained: boolean;
}

function prepare(body: CountTokensRequest, maxTokens: number | null): Prepared {
  checkShape(body.messages, 'messages');
  if (body.tools != null) checkShape(body.tools, 'tools');
  if (body.system != null) checkShape(body.system, 'system');
  const choice = toolChoice(body.tool_choice);
  const tools = toolRequest(functionTools(body.tools), choice.toolChoice, choice.parallel, 'chat');
  const messages = chatMessages(conversation(body.system, body.messages as Parameters<typeof conversation>[1]));
  const thinkOn = thinkingSwitch(body.thinking, maxTokens);
  if (body.output_config?.effort != null) throw new UnsupportedError("output_config.effort cannot be honoured: this model's chat template has thinking on or off only; use thinking", 'output_config.effort');
  const grammar = anthropicFormatGrammar(body.output_config?.format);
  // An output format or a forced tool call is a grammar, and a grammar turns thinking off (see reasoning.ts).
  const constrained = answerConstrained(grammar, tools);
  const templateKwargs = thinkingKwargs(thinkOn === null ? null : { enable_thinking: thinkOn }, constrained, grammar ? 'output_config.format' : 'tool_choice', 'thinking');
  return { messages, tools, grammar, templateKwargs, thinkOn, constrained };
}

/** The rendered prompt, with the checks that need it. */
async function render(ctx: ServerContext, p: Prepared, resolved: Resolved): Promise<ChatPrompt> {
  const chat = await chatPrompt(ctx, { kind: 'chat', messages: p.messages, tools: p.tools?.templateTools ?? null, addGenerationPrompt: true, templateKwargs: p.templateKwargs }, resolved);
  if (p.thinkOn === true && !chat.reasoning.templateThinks) {
    throw new UnsupportedError("thinking cannot be enabled: this model's chat template does not think (it writes no <think> block); send {\"type\": \"disabled\"} or leave thinking out", 'thinking');
  }
  checkConstrainedPrompt(chat.reasoning, p.constrained, p.grammar ? 'output_config.format' : 'tool_choice');
  return chat;
}

const toolUseId = (): string => `toolu_${responseId('').slice(1)}`;
const toolUse = (c: ParsedToolCall, id: string) => ({ type: 'tool_use', id, name: c.name, input: JSON.parse(c.arguments) as unknown });

function stopReason(reason: FinishReason, stopString: string | null | undefined, calls: number): { stop_reason: string; stop_sequence: string | null } {
  if (reason === 'length') return { stop_reason: 'max_tokens', stop_sequence: null };
  if (stopString) return { stop_reason: 'stop_sequence', stop_sequence: stopString };
  return { stop_reason: calls > 0 ? 'tool_use' : 'end_turn', stop_sequence: null };
}

/** Anthropic's usage: input tokens read from the prefix cache are counted apart from the rest. */
function usage(promptTokens: number, u: Pick<Usage, 'completionTokens' | 'cachedTokens'>) {
  return { input_tokens: promptTokens - u.cachedTokens, cache_read_input_tokens: u.cachedTokens, cache_creation_input_tokens: 0, output_tokens: u.completionTokens };
}

/** The Messages answer and its event stream: thinking, text and tool_use content blocks. */
function messagesProtocol(id: string, model: string, promptTokens: number, thinking: Thinking | null, tools: AnswerTools | null, omitThinking: boolean): Protocol {
  const reader = new AnswerReader(thinking, tools);
  // The stream's state: the open block (its kind and index), the blocks so far, the calls.
  let open: { kind: 'thinking' | 'text'; index: number } | null = null;
  let blocks = 0;
  let calls = 0;
  const event = (sse: SseStream, type: string, data: Record<string, unknown> = {}): void => sse.sendEvent(type, { type, ...data });
  const close = (sse: SseStream): void => {
    if (!open) return;
    event(sse, 'content_block_stop', { index: open.index });
    open = null;
  };
  const write = (sse: SseStream, kind: 'thinking' | 'text', text: string): void => {
    if (!text) return;
    if (open?.kind !== kind) {
      close(sse);
      open = { kind, index: blocks++ };
      event(sse, 'content_block_start', { index: open.index, content_block: kind === 'thinking' ? { type: 'thinking', thinking: '', signature: '' } : { type: 'text', text: '' } });
    }
    if (kind === 'thinking' && omitThinking) return;
    event(sse, 'content_block_delta', { index: open.index, delta: kind === 'thinking' ? { type: 'thinking_delta', thinking: text } : { type: 'text_delta', text } });
  };
  const send = (sse: SseStream, p: AnswerPiece): void => {
    write(sse, 'thinking', p.reasoning);
    write(sse, 'text', p.content);
    for (const c of p.calls) {
      close(sse);
      const index = blocks++;
      calls++;
      event(sse, 'content_block_start', { index, content_block: { type: 'tool_use', id: toolUseId(), name: c.name, input: {} } });
      event(sse, 'content_block_delta', { index, delta: { type: 'input_json_delta', partial_json: c.arguments } });
      event(sse, 'content_block_stop', { index });
    }
  };
  return {
    whole: ([r], u) => {
      const a = AnswerReader.readAll(r.tokens, thinking, tools);
      const content: unknown[] = [];
      if (a.reasoning) content.push({ type: 'thinking', thinking: omitThinking ? '' : a.reasoning, signature: '' });
      if (a.content.trim() || (a.content && a.calls.length === 0)) content.push({ type: 'text', text: a.content });
      content.push(...a.calls.map((c) => toolUse(c, toolUseId())));
      return { id, type: 'message', role: 'assistant', model, content, ...stopReason(r.finishReason, r.stopString, a.calls.length), usage: usage(promptTokens, u) };
    },
    start: (sse) => {
      event(sse, 'message_start', { message: { id, type: 'message', role: 'assistant', model, content: [], stop_reason: null, stop_sequence: null, usage: { input_tokens: promptTokens, cache_read_input_tokens: 0, cache_creation_input_tokens: 0, output_tokens: 0 } } });
      event(sse, 'ping');
    },
    token: (sse, _choice, e) => send(sse, reader.pushToken(e.text)),
    end: (sse, _choice, e) => {
      send(sse, reader.end());
      close(sse);
      event(sse, 'message_delta', { delta: stopReason(e.finishReason, e.stopString, calls), usage: usage(promptTokens, e) });
      event(sse, 'message_stop');
    },
    error: (sse, err) => event(sse, 'error', { error: { type: anthropicErrorType(err.statusCode), message: err.message } }),
    doneMarker: false,
  };
}

export function messagesRoutes(app: FastifyInstance, ctx: ServerContext): void {
  const errors = { 400: AnthropicErrorBody, 401: AnthropicErrorBody, 404: AnthropicErrorBody, 422: AnthropicErrorBody, 429: AnthropicErrorBody, 503: AnthropicErrorBody };

  app.post<{ Body: MessagesRequest }>(
    '/v1/messages',
    { schema: { tags: ['anthropic'], summary: "Create a message (Anthropic's Messages API); `model` selects the adapter", body: MessagesRequest, response: { 200: MessageResponse, ...errors } } },
    async (request, reply) => {
      const body = request.body;
      const { gone, engine, resolved } = begin(ctx, request, reply, { model: body.model, lora_scale: body.lora_scale });
      checkFields(body, FIELDS, request.log);
      if (body.container != null) throw new UnsupportedError('container is not supported: there are no code-execution containers', 'container');
      if (body.mcp_servers != null && !(Array.isArray(body.mcp_servers) && body.mcp_servers.length === 0)) throw new UnsupportedError('mcp_servers is not supported: this server calls no MCP servers', 'mcp_servers');
      if (body.context_management != null) throw new UnsupportedError('context_management is not supported: the context is never edited', 'context_management');
      // Prompt caching needs no marks here (every prefix is cached), but a mark must be one.
      if (body.cache_control != null && (body.cache_control as { type?: unknown }).type !== 'ephemeral') throw new ValidationError('cache_control must be {"type": "ephemeral"} (prompt prefixes are cached without it)', 'cache_control');
      if (body.service_tier != null && body.service_tier !== 'auto' && body.service_tier !== 'standard_only') throw new ValidationError(`service_tier must be "auto" or "standard_only", not ${JSON.stringify(body.service_tier)}`, 'service_tier');
      const p = prepare(body, body.max_tokens);
      const s = sampling({ temperature: body.temperature, top_p: body.top_p, top_k: body.top_k }, engine.info.vocabSize, null);
      stopStrings(body.stop_sequences, 'stop_sequences');
      return admitted(ctx, request, 1, gone, async (ticket) => {
        const chat = await render(ctx, p, resolved);
        const { format, grammar, grammarParam } = answerConstraint(ctx, p.tools, chat.toolCallFormat, p.grammar, { param: 'output_config.format', name: 'output_config.format' });
        const req = validRequest(ctx, chat.ids, { max_tokens: body.max_tokens, stop: body.stop_sequences }, resolved, s, 0, { cachePartition: cachePartition(request.cacheTenant, body.cache_salt), grammar, grammarParam });
        const thinking = answerThinking(ctx.settings.reasoningParser, chat.reasoning);
        const protocol = messagesProtocol(`msg_${responseId('').slice(1)}`, resolved.model, chat.ids.length, thinking, p.tools && format ? { format, names: p.tools.names } : null, thinkingOmitted(body.thinking));
        return runGeneration({ ctx, request, reply, gone, ticket, resolved, choices: [{ req, promptTokens: chat.ids.length }], stream: body.stream === true, protocol, logPrompt: () => p.messages, user: body.metadata?.user_id });
      });
    },
  );

  app.post<{ Body: CountTokensRequest }>(
    '/v1/messages/count_tokens',
    { schema: { tags: ['anthropic'], summary: 'Count the input tokens of a Messages request, as its prompt renders', body: CountTokensRequest, response: { 200: Type.Object({ input_tokens: Type.Integer() }), ...errors } } },
    async (request) => {
      const body = request.body;
      ctx.requireEngine();
      const resolved = resolveAdapter(ctx.registry, ctx.baseId, { model: body.model, lora_scale: body.lora_scale });
      request.adapterLabel = resolved.label;
      checkFields(body, COUNT_FIELDS, request.log);
      const chat = await render(ctx, prepare(body, null), resolved);
      return { input_tokens: chat.ids.length };
    },
  );
}
