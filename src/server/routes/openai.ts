/**
 * OpenAI-compatible routes: POST /v1/chat/completions, POST /v1/completions (both with SSE
 * streaming), GET /v1/models. `model` picks the adapter; LoRAX's `adapter_id` and `merged_adapters`
 * are accepted too.
 *
 * Every request goes the same way: cheap checks → admission (429 at once when overloaded) →
 * tokenization in a tokenizer thread → one validated engine request per choice. The client's
 * connection is watched from the first moment, so a client that leaves at any point frees its rows.
 */
import { requestGrammar } from '../grammar-fields.js';
import { chatToolCalls, toolRequest } from '../tool-fields.js';
import { AnswerReader, type AnswerPiece } from '../answer-reader.js';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { LoraplexError, ModelNotFoundError, UnsupportedError, ValidationError } from '../../errors.js';
import type { TokenEngineEvent } from '../../scheduler/request.js';
import type { Ticket } from '../admission.js';
import { checkRows } from '../admission.js';
import { answerConstraint } from '../answer-constraint.js';
import { answerConstrained, answerThinking, checkConstrainedPrompt, thinkingKwargs } from '../reasoning.js';
import type { ServerContext } from '../context.js';
import type { GenerationResult } from '../engine-bridge.js';
import { checkShape } from '../prompt/limits.js';
import { checkFields, declaredFields } from '../fields.js';
import { cachePartition } from '../cache-partition.js';
import { chatMessages, chatPrompt, promptIds, responseId, sampling, stopStrings, truncatePrompt, utf8Bytes, validRequest, type PromptSource } from '../requests.js';
import type { Resolved } from '../resolve.js';
import { ChatCompletionRequest, ChatCompletionResponse, CompletionRequest, CompletionResponse, ErrorBody, ModelCard, ModelList } from '../schemas.js';
import { admitted, begin, runGeneration, type Choice, type Protocol, type Usage } from '../streaming.js';
import { Type } from 'typebox';

/** A choice and its index on the wire (with best_of, the index among the sampled sequences). */
interface IndexedChoice extends Choice {
  index: number;
}

/** How one API shapes its chunks and final response. */
interface Shape {
  object: string;
  chunkObject: string;
  /** The first chunk of a choice (chat sends the role). */
  first?(index: number): Record<string, unknown>;
  delta(index: number, e: TokenEngineEvent): Record<string, unknown> | null;
  finish(index: number, reason: string): Record<string, unknown>;
  full(index: number, r: GenerationResult): Record<string, unknown>;
  /** Tokens of thinking (usage's completion_tokens_details): of these results, or of the stream so far (null: not a thinking answer). */
  reasoningTokens?(results: GenerationResult[] | null): number | null;
}

/** OpenAI's usage; cached prompt tokens came from the prefix cache (those of each prompt's first choice). */
function usage(u: Usage, reasoningTokens: number | null = null): Record<string, unknown> {
  return {
    prompt_tokens: u.promptTokens,
    completion_tokens: u.completionTokens,
    total_tokens: u.promptTokens + u.completionTokens,
    prompt_tokens_details: { cached_tokens: u.cachedTokens },
    ...(reasoningTokens !== null ? { completion_tokens_details: { reasoning_tokens: reasoningTokens } } : {}),
  };
}

const CHAT_FIELDS = declaredFields(ChatCompletionRequest);
const COMPLETION_FIELDS = declaredFields(CompletionRequest);

/** best_of: per prompt (groups of `per` results), the `n` with the highest cumulative logprob. */
function pickBest(results: GenerationResult[], per: number, n: number): number[] {
  const score = (r: GenerationResult): number => r.tokens.reduce((s, t) => s + (t.logprob ?? 0), 0);
  const out: number[] = [];
  for (let g = 0; g * per < results.length; g++) {
    const group = Array.from({ length: per }, (_, i) => g * per + i);
    out.push(...group.sort((a, b) => score(results[b]) - score(results[a]) || a - b).slice(0, n));
  }
  return out;
}

