/**
 * buildApp: the fastify application, separate from listening (tests use app.inject). Routes are
 * grouped by area: OpenAI and LoRAX/TGI inference (optional API keys), admin (only with an admin
 * token), ops (/health, /metrics), and the OpenAPI document and docs page.
 */
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify';
import { AuthError } from '../errors.js';
import { VERSION } from '../version.js';
import type { ServerContext } from './context.js';
import { installErrorHandling } from './errors.js';
import { adminRoutes, bearerMatches } from './routes/admin.js';
import { openaiRoutes } from './routes/openai.js';
import { opsRoutes } from './routes/ops.js';
import { tgiRoutes } from './routes/tgi.js';

/** Largest JSON body accepted on the inference routes. */
export const MAX_JSON_BODY = 8 * 1024 * 1024;

export async function buildApp(ctx: ServerContext, opts: { logger?: FastifyServerOptions['logger'] } = {}): Promise<FastifyInstance> {
  const app = Fastify({
    logger: opts.logger ?? false,
    bodyLimit: MAX_JSON_BODY,
    genReqId: () => `req-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`,
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, allErrors: false } },
  }).withTypeProvider<TypeBoxTypeProvider>();

  installErrorHandling(app);
  // JSON only on the API (and multipart on the admin upload routes).
  app.removeContentTypeParser('text/plain');
  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: { title: 'loraplex', version: VERSION, description: 'Multi-LoRA inference server: OpenAI-compatible and LoRAX/TGI-style APIs; `model` (or `adapter_id`) selects the adapter.' },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      tags: [
        { name: 'openai', description: 'OpenAI-compatible inference' },
        { name: 'tgi', description: 'LoRAX/TGI-style inference' },
        { name: 'admin', description: 'Adapter management (Bearer admin token)' },
        { name: 'ops', description: 'Health, metrics' },
      ],
    },
  });
  await app.register(swaggerUi, { routePrefix: '/docs' });

  // Request metrics (fastify logs each request with its id; routes add adapter and token counts).
  app.addHook('onResponse', async (request, reply) => {
    const route = request.routeOptions.url ?? 'unknown';
    if (route === '/metrics' || route === '/health') return;
    const adapter = (request.body as { model?: string } | undefined)?.model ?? '';
    ctx.metrics.requests.inc({ route, status: String(reply.statusCode), adapter: ctx.registry.get(adapter) ? adapter : adapter === ctx.baseId ? 'base' : '' });
    ctx.metrics.latency.observe({ route }, reply.elapsedTime / 1000);
  });

  await app.register(async (inference) => {
    if (ctx.settings.apiKeys.length > 0) {
      inference.addHook('onRequest', async (request) => {
        if (!bearerMatches(request.headers.authorization, ctx.settings.apiKeys)) throw new AuthError('missing or invalid API key: send Authorization: Bearer <key>');
      });
    }
    openaiRoutes(inference, ctx);
    tgiRoutes(inference, ctx);
  });
  if (ctx.settings.adminToken) await app.register(async (admin) => adminRoutes(admin, ctx));
  await app.register(async (ops) => opsRoutes(ops, ctx));
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());
  return app;
}
