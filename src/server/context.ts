/**
 * What the routes share: the engine (null until the model is ready), the adapter registry and
 * store, metrics, the served model id and the server's settings. Plus the bridge from a route to
 * the engine: run a request to completion or stream its events, with errors as LoraplexErrors.
 */
import type { AdapterRegistry } from '../adapters/registry.js';
import type { AdapterStore } from '../adapters/store.js';
import { LoraplexError, NotReadyError, type OpenAIErrorType } from '../errors.js';
import type { FinishReason } from '../runtime/generation.js';
import type { Engine } from '../scheduler/engine.js';
import type { EngineEvent, EngineRequest } from '../scheduler/request.js';
import type { Metrics } from './metrics.js';

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
}

export class ServerContext {
  engine: Engine | null = null;
  readonly registry: AdapterRegistry;
  readonly store: AdapterStore | null;
  readonly metrics: Metrics;
  readonly baseId: string;
  readonly settings: ServerSettings;
  readonly startedAt = Math.floor(Date.now() / 1000);
  /** Requests in flight per adapter name (deletes wait for them). */
  private readonly inflight = new Map<string, number>();

  constructor(opts: { registry: AdapterRegistry; store: AdapterStore | null; metrics: Metrics; baseId: string; settings: ServerSettings }) {
    this.registry = opts.registry;
    this.store = opts.store;
    this.metrics = opts.metrics;
    this.baseId = opts.baseId;
    this.settings = opts.settings;
  }

  /** The engine, or a 503 while the model is still loading. */
  requireEngine(): Engine {
    if (!this.engine) throw new NotReadyError('the model is still loading; retry shortly (see GET /health)');
    return this.engine;
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

/** An engine error event as an error the HTTP layer maps. */
export class EngineRequestError extends LoraplexError {
  constructor(e: Extract<EngineEvent, { t: 'error' }>) {
    super(e.message, { code: e.code, statusCode: e.status, type: e.type as OpenAIErrorType, param: e.param });
  }
}

export type TokenEvent = Extract<EngineEvent, { t: 'token' }>;

export interface GenerationResult {
  promptTokens: number;
  promptIds?: number[];
  tokens: TokenEvent[];
  text: string;
  finishReason: FinishReason;
  completionTokens: number;
}

export interface StreamListener {
  onStart?(e: Extract<EngineEvent, { t: 'start' }>): void;
  onToken(e: TokenEvent): void;
  onEnd(e: Extract<EngineEvent, { t: 'end' }>): void;
  onError(err: LoraplexError): void;
}

/**
 * Submits a request and forwards its events; `names` are the adapters it uses (in-flight tracking).
 * Returns a function that cancels it (a no-op once it has ended).
 */
export function startGeneration(ctx: ServerContext, req: Omit<EngineRequest, 'id'>, names: readonly string[], l: StreamListener): () => void {
  const engine = ctx.requireEngine();
  ctx.track(names, 1);
  let open = true;
  const close = (): void => {
    if (open) {
      open = false;
      ctx.track(names, -1);
    }
  };
  const handle = engine.submit(req, (e) => {
    if (!open) return;
    switch (e.t) {
      case 'start':
        l.onStart?.(e);
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
        l.onError(new EngineRequestError(e));
        break;
    }
  });
  return () => {
    if (!open) return;
    close();
    handle.cancel();
  };
}

/** Runs a request to its end; `signal` cancels it (client gone). */
export function generate(ctx: ServerContext, req: Omit<EngineRequest, 'id'>, names: readonly string[], signal?: AbortSignal): Promise<GenerationResult> {
  return new Promise((resolve, reject) => {
    const tokens: TokenEvent[] = [];
    let text = '';
    let promptTokens = 0;
    let promptIds: number[] | undefined;
    const cancel = startGeneration(ctx, req, names, {
      onStart: (e) => {
        promptTokens = e.promptTokens;
        promptIds = e.promptIds;
      },
      onToken: (e) => {
        tokens.push(e);
        text += e.text;
      },
      onEnd: (e) => {
        signal?.removeEventListener('abort', onAbort);
        resolve({ promptTokens: e.promptTokens || promptTokens, promptIds, tokens, text, finishReason: e.finishReason, completionTokens: e.completionTokens });
      },
      onError: (err) => {
        signal?.removeEventListener('abort', onAbort);
        reject(err);
      },
    });
    const onAbort = (): void => {
      cancel();
      reject(new LoraplexError('the client closed the connection', { code: 'client_closed', statusCode: 499, type: 'invalid_request_error' }));
    };
    if (signal?.aborted) onAbort();
    else signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * An AbortSignal that fires when the client goes away before the response is complete. (The
 * request's own 'close' event fires as soon as its body has been read, so the response is watched.)
 */
export function clientGone(reply: { raw: NodeJS.EventEmitter & { writableFinished: boolean } }): AbortSignal {
  const ac = new AbortController();
  reply.raw.on('close', () => {
    if (!reply.raw.writableFinished) ac.abort();
  });
  return ac.signal;
}
