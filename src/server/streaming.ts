/**
 * The one lifecycle of a generation, whatever API asked for it: admission, the last check that the
 * client is still there, submission of one engine request per choice, then either the whole answer
 * as JSON or a server-sent event stream, with the metrics (time to first token, inter-token
 * latency, token counters) and the `generation` log line recorded the same way for every route.
 * An API brings only its Protocol: how its answer and its stream frames look.
 *
 * Invariants:
 * - Until the stream's first byte (the first choice took a batch row) an error is thrown, and the
 *   app's one error mapping answers it as JSON in the route's shape with its status; after it, the
 *   protocol's error frame ends the stream.
 * - A client that leaves at any point cancels every choice; one that left before submission is
 *   never submitted (counted in cancelledBeforeSubmit).
 * - Exactly one settlement: `done` is set once, by the end, an error or the client leaving.
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import { LoraplexError } from '../errors.js';
import type { EngineEvent, TokenEngineEvent, ValidRequest } from '../scheduler/request.js';
import type { Ticket } from './admission.js';
import type { ServerContext } from './context.js';
import { clientGone, startGeneration, type GenerationResult, type StreamListener } from './engine-bridge.js';
import { resolveAdapter, type Resolved } from './resolve.js';
import { SseStream } from './sse.js';

export type EndEvent = Extract<EngineEvent, { t: 'end' }>;

/** Token counts of a whole request, every choice together. */
export interface Usage {
  promptTokens: number;
  completionTokens: number;
  /** Prompt tokens taken from the prefix cache (each prompt's first choice only). */
  cachedTokens: number;
}

/**
 * How one API renders a generation. `choice` is a position in the request's `choices`. The stream
 * methods run only for streamed requests, from the moment the stream opens.
 */
export interface Protocol {
  /** Not streamed: the response body, from every choice's result (in the order of `choices`). */
  whole(results: GenerationResult[], usage: Usage): unknown;
  /** The stream opened (the first choice took a batch row): its first frames. */
  start?(sse: SseStream): void;
  token(sse: SseStream, choice: number, e: TokenEngineEvent): void;
  /** One choice ended. */
  end(sse: SseStream, choice: number, e: EndEvent): void;
  /** The error frame of a stream that has started. */
  error(sse: SseStream, err: LoraplexError): void;
  /** After every choice ended, or after the error frame: the last frames (OpenAI's usage chunk). */
  close?(sse: SseStream, usage: Usage): void;
  /** The stream ends with OpenAI's `data: [DONE]` (TGI and the Responses API end without it). */
  readonly doneMarker: boolean;
}

export interface Choice {
  req: Omit<ValidRequest, 'id'>;
  /** Prompt tokens are counted once per prompt, on its first choice (0 on the others). */
  promptTokens: number;
}

export interface Generation {
  ctx: ServerContext;
  request: FastifyRequest;
  reply: FastifyReply;
  /** The route's clientGone signal, taken at its entry. */
  gone: AbortSignal;
  ticket: Ticket;
  resolved: Resolved;
  choices: readonly Choice[];
  stream: boolean;
  protocol: Protocol;
  /** The prompt as the log line shows it with --log-prompts. */
  logPrompt(): unknown;
  /** The caller's end-user id, for the log line. */
  user?: string | null;
}

const cancelled = (): LoraplexError => new LoraplexError('cancelled', 'the client closed the connection');

/** The request was abandoned before it reached the engine. */
export function droppedEarly(ctx: ServerContext): LoraplexError {
  ctx.cancelledBeforeSubmit++;
  return cancelled();
}

/** Every inference request starts the same way: watch the client, need the engine, resolve the adapter. */
export function begin(ctx: ServerContext, request: FastifyRequest, reply: FastifyReply, body: Parameters<typeof resolveAdapter>[2]) {
  const gone = clientGone(request, reply);
  const engine = ctx.requireEngine();
  const resolved = resolveAdapter(ctx.registry, ctx.baseId, body);
  request.adapterLabel = resolved.label;
  return { gone, engine, resolved };
}

/**
 * Admission (429 at once when overloaded) for `rows` engine requests, then `work`. The ticket is
 * closed on every path; a client that left before admission is never worked for.
 */
export async function admitted<T>(ctx: ServerContext, request: FastifyRequest, rows: number, gone: AbortSignal, work: (ticket: Ticket) => Promise<T>): Promise<T> {
  const ticket = ctx.admission.enter(rows, request.tenant);
  try {
    if (gone.aborted) throw droppedEarly(ctx);
    return await work(ticket);
  } finally {
    ticket.close();
  }
}

/**
 * Compiles the choices' grammar, then submits every choice unless the client has left. Resolves
 * with the JSON body (not streamed) or once the stream has ended; rejects with the error to answer
 * while nothing has been streamed.
 */
export async function runGeneration(g: Generation): Promise<unknown> {
  // Every choice of a request shares its grammar.
  const grammar = g.choices[0]?.req.grammar;
  if (grammar) await g.ctx.requireEngine().compileGrammar(grammar, g.request.tenant);
  if (g.gone.aborted) throw droppedEarly(g.ctx);
  return new Promise((resolve, reject) => new Lifecycle(g, resolve, reject).submit());
}