/** Runs every choice through the generation lifecycle, in OpenAI's response and chunk shapes. */
function run(
  ctx: ServerContext,
  request: FastifyRequest,
  reply: FastifyReply,
  body: { stream?: boolean | null; stream_options?: { include_usage?: boolean | null } | null; user?: string | null },
  resolved: Resolved,
  choices: IndexedChoice[],
  ticket: Ticket,
  gone: AbortSignal,
  shape: Shape,
  logPrompt: () => unknown,
  /** Non-streamed: which results to return, in order (best_of); default all. */
  select?: (results: GenerationResult[]) => number[],
): Promise<unknown> {
  const id = responseId(shape.object === 'chat.completion' ? 'chatcmpl' : 'cmpl');
  const created = Math.floor(Date.now() / 1000);
  const includeUsage = body.stream_options?.include_usage === true;
  const chunk = (choicesPart: Record<string, unknown>[]): Record<string, unknown> => ({
    id,
    object: shape.chunkObject,
    created,
    model: resolved.model,
    choices: choicesPart,
    ...(includeUsage ? { usage: null } : {}),
  });
  const protocol: Protocol = {
    whole: (results, u) => ({
      id,
      object: shape.object,
      created,
      model: resolved.model,
      choices: (select?.(results) ?? results.map((_, i) => i)).map((at, k) => shape.full(select ? k : choices[at].index, results[at])),
      usage: usage(u, shape.reasoningTokens?.(results) ?? null),
      system_fingerprint: null,
    }),
    start: (sse) => {
      if (shape.first) for (const c of choices) sse.send(chunk([shape.first(c.index)]));
    },
    token: (sse, i, e) => {
      const d = shape.delta(choices[i].index, e);
      if (d) sse.send(chunk([d]));
    },
    end: (sse, i, e) => sse.send(chunk([shape.finish(choices[i].index, e.finishReason)])),
    error: (sse, err) => sse.send({ error: { message: err.message, type: err.type, param: err.param, code: err.code } }),
    close: includeUsage ? (sse, u) => sse.send({ id, object: shape.chunkObject, created, model: resolved.model, choices: [], usage: usage(u, shape.reasoningTokens?.(null) ?? null) }) : undefined,
    doneMarker: true,
  };
  return runGeneration({ ctx, request, reply, gone, ticket, resolved, choices, stream: body.stream === true, protocol, logPrompt, user: body.user });
}

function chatLogprobs(tokens: TokenEngineEvent[]): { content: unknown[] } {
  return {
    content: tokens
      .filter((t) => !t.special)
      .map((t) => ({
        token: t.tokenText ?? '',
        logprob: t.logprob ?? 0,
        bytes: utf8Bytes(t.tokenText ?? ''),
        top_logprobs: (t.top ?? []).map((a) => ({ token: a.text, logprob: a.logprob, bytes: utf8Bytes(a.text) })),
      })),
  };
}

function completionLogprobs(tokens: TokenEngineEvent[], offset0: number): Record<string, unknown> {
  let offset = offset0;
  const out = { tokens: [] as string[], token_logprobs: [] as number[], top_logprobs: [] as Record<string, number>[], text_offset: [] as number[] };
  for (const t of tokens) {
    if (t.special) continue;
    out.tokens.push(t.tokenText ?? '');
    out.token_logprobs.push(t.logprob ?? 0);
    out.top_logprobs.push(Object.fromEntries((t.top ?? []).map((a) => [a.text, a.logprob])));
    out.text_offset.push(offset);
    offset += (t.tokenText ?? '').length;
  }
  return out;
}

