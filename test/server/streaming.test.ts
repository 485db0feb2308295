/**
 * The generation lifecycle on its own, with an engine that emits what each test tells it to: an
 * error before the first byte is the route's JSON error with its status, an error after it is the
 * protocol's error frame followed by its last frames, a client that left before submission is
 * never submitted, and one that leaves mid-stream cancels every choice.
 */
import Fastify, { type FastifyInstance } from 'fastify';
import { afterEach, describe, expect, it } from 'vitest';
import { LoraplexError } from '../../src/errors.js';
import type { EngineEvent } from '../../src/scheduler/request.js';
import { ServerContext } from '../../src/server/context.js';
import { installErrorHandling } from '../../src/server/errors.js';
import { Metrics } from '../../src/server/metrics.js';
import { admitted, runGeneration, type Choice, type Protocol } from '../../src/server/streaming.js';

/** Submitted requests: their event callbacks, and whether each was cancelled. */
interface Submitted {
  emit: (e: EngineEvent) => void;
  cancelled: boolean;
}

function fakeContext(submitted: Submitted[]): ServerContext {
  const ctx = new ServerContext({ registry: {} as never, staging: null, metrics: new Metrics(), baseId: 'm', settings: { maxQueuedRequests: 10, streamStallMs: 60_000, logPrompts: false } as never });
  const engine = {
    alive: true,
    info: { maxPositions: 256 },
    submit: (_req: unknown, cb: (e: EngineEvent) => void) => {
      const s: Submitted = { emit: cb, cancelled: false };
      submitted.push(s);
      return { cancel: () => (s.cancelled = true) };
    },
  };
  ctx.attach({ engine, tokenizers: { info: { maxTokenBytes: 64 } }, store: {} } as never);
  return ctx;
}

/** A protocol that writes every frame as `{frame, ...}`. */
const protocol: Protocol = {
  whole: (results) => ({ texts: results.map((r) => r.text) }),
  start: (sse) => sse.send({ frame: 'start' }),
  token: (sse, choice, e) => sse.send({ frame: 'token', choice, text: e.text }),
  end: (sse, choice, e) => sse.send({ frame: 'end', choice, reason: e.finishReason }),
  error: (sse, err) => sse.send({ frame: 'error', code: err.code }),
  close: (sse, u) => sse.send({ frame: 'close', completion: u.completionTokens }),
  doneMarker: true,
};

const choice: Choice = { req: { grammar: null } as never, promptTokens: 3 };

let app: FastifyInstance | null = null;
afterEach(async () => {
  await app?.close();
  app = null;
});

/** A server whose one route runs two choices through the lifecycle; `gone` replaces the client signal. */
async function serve(ctx: ServerContext, stream: boolean, gone?: AbortSignal): Promise<string> {
  // (Closed with the client's kept-alive connections, which would hold close() for seconds.)
  app = Fastify({ forceCloseConnections: true });
  installErrorHandling(app);
  app.decorateRequest('tenant', null);
  app.post('/run', (request, reply) => {
    const ac = new AbortController();
    reply.raw.on('close', () => !reply.raw.writableFinished && ac.abort());
    return admitted(ctx, request, 2, ac.signal, (ticket) =>
      runGeneration({ ctx, request, reply, gone: gone ?? ac.signal, ticket, resolved: { spec: null, names: [], digests: [], model: 'm', label: 'base' }, choices: [choice, choice], stream, protocol, logPrompt: () => null }),
    );
  });
  return app.listen({ port: 0, host: '127.0.0.1' });
}

const token = (id: number, text: string): EngineEvent => ({ t: 'token', id, token: 1, text, special: false }) as EngineEvent;
const wireError = (id: number, code: 'timeout' | 'internal_error'): EngineEvent => ({ t: 'error', id, error: new LoraplexError(code, `${code} here`).toWire() }) as EngineEvent;
const frames = (text: string): string[] => text.split('\n\n').filter((f) => f !== '');

