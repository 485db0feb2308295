/**
 * The bridge from a route to the engine: submit one validated request and forward its events, with
 * errors as LoraplexErrors and every piece of bookkeeping (admission ticket, in-flight adapter
 * versions) undone on every path — end, error, cancel, a failed hand-off. Plus the signal that
 * tells a route its client has gone.
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import { LoraplexError } from '../errors.js';
import type { FinishReason } from '../runtime/generation.js';
import type { EngineEvent, PromptTokenLogprob, TokenEngineEvent, ValidRequest } from '../scheduler/request.js';
import type { Ticket } from './admission.js';
import type { ServerContext } from './context.js';

export interface GenerationResult {
  tokens: TokenEngineEvent[];
  /** With prompt logprobs: the prompt's tokens. */
  prompt: PromptTokenLogprob[];
  text: string;
  finishReason: FinishReason;
  /** The stop string that ended it (null: none did). */
  stopString?: string | null;
  completionTokens: number;
  /** Prompt tokens whose KV came from the prefix cache. */
  cachedTokens: number;
}

export interface StreamListener {
  /** The request took its first batch row. */
  onRunning?(): void;
  onToken(e: TokenEngineEvent): void;
  onPromptLogprobs?(e: Extract<EngineEvent, { t: 'prompt_logprobs' }>): void;
  onEnd(e: Extract<EngineEvent, { t: 'end' }>): void;
  onError(err: LoraplexError): void;
}

/**
 * Submits one validated request (one choice) and forwards its events; `digests` are the adapter
 * versions it uses (in-flight tracking), `ticket` its admission. Returns a function that cancels it (a no-op
 * once it has ended). Throws, with nothing left registered, if the hand-off fails.
 */
export function startGeneration(ctx: ServerContext, req: Omit<ValidRequest, 'id'>, digests: readonly string[], ticket: Ticket, l: StreamListener): () => void {
  const engine = ctx.requireEngine();
  const submitted = performance.now();
  let open = true;
  const close = (): void => {
    if (open) {
      open = false;
      ticket.leaveQueue();
      ctx.inflight.track(digests, -1);
    }
  };
  ctx.inflight.track(digests, 1);
  let handle;
  try {
    // The request's tenant (its API key's digest) shares batch rows fairly with the others.
    handle = engine.submit({ ...req, tenant: ticket.tenant }, (e) => {
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
        case 'prompt_logprobs':
          l.onPromptLogprobs?.(e);
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
