/**
 * GET /health (503 until the model is ready) and GET /metrics (Prometheus). /metrics shows every
 * tenant's traffic (adapter names, activity, prefix-cache hits), so once keys are set it takes
 * one: --metrics-key if given, else any API key. With --metrics-port, a second listener serves only
 * these two routes, without keys, for in-cluster scrapers (the endpoint picker, Prometheus).
 */
import Fastify, { type FastifyInstance, type FastifyRequest } from 'fastify';
import { Type } from 'typebox';
import { AuthError } from '../../errors.js';
import { bearerMatches } from '../auth.js';
import type { ServerContext } from '../context.js';

/** How old the engine stats /health reads may be. */
const HEALTH_STATS_MS = 250;

/** `open`: /metrics takes no key (the metrics listener). */
export async function opsRoutes(app: FastifyInstance, ctx: ServerContext, opts: { open?: boolean } = {}): Promise<void> {
  app.get(
    '/health',
    { schema: { tags: ['ops'], summary: 'Ready when the model is loaded and the adapter store scanned (503 before, while draining, if the engine stopped, or if constrained decoding cannot run)', response: { 200: Type.Object({ status: Type.String() }), 503: Type.Object({ status: Type.String() }) } } },
    async (_request, reply) => {
      if (ctx.draining) {
        reply.code(503);
        return { status: 'draining' };
      }
      if (!ctx.engine || !ctx.ready) {
        reply.code(503);
        return { status: 'loading' };
      }
      if (!ctx.engine.alive) {
        reply.code(503);
        return { status: 'stopped' };
      }
      // A grammar thread that cannot even be started leaves constrained decoding refused: the
      // replica is not fit to serve (the grammar thread replaces itself after any other failure).
      // (Stats shared between health checks for HEALTH_STATS_MS: /health takes no key.)
      if ((await ctx.engine.recentStats(HEALTH_STATS_MS)).grammar?.failed) {
        reply.code(503);
        return { status: 'grammar_failed' };
      }
      return { status: 'ok' };
    },
  );
  const { metricsKey, apiKeys } = ctx.settings;
  const tokens = opts.open ? [] : metricsKey !== null ? [metricsKey] : apiKeys;
  const authorize = async (request: FastifyRequest): Promise<void> => {
    if (!bearerMatches(request.headers.authorization, tokens)) throw new AuthError(`missing or invalid key for /metrics: send Authorization: Bearer <key> (${metricsKey !== null ? 'the --metrics-key' : 'an API key'})`);
  };
  const summary = 'Prometheus metrics (Bearer --metrics-key, else an API key, when either is set)';
  app.get('/metrics', { schema: { tags: ['ops'], summary }, ...(tokens.length > 0 ? { onRequest: authorize } : {}) }, async (_request, reply) => {
    if (ctx.engine) ctx.metrics.refresh(await ctx.engine.stats());
    reply.type(ctx.metrics.registry.contentType);
    return ctx.metrics.registry.metrics();
  });
}

/** The --metrics-port application: GET /metrics and GET /health only, no keys, no request logs. */
export async function buildMetricsApp(ctx: ServerContext): Promise<FastifyInstance> {
  const app = Fastify({ logger: false });
  await app.register(async (ops) => opsRoutes(ops, ctx, { open: true }));
  return app;
}