class Lifecycle {
  private readonly g: Generation;
  private readonly resolve: (body: unknown) => void;
  private readonly reject: (err: LoraplexError) => void;
  /** Opened when the first choice takes a batch row (streamed requests only). */
  private sse: SseStream | null = null;
  private done = false;
  private readonly cancels: (() => void)[] = [];
  private remaining: number;
  /** Per choice: tokens only when not streamed; text when not streamed or with --log-prompts. */
  private readonly results: GenerationResult[];
  private readonly usage: Usage;
  private readonly keepText: boolean;
  /** The route's label of the time-to-first-token histogram. */
  private readonly route: string;
  private readonly started = performance.now();
  /** When the request's last token came (-1: none yet). */
  private lastTokenAt = -1;

  constructor(g: Generation, resolve: (body: unknown) => void, reject: (err: LoraplexError) => void) {
    this.g = g;
    this.resolve = resolve;
    this.reject = reject;
    this.remaining = g.choices.length;
    this.results = g.choices.map(() => ({ tokens: [], prompt: [], text: '', finishReason: 'length', completionTokens: 0, cachedTokens: 0 }));
    this.usage = { promptTokens: g.choices.reduce((n, c) => n + c.promptTokens, 0), completionTokens: 0, cachedTokens: 0 };
    this.keepText = !g.stream || g.ctx.settings.logPrompts;
    this.route = g.request.routeOptions.url ?? g.request.url;
  }

  submit(): void {
    const { ctx, choices, resolved, ticket, gone } = this.g;
    gone.addEventListener('abort', this.onGone, { once: true });
    try {
      choices.forEach((c, i) => this.cancels.push(startGeneration(ctx, c.req, resolved.digests, ticket, this.listener(i))));
    } catch (err) {
      this.fail(LoraplexError.from(err));
    }
  }

  private listener(i: number): StreamListener {
    const stream = this.g.stream;
    return {
      onRunning: stream ? () => void this.open() : undefined,
      onToken: (e) => this.token(i, e),
      onPromptLogprobs: stream ? undefined : (e) => this.results[i].prompt.push(...e.tokens),
      onEnd: (e) => this.end(i, e),
      onError: (err) => this.fail(err),
    };
  }

  private open(): SseStream {
    if (!this.sse) {
      this.sse = new SseStream(this.g.reply, this.g.ctx.settings.streamStallMs);
      this.g.protocol.start?.(this.sse);
    }
    return this.sse;
  }

  private token(i: number, e: TokenEngineEvent): void {
    if (this.done) return;
    const now = performance.now();
    const metrics = this.g.ctx.metrics;
    if (this.lastTokenAt < 0) metrics.ttft.observe({ route: this.route }, (now - this.started) / 1000);
    else metrics.interTokenLatency.observe((now - this.lastTokenAt) / 1000);
    this.lastTokenAt = now;
    const r = this.results[i];
    if (this.keepText) r.text += e.text;
    if (this.g.stream) this.g.protocol.token(this.open(), i, e);
    else r.tokens.push(e);
  }

  private end(i: number, e: EndEvent): void {
    if (this.done) return;
    this.usage.completionTokens += e.completionTokens;
    if (this.g.choices[i].promptTokens > 0) this.usage.cachedTokens += e.cachedTokens;
    const r = this.results[i];
    r.finishReason = e.finishReason;
    r.stopString = e.stopString ?? null;
    r.completionTokens = e.completionTokens;
    r.cachedTokens = e.cachedTokens;
    if (this.g.stream) this.g.protocol.end(this.open(), i, e);
    if (--this.remaining > 0) return;
    if (this.g.stream) return this.endStream();
    this.settle();
    this.record();
    let body: unknown;
    try {
      body = this.g.protocol.whole(this.results, this.usage);
    } catch (err) {
      return this.reject(LoraplexError.from(err));
    }
    this.resolve(body);
  }

  /** An error from the engine or the hand-off: every choice is cancelled. */
  private fail(err: LoraplexError): void {
    if (this.done) return;
    this.cancelAll();
    if (!this.sse) {
      // Nothing streamed yet: the route's error mapping answers with the error's own status.
      this.settle();
      return this.reject(err);
    }
    this.g.protocol.error(this.sse, err);
    this.endStream();
  }

  /** The client left: nobody is listening, so nothing more is written. */
  private readonly onGone = (): void => {
    this.cancelAll();
    if (this.done) return;
    this.settle();
    // The answer only closes the request's bookkeeping.
    if (!this.sse) this.reject(cancelled());
    else this.resolve(undefined);
  };

  private endStream(): void {
    const sse = this.sse!;
    this.settle();
    if (sse.open) this.g.protocol.close?.(sse, this.usage);
    sse.end(this.g.protocol.doneMarker);
    // (Request count and latency are recorded by the app's onResponse hook, streams included.)
    this.record();
    this.resolve(undefined);
  }

  private settle(): void {
    this.done = true;
    this.g.gone.removeEventListener('abort', this.onGone);
  }

  private cancelAll(): void {
    for (const cancel of this.cancels) cancel();
  }

  /** Token counters and the generation log line (prompt and completion text only with --log-prompts). */
  private record(): void {
    const { ctx, request, resolved, stream, user } = this.g;
    const { promptTokens, completionTokens } = this.usage;
    ctx.metrics.tokens(resolved.label, promptTokens, completionTokens);
    request.log.info(
      {
        adapter: resolved.label,
        promptTokens,
        completionTokens,
        ms: Math.round(performance.now() - this.started),
        ...(stream ? { stream } : {}),
        ...(user ? { user } : {}),
        ...(ctx.settings.logPrompts ? { prompt: this.g.logPrompt(), completion: this.results.map((r) => r.text) } : {}),
      },
      'generation',
    );
  }
}
