/**
 * OpenAI-compatible routes: POST /v1/chat/completions, POST /v1/completions (both with SSE
 * streaming), GET /v1/models. `model` picks the adapter; LoRAX's `adapter_id` and `merged_adapters`
 * are accepted too.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { UnsupportedError, ValidationError, type LoraplexError } from '../../errors.js';
import type { PromptInput } from '../../scheduler/request.js';
import { clientGone, generate, startGeneration, type GenerationResult, type ServerContext, type TokenEvent } from '../context.js';
import { resolveAdapter, type Resolved } from '../resolve.js';
import { chatMessages, engineRequest, responseId, sampling, utf8Bytes } from '../requests.js';
import { ChatCompletionRequest, ChatCompletionResponse, CompletionRequest, CompletionResponse, ErrorBody, ModelList } from '../schemas.js';
import { SseStream } from '../sse.js';
import { errorBody } from '../errors.js';

interface Choice {
  index: number;
  prompt: PromptInput;
}

/** How one API shapes its chunks and final response. */
interface Shape {
  object: string;
  chunkObject: string;
  /** The first chunk of a choice (chat sends the role). */
  first?(index: number): Record<string, unknown>;
  delta(index: number, e: TokenEvent): Record<string, unknown> | null;
  finish(index: number, reason: string): Record<string, unknown>;
  full(index: number, r: GenerationResult): Record<string, unknown>;
}

function usage(promptTokens: number, completion: number): { prompt_tokens: number; completion_tokens: number; total_tokens: number } {
  return { prompt_tokens: promptTokens, completion_tokens: completion, total_tokens: promptTokens + completion };
}

/**
 * Runs every choice; answers JSON, or streams SSE once the first choice is admitted (errors found
 * before that — context length, unknown template — are plain JSON errors with their status).
 */
async function run(
  ctx: ServerContext,
  request: FastifyRequest,
  reply: FastifyReply,
  body: Parameters<typeof engineRequest>[0] & { stream?: boolean | null; stream_options?: { include_usage?: boolean | null } | null },
  resolved: Resolved,
  choices: Choice[],
  logprobs: number | null,
  shape: Shape,
): Promise<unknown> {
  const engine = ctx.requireEngine();
  const s = sampling(body, engine.info.vocabSize, logprobs);
  const id = responseId(shape.object === 'chat.completion' ? 'chatcmpl' : 'cmpl');
  const created = Math.floor(Date.now() / 1000);
  const route = request.routeOptions.url ?? request.url;
  const started = performance.now();
  const adapterLabel = resolved.names.join('+') || 'base';
  const n = body.n ?? 1;
  /** Prompt tokens count once per prompt, not once per choice of it. */
  const promptShare = (index: number, tokens: number): number => (index % n === 0 ? tokens : 0);
  /** Token counters and the generation log line (text only with --log-prompts). */
  const record = (promptTokens: number, completion: number, texts: string[], stream: boolean): void => {
    ctx.metrics.promptTokens.inc({ adapter: adapterLabel }, promptTokens);
    ctx.metrics.generatedTokens.inc({ adapter: adapterLabel }, completion);
    request.log.info(
      {
        adapter: adapterLabel,
        promptTokens,
        completionTokens: completion,
        ms: Math.round(performance.now() - started),
        ...(stream ? { stream } : {}),
        ...(ctx.settings.logPrompts ? { prompt: choices.map((c) => c.prompt), completion: texts } : {}),
      },
      'generation',
    );
  };

  if (!body.stream) {
    const signal = clientGone(reply);
    const results = await Promise.all(
      choices.map((c) => generate(ctx, engineRequest(body, c.prompt, resolved, s, ctx.settings.requestTimeoutMs, c.index), resolved.names, signal)),
    );
    const promptTokens = results.reduce((sum, r, i) => sum + promptShare(choices[i].index, r.promptTokens), 0);
    const completion = results.reduce((sum, r) => sum + r.completionTokens, 0);
    record(promptTokens, completion, results.map((r) => r.text), false);
    return {
      id,
      object: shape.object,
      created,
      model: resolved.model,
      choices: results.map((r, i) => shape.full(choices[i].index, r)),
      usage: usage(promptTokens, completion),
      system_fingerprint: null,
    };
  }

  const includeUsage = body.stream_options?.include_usage === true;
  let sse: SseStream | null = null;
  const cancels: (() => void)[] = [];
  let remaining = choices.length;
  let promptTokens = 0;
  let completion = 0;
  let firstToken = true;
  let lastTokenAt = 0;
  const texts = choices.map(() => '');
  const chunk = (choicesPart: Record<string, unknown>[]): Record<string, unknown> => ({
    id,
    object: shape.chunkObject,
    created,
    model: resolved.model,
    choices: choicesPart,
    ...(includeUsage ? { usage: null } : {}),
  });
  return new Promise<void>((resolve) => {
    const finishStream = (): void => {
      if (sse?.open && includeUsage) sse.send({ id, object: shape.chunkObject, created, model: resolved.model, choices: [], usage: usage(promptTokens, completion) });
      sse?.end();
      // (Request count and latency are recorded by the app's onResponse hook, streams included.)
      record(promptTokens, completion, texts, true);
      resolve();
    };
    const fail = (err: LoraplexError): void => {
      cancels.forEach((c) => c());
      if (!sse) {
        // Nothing streamed yet: answer with the error's own status.
        reply.code(err.statusCode).send(errorBody(err));
        resolve();
        return;
      }
      sse.send(errorBody(err));
      remaining = 0;
      finishStream();
    };
    const open = (): SseStream => {
      if (!sse) {
        sse = new SseStream(reply, () => cancels.forEach((c) => c()));
        for (const c of choices) if (shape.first) sse.send(chunk([shape.first(c.index)]));
      }
      return sse;
    };
    choices.forEach((c, ci) => {
      cancels.push(
        startGeneration(ctx, engineRequest(body, c.prompt, resolved, s, ctx.settings.requestTimeoutMs, c.index), resolved.names, {
          onStart: (e) => {
            promptTokens += promptShare(c.index, e.promptTokens);
            open();
          },
          onToken: (e) => {
            const now = performance.now();
            if (firstToken) {
              ctx.metrics.ttft.observe({ route }, (now - started) / 1000);
              firstToken = false;
            } else ctx.metrics.interTokenLatency.observe((now - lastTokenAt) / 1000);
            lastTokenAt = now;
            if (ctx.settings.logPrompts) texts[ci] += e.text;
            const d = shape.delta(c.index, e);
            if (d) open().send(chunk([d]));
          },
          onEnd: (e) => {
            completion += e.completionTokens;
            open().send(chunk([shape.finish(c.index, e.finishReason)]));
            if (--remaining === 0) finishStream();
          },
          onError: fail,
        }),
      );
    });
  });
}