async function until(cond: () => boolean): Promise<void> {
  while (!cond()) await new Promise((r) => setTimeout(r, 5));
}

describe('the generation lifecycle', () => {
  it('an error before the first byte is a JSON error with its own status; the other choice is cancelled', async () => {
    const submitted: Submitted[] = [];
    const url = await serve(fakeContext(submitted), true);
    const r = fetch(`${url}/run`, { method: 'POST' });
    await until(() => submitted.length === 2);
    submitted[0].emit(wireError(0, 'timeout'));
    const res = await r;
    expect(res.status).toBe(new LoraplexError('timeout', '').statusCode);
    expect(res.headers.get('content-type')).toMatch(/^application\/json/);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe('timeout');
    expect(submitted[1].cancelled).toBe(true);
  });

  it('an error after the first byte is the error frame, then the last frames and [DONE]; the other choice is cancelled', async () => {
    const submitted: Submitted[] = [];
    const url = await serve(fakeContext(submitted), true);
    const r = fetch(`${url}/run`, { method: 'POST' });
    await until(() => submitted.length === 2);
    submitted[0].emit({ t: 'running', id: 0 });
    submitted[0].emit(token(0, 'a'));
    submitted[0].emit({ t: 'end', id: 0, finishReason: 'length', completionTokens: 1, cachedTokens: 0 } as EngineEvent);
    submitted[1].emit(wireError(1, 'internal_error'));
    const res = await r;
    expect(res.status).toBe(200);
    expect(frames(await res.text())).toEqual([
      'data: {"frame":"start"}',
      'data: {"frame":"token","choice":0,"text":"a"}',
      'data: {"frame":"end","choice":0,"reason":"length"}',
      'data: {"frame":"error","code":"internal_error"}',
      'data: {"frame":"close","completion":1}',
      'data: [DONE]',
    ]);
    expect(submitted[0].cancelled).toBe(false);
  });

  it('not streamed, the body comes from every choice; an error cancels the other choice', async () => {
    const submitted: Submitted[] = [];
    const url = await serve(fakeContext(submitted), false);
    const ok = fetch(`${url}/run`, { method: 'POST' });
    await until(() => submitted.length === 2);
    for (const [i, s] of submitted.entries()) {
      s.emit({ t: 'running', id: i });
      s.emit(token(i, `t${i}`));
      s.emit({ t: 'end', id: i, finishReason: 'stop', completionTokens: 1, cachedTokens: 0 } as EngineEvent);
    }
    expect(await (await ok).json()).toEqual({ texts: ['t0', 't1'] });
    const failed = fetch(`${url}/run`, { method: 'POST' });
    await until(() => submitted.length === 4);
    submitted[2].emit(wireError(0, 'timeout'));
    expect((await failed).status).toBe(new LoraplexError('timeout', '').statusCode);
    expect(submitted[3].cancelled).toBe(true);
  });

  it('a client that left before submission is never submitted', async () => {
    const submitted: Submitted[] = [];
    const ctx = fakeContext(submitted);
    const url = await serve(ctx, true, AbortSignal.abort());
    const res = await fetch(`${url}/run`, { method: 'POST' });
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe('cancelled');
    expect(submitted).toHaveLength(0);
    expect(ctx.cancelledBeforeSubmit).toBe(1);
  });

  it('a client that leaves mid-stream cancels every choice', async () => {
    const submitted: Submitted[] = [];
    const url = await serve(fakeContext(submitted), true);
    const ac = new AbortController();
    const res = fetch(`${url}/run`, { method: 'POST', signal: ac.signal });
    await until(() => submitted.length === 2);
    submitted[0].emit({ t: 'running', id: 0 });
    const reader = (await res).body!.getReader();
    await reader.read();
    ac.abort();
    await until(() => submitted.every((s) => s.cancelled));
  });
});