export function openaiRoutes(app: FastifyInstance, ctx: ServerContext): void {
  const errors = { 400: ErrorBody, 404: ErrorBody, 422: ErrorBody, 429: ErrorBody, 503: ErrorBody };

  app.post<{ Body: ChatCompletionRequest }>(
    '/v1/chat/completions',
    { schema: { tags: ['openai'], summary: 'Chat completion (OpenAI-compatible); `model` selects the adapter', body: ChatCompletionRequest, response: { 200: ChatCompletionResponse, ...errors } } },
    async (request, reply) => {
      const { gone, engine, resolved } = begin(ctx, request, reply, request.body);
      const body = request.body;
      checkFields(body, CHAT_FIELDS, request.log);
      const grammar = requestGrammar(body);
      const n = body.n ?? 1;
      checkRows(n, ctx.settings.maxRowsPerRequest, 'n', `n=${n}`);
      if (body.tools != null) checkShape(body.tools, 'tools');
      const toolReq = toolRequest(body.tools, body.tool_choice, body.parallel_tool_calls, 'chat');
      if (body.chat_template_kwargs != null) checkShape(body.chat_template_kwargs, 'chat_template_kwargs');
      if (body.messages.length > engine.info.maxPositions) {
        throw new LoraplexError('context_length_exceeded', `${body.messages.length} messages cannot fit the context length of ${engine.info.maxPositions} tokens`, { param: 'messages' });
      }
      const messages = chatMessages(body.messages as Parameters<typeof chatMessages>[0]);
      const partition = cachePartition(request.cacheTenant, body.cache_salt);
      if (body.top_logprobs != null && !body.logprobs) throw new ValidationError('top_logprobs needs logprobs: true', 'top_logprobs');
      const logprobs = body.logprobs ? (body.top_logprobs ?? 0) : null;
      const s = sampling(body, engine.info.vocabSize, logprobs);
      stopStrings(body.stop);
      // tool_choice "none": the model is not offered the tools at all.
      // A grammar constrains the answer from its first token: thinking is off for it (see reasoning.ts).
      const constrained = answerConstrained(grammar, toolReq);
      const constraintParam = grammar ? 'response_format' : 'tool_choice';
      const templateKwargs = thinkingKwargs(body.chat_template_kwargs ?? null, constrained, constraintParam);
      const prompt: PromptSource = { kind: 'chat', messages, tools: toolReq?.templateTools ?? null, addGenerationPrompt: body.add_generation_prompt ?? true, templateKwargs };
      return admitted(ctx, request, n, gone, async (ticket) => {
        const chat = await chatPrompt(ctx, prompt, resolved);
        checkConstrainedPrompt(chat.reasoning, constrained, constraintParam);
        const ids = truncatePrompt(chat.ids, body.truncate_prompt_tokens);
        const { format, grammar: constraint, grammarParam } = answerConstraint(ctx, toolReq, chat.toolCallFormat, grammar, { param: 'response_format', name: 'response_format (or a guided_* field)' });
        const choices = Array.from({ length: n }, (_, i) => ({ index: i, req: validRequest(ctx, ids, body, resolved, s, i, { cachePartition: partition, grammar: constraint, grammarParam }), promptTokens: i === 0 ? ids.length : 0 }));
        const lp = (e: TokenEngineEvent) => (logprobs !== null && !e.special ? chatLogprobs([e]) : null);
        // Each choice's answer: a thinking template's thinking split off, tool calls read from the rest (answer-reader.ts).
        const thinking = answerThinking(ctx.settings.reasoningParser, chat.reasoning);
        const tools = toolReq && format ? { format, names: toolReq.names } : null;
        /** Per choice index: its reader and how many calls it has streamed (the client numbers them by `index`). */
        const readers = new Map<number, { reader: AnswerReader; calls: number }>();
        const readerOf = (index: number): { reader: AnswerReader; calls: number } => {
          let s = readers.get(index);
          if (!s) readers.set(index, (s = { reader: new AnswerReader(thinking, tools), calls: 0 }));
          return s;
        };
        const chatDelta = (index: number, p: AnswerPiece): Record<string, unknown> | null => {
          const d: Record<string, unknown> = {};
          if (p.reasoning) Object.assign(d, { reasoning_content: p.reasoning, reasoning: p.reasoning });
          if (p.content) d.content = p.content;
          if (p.calls.length > 0) {
            const s = readerOf(index);
            d.tool_calls = chatToolCalls(p.calls).map((c) => ({ index: s.calls++, ...c }));
          }
          return Object.keys(d).length > 0 ? d : null;
        };
        /** An answer with calls that ended normally finishes with `tool_calls`. */
        const finishReason = (calls: number, reason: string): string => (calls > 0 && reason === 'stop' ? 'tool_calls' : reason);
        return run(ctx, request, reply, body, resolved, choices, ticket, gone, {
          object: 'chat.completion',
          chunkObject: 'chat.completion.chunk',
          first: (index) => ({ index, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }),
          delta: (index, e) => {
            const delta = chatDelta(index, readerOf(index).reader.pushToken(e.text));
            return delta || (logprobs !== null && !e.special) ? { index, delta: delta ?? {}, logprobs: lp(e), finish_reason: null } : null;
          },
          finish: (index, reason) => {
            const delta = chatDelta(index, readerOf(index).reader.end()) ?? {};
            return { index, delta, logprobs: null, finish_reason: finishReason(readerOf(index).calls, reason) };
          },
          reasoningTokens: (results) => {
            if (!thinking) return null;
            if (results) return results.reduce((n, r) => n + AnswerReader.readAll(r.tokens, thinking, null).reasoningTokens, 0);
            return [...readers.values()].reduce((n, s) => n + s.reader.reasoningTokens, 0);
          },
          full: (index, r) => {
            const a = AnswerReader.readAll(r.tokens, thinking, tools);
            const message = a.calls.length > 0 ? { role: 'assistant', content: a.content.trim() === '' ? null : a.content, tool_calls: chatToolCalls(a.calls) } : { role: 'assistant', content: a.content };
            const reasoning = thinking ? { reasoning_content: a.reasoning || null, reasoning: a.reasoning || null } : {};
            return { index, message: { ...message, ...reasoning }, logprobs: logprobs !== null ? chatLogprobs(r.tokens) : null, finish_reason: finishReason(a.calls.length, r.finishReason) };
          },
        }, () => messages);
      });
    },
  );

  app.post<{ Body: CompletionRequest }>(
    '/v1/completions',
    { schema: { tags: ['openai'], summary: 'Text completion (OpenAI-compatible); `model` selects the adapter', body: CompletionRequest, response: { 200: CompletionResponse, ...errors } } },
    async (request, reply) => {
      const { gone, engine, resolved } = begin(ctx, request, reply, request.body);
      const body = request.body;
      checkFields(body, COMPLETION_FIELDS, request.log);
      if (body.suffix) throw new UnsupportedError('suffix (fill in the middle) is not supported', 'suffix');
      const n = body.n ?? 1;
      // best_of: sample best_of completions per prompt, return the n most likely (by cumulative logprob).
      const bestOf = body.best_of ?? n;
      if (bestOf < n) throw new ValidationError(`best_of (${bestOf}) must be >= n (${n})`, 'best_of');
      if (bestOf > n && body.stream) throw new ValidationError('best_of cannot be used with stream', 'best_of');
      const p = body.prompt;
      const sources: PromptSource[] =
        typeof p === 'string'
          ? [{ kind: 'text', text: p, param: 'prompt' }]
          : typeof p[0] === 'number'
            ? [{ kind: 'ids', ids: p as number[], param: 'prompt' }]
            : (p as (string | number[])[]).map((x, i) => (typeof x === 'string' ? { kind: 'text' as const, text: x, param: `prompt[${i}]` } : { kind: 'ids' as const, ids: x, param: `prompt[${i}]` }));
      const per = bestOf > n ? `best_of=${bestOf}` : `n=${n}`;
      checkRows(sources.length * bestOf, ctx.settings.maxRowsPerRequest, bestOf > n ? 'best_of' : 'n', sources.length > 1 ? `${sources.length} prompts × ${per}` : per);
      if (sources.length * bestOf > 64) throw new ValidationError(`at most 64 choices per request; given ${sources.length} prompts × ${bestOf > n ? `best_of=${bestOf}` : `n=${n}`}`, bestOf > n ? 'best_of' : 'n');
      const echo = body.echo === true;
      if (echo && sources.some((x) => x.kind !== 'text')) throw new UnsupportedError('echo is supported for text prompts only', 'echo');
      const prefix = (index: number): string => {
        const pr = sources[Math.floor(index / n)];
        return echo && pr.kind === 'text' ? pr.text : '';
      };
      const logprobs = body.logprobs ?? null;
      // (best_of ranks by cumulative logprob, so every token must carry its own.)
      const s = sampling(body, engine.info.vocabSize, bestOf > n ? (logprobs ?? 0) : logprobs);
      stopStrings(body.stop);
      const grammar = requestGrammar(body);
      const partition = cachePartition(request.cacheTenant, body.cache_salt);
      return admitted(ctx, request, sources.length * bestOf, gone, async (ticket) => {
        const ids = (await Promise.all(sources.map((src) => promptIds(ctx, src, resolved)))).map((x) => truncatePrompt(x, body.truncate_prompt_tokens));
        const choices = ids.flatMap((pi, i) => Array.from({ length: bestOf }, (_, c) => ({ index: i * bestOf + c, req: validRequest(ctx, pi, body, resolved, s, c, { cachePartition: partition, grammar }), promptTokens: c === 0 ? pi.length : 0 })));
        const select = bestOf > n ? (results: GenerationResult[]) => pickBest(results, bestOf, n) : undefined;
        const sent = new Set<number>();
        return run(ctx, request, reply, body, resolved, choices, ticket, gone, {
          object: 'text_completion',
          chunkObject: 'text_completion',
          delta: (index, e) => {
            const lead = echo && !sent.has(index) ? prefix(index) : '';
            if (!e.text && !lead && (logprobs === null || e.special)) return null;
            sent.add(index);
            return { index, text: lead + e.text, logprobs: logprobs !== null && !e.special ? completionLogprobs([e], 0) : null, finish_reason: null };
          },
          finish: (index, reason) => ({ index, text: echo && !sent.has(index) ? prefix(index) : '', logprobs: null, finish_reason: reason }),
          full: (index, r) => ({ index, text: prefix(index) + r.text, logprobs: logprobs !== null ? completionLogprobs(r.tokens, prefix(index).length) : null, finish_reason: r.finishReason }),
        }, () => sources.map((x) => (x.kind === 'text' ? x.text : x.kind === 'ids' ? x.ids : null)), select);
      });
    },
  );

  const card = (name: string) => {
    const maxLen = ctx.engine?.info.maxPositions;
    const common = { object: 'model' as const, owned_by: 'loraplex', root: ctx.baseId, ...(maxLen ? { max_model_len: maxLen } : {}) };
    if (name === ctx.baseId) return { id: ctx.baseId, created: ctx.startedAt, parent: null, ...common };
    const r = ctx.registry.get(name);
    if (!r) throw new ModelNotFoundError(`The model \`${name}\` does not exist; see GET /v1/models.`, 'model');
    return { id: r.name, created: Math.floor(r.createdAt / 1000), parent: ctx.baseId, digest: r.digest, ...common };
  };
  for (const path of ['/v1/models/:name', '/v1/models/:org/:name']) {
    app.get<{ Params: { org?: string; name: string } }>(
      path,
      { schema: { tags: ['openai'], summary: 'One model: the base model or an adapter', params: path.includes(':org') ? Type.Object({ org: Type.String(), name: Type.String() }) : Type.Object({ name: Type.String() }), response: { 200: ModelCard, 404: ErrorBody } } },
      async (request) => card(request.params.org ? `${request.params.org}/${request.params.name}` : request.params.name),
    );
  }

  app.get('/v1/models', { schema: { tags: ['openai'], summary: 'The base model and every adapter (adapters have parent = the base id)', response: { 200: ModelList } } }, async () => {
    const maxLen = ctx.engine?.info.maxPositions;
    return {
      object: 'list' as const,
      data: [
        { id: ctx.baseId, object: 'model' as const, created: ctx.startedAt, owned_by: 'loraplex', root: ctx.baseId, parent: null, ...(maxLen ? { max_model_len: maxLen } : {}) },
        ...ctx.registry.list().map((r) => ({
          id: r.name,
          object: 'model' as const,
          created: Math.floor(r.createdAt / 1000),
          owned_by: 'loraplex',
          root: ctx.baseId,
          parent: ctx.baseId,
          ...(maxLen ? { max_model_len: maxLen } : {}),
          digest: r.digest,
        })),
      ],
    };
  });
}