function chatLogprobs(tokens: TokenEvent[]): { content: unknown[] } {
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

function completionLogprobs(tokens: TokenEvent[], offset0: number): Record<string, unknown> {
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
      const body = request.body;
      const engine = ctx.requireEngine();
      const resolved = resolveAdapter(ctx.registry, ctx.baseId, body);
      if (body.response_format && (body.response_format as { type?: string }).type !== 'text') {
        throw new UnsupportedError('response_format other than "text" is not supported', 'response_format');
      }
      const n = body.n ?? 1;
      const messages = chatMessages(body.messages as Parameters<typeof chatMessages>[0]);
      const prompt: PromptInput = { kind: 'chat', messages, tools: (body.tools as unknown[] | null | undefined) ?? null, addGenerationPrompt: body.add_generation_prompt ?? true };
      if (!engine.info.hasChatTemplate && !resolved.spec) {
        throw new ValidationError(`the model ${ctx.baseId} has no chat template; use /v1/completions`, 'messages');
      }
      const logprobs = body.logprobs ? (body.top_logprobs ?? 0) : null;
      return run(ctx, request, reply, body, resolved, Array.from({ length: n }, (_, i) => ({ index: i, prompt })), logprobs, {
        object: 'chat.completion',
        chunkObject: 'chat.completion.chunk',
        first: (index) => ({ index, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }),
        delta: (index, e) =>
          e.text || (logprobs !== null && !e.special)
            ? { index, delta: { content: e.text }, logprobs: logprobs !== null && !e.special ? chatLogprobs([e]) : null, finish_reason: null }
            : null,
        finish: (index, reason) => ({ index, delta: {}, logprobs: null, finish_reason: reason }),
        full: (index, r) => ({ index, message: { role: 'assistant', content: r.text }, logprobs: logprobs !== null ? chatLogprobs(r.tokens) : null, finish_reason: r.finishReason }),
      });
    },
  );

  app.post<{ Body: CompletionRequest }>(
    '/v1/completions',
    { schema: { tags: ['openai'], summary: 'Text completion (OpenAI-compatible); `model` selects the adapter', body: CompletionRequest, response: { 200: CompletionResponse, ...errors } } },
    async (request, reply) => {
      const body = request.body;
      ctx.requireEngine();
      const resolved = resolveAdapter(ctx.registry, ctx.baseId, body);
      if (body.suffix) throw new UnsupportedError('suffix is not supported', 'suffix');
      const n = body.n ?? 1;
      if (body.best_of != null && body.best_of !== n) throw new UnsupportedError('best_of other than n is not supported', 'best_of');
      const p = body.prompt;
      const prompts: PromptInput[] =
        typeof p === 'string'
          ? [{ kind: 'text', text: p }]
          : typeof p[0] === 'number'
            ? [{ kind: 'ids', ids: p as number[] }]
            : (p as (string | number[])[]).map((x) => (typeof x === 'string' ? { kind: 'text' as const, text: x } : { kind: 'ids' as const, ids: x }));
      if (prompts.length * n > 64) throw new ValidationError(`at most 64 choices per request; given ${prompts.length} prompts × n=${n}`, 'n');
      const echo = body.echo === true;
      if (echo && prompts.some((x) => x.kind !== 'text')) throw new UnsupportedError('echo is supported for text prompts only', 'echo');
      const prefix = (index: number): string => {
        const pr = prompts[Math.floor(index / n)];
        return echo && pr.kind === 'text' ? pr.text : '';
      };
      const logprobs = body.logprobs ?? null;
      const choices = prompts.flatMap((prompt, pi) => Array.from({ length: n }, (_, i) => ({ index: pi * n + i, prompt })));
      const sent = new Set<number>();
      return run(ctx, request, reply, body, resolved, choices, logprobs, {
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
      });
    },
  );

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
        })),
      ],
    };
  });
}
