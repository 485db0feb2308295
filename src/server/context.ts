/**
 * What the routes share: the engine (null until the model is ready), the tokenizer threads, the
 * adapter registry and store, admission control, metrics, the served model id and the server's
 * settings. Plus the bridge from a route to the engine: run a validated request to completion or
 * stream its events, with errors as LoraplexErrors, and every piece of bookkeeping undone on
 * every path (end, error, cancel, a failed hand-off).
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { AdapterRegistry } from '../adapters/registry.js';
import type { AdapterStore } from '../adapters/store.js';
import { LoraplexError, NotReadyError } from '../errors.js';
import type { FinishReason } from '../runtime/generation.js';
import type { Engine } from '../scheduler/engine.js';
import type { EngineEvent, TokenEngineEvent, ValidRequest } from '../scheduler/request.js';
import { Admission, type Ticket } from './admission.js';
import type { Metrics } from './metrics.js';
import type { AdapterChecker } from './adapter-check/adapter-checker.js';
import { JsonBodyParser } from './body/json-body.js';
import type { TokenizerPool } from './prompt/tokenizer-pool.js';

export interface ServerSettings {
  adminToken: string | null;
  apiKeys: string[];
  maxUploadBytes: number;
  logPrompts: boolean;
  requestTimeoutMs: number;
  strictBase: boolean;
  loraRoots: string[];
  maxBatchSize: number;
  maxBatchPrefillTokens: number;
  maxQueuedRequests: number;
  adapterCycleMs: number;
  /** Time to receive a request's headers / its body (uploads: time without progress). */
  headersTimeoutMs: number;
  bodyTimeoutMs: number;
}

export class ServerContext {
  engine: Engine | null = null;
  tokenizers: TokenizerPool | null = null;
  checker: AdapterChecker | null = null;
  readonly registry: AdapterRegistry;
  readonly store: AdapterStore | null;
  readonly metrics: Metrics;
  readonly baseId: string;
  readonly settings: ServerSettings;
  readonly admission: Admission;
  readonly bodies = new JsonBodyParser();
  readonly startedAt = Math.floor(Date.now() / 1000);
  /** Set once shutdown begins: /health answers 503 and new work is refused while running work drains. */
  draining = false;
  /** Requests that went away before they reached the engine. */
  cancelledBeforeSubmit = 0;
  /** HTTP requests on the inference and admin routes not yet answered (shutdown waits for them). */
  openRequests = 0;
  /** Requests in flight per adapter name (deletes wait for them). */
  private readonly inflight = new Map<string, number>();

  constructor(opts: { registry: AdapterRegistry; store: AdapterStore | null; metrics: Metrics; baseId: string; settings: ServerSettings }) {
    this.registry = opts.registry;
    this.store = opts.store;
    this.metrics = opts.metrics;
    this.baseId = opts.baseId;
    this.settings = opts.settings;
    this.admission = new Admission(opts.settings.maxQueuedRequests);
  }

  /** The engine and the tokenizers, or a 503 while the model is still loading or shutting down. */
  requireEngine(): Engine {
    if (this.draining) throw new LoraplexError('shutting_down', 'the server is shutting down; retry on another replica');
    if (!this.engine || !this.tokenizers) throw new NotReadyError('the model is still loading; retry shortly (see GET /health)');
    if (!this.engine.alive) throw new LoraplexError('not_ready', 'the engine has stopped');
    return this.engine;
  }

  requireTokenizers(): TokenizerPool {
    this.requireEngine();
    return this.tokenizers!;
  }

  inflightOf(name: string): number {
    return this.inflight.get(name) ?? 0;
  }

  track(names: readonly string[], delta: 1 | -1): void {
    for (const n of names) {
      const v = (this.inflight.get(n) ?? 0) + delta;
      if (v > 0) this.inflight.set(n, v);
      else this.inflight.delete(n);
    }
  }
}

export interface GenerationResult {
  tokens: TokenEngineEvent[];
  text: string;
  finishReason: FinishReason;
  completionTokens: number;
}

export interface StreamListener {
  /** The request took its first batch row. */
  onRunning?(): void;
  onToken(e: TokenEngineEvent): void;
  onEnd(e: Extract<EngineEvent, { t: 'end' }>): void;
  onError(err: LoraplexError): void;
}

/**
 * Submits one validated request (one choice) and forwards its events; `names` are the adapters it
 * uses (in-flight tracking), `ticket` its admission. Returns a function that cancels it (a no-op
 * once it has ended). Throws, with nothing left registered, if the hand-off fails.
 */
export function startGeneration(ctx: ServerContext, req: Omit<ValidRequest, 'id'>, names: readonly string[], ticket: Ticket, l: StreamListener): () => void {
  const engine = ctx.requireEngine();
  const submitted = performance.now();
  let open = true;
  const close = (): void => {
    if (open) {
      open = false;
      ticket.leaveQueue();
      ctx.track(names, -1);
    }
  };
  ctx.track(names, 1);
  let handle;
  try {
    handle = engine.submit(req, (e) => {
      if (!open) return;
      switch (e.t) {
        case 'running':
          ticket.leaveQueue();
          ctx.admission.observeWait((performance.now() - submitted) / 1000);
          l.onRunning?.();
          break;
        case 'token':
          l.onToken(e);
          break;
        case 'end':
          close();
          l.onEnd(e);
          break;
        case 'error':
          close();
          l.onError(LoraplexError.fromWire(e.error));
          break;
      }
    });
  } catch (err) {
    close();
    throw err;
  }
  return () => {
    if (!open) return;
    close();
    handle.cancel();
  };
}

/** Runs one request to its end; `signal` cancels it (client gone). */
export function generate(ctx: ServerContext, req: Omit<ValidRequest, 'id'>, names: readonly string[], ticket: Ticket, signal: AbortSignal): Promise<GenerationResult> {
  return new Promise((resolve, reject) => {
    const tokens: TokenEngineEvent[] = [];
    let text = '';
    const onAbort = (): void => {
      cancel();
      reject(new LoraplexError('cancelled', 'the client closed the connection'));
    };
    const cancel = startGeneration(ctx, req, names, ticket, {
      onToken: (e) => {
        tokens.push(e);
        text += e.text;
      },
      onEnd: (e) => {
        signal.removeEventListener('abort', onAbort);
        resolve({ tokens, text, finishReason: e.finishReason, completionTokens: e.completionTokens });
      },
      onError: (err) => {
        signal.removeEventListener('abort', onAbort);
        reject(err);
      },
    });
    if (signal.aborted) onAbort();
    else signal.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * An AbortSignal that fires when the client goes away before the response is complete — at any
 * moment, including before this was called (the connection is checked at once). Every inference
 * route takes one at entry, so a request dropped while it is validated or queued is cancelled too.
 */
export function clientGone(request: FastifyRequest, reply: FastifyReply): AbortSignal {
  const ac = new AbortController();
  const res = reply.raw;
  const gone = (): void => {
    if (!res.writableFinished) ac.abort();
  };
  res.on('close', gone);
  if (request.raw.socket?.destroyed || res.destroyed) gone();
  return ac.signal;
}
