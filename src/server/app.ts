/**
 * buildApp: the fastify application, separate from listening (tests use app.inject). Routes are
 * grouped by area: OpenAI and LoRAX/TGI inference (optional API keys), admin (only with an admin
 * token), ops (/health, and /metrics behind --metrics-key or the API keys when either is set), and
 * the OpenAPI document and docs page.
 *
 * Slow clients are bounded: headers must arrive within --headers-timeout-ms and a JSON body within
 * --body-timeout-ms (uploads: no --body-timeout-ms without progress), else 408 and the connection
 * closes. Framework-level failures (bad URL, oversized headers, malformed requests) answer in the
 * route's error shape too.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import { MAX_NAME_LENGTH } from '../adapters/names.js';
import { AuthError, LoraplexError } from '../errors.js';
import { VERSION } from '../version.js';
import { keyMatches, presentedKey } from './auth.js';
import { tenantOf } from './cache-partition.js';
import type { ServerContext } from './context.js';
import { clientTimer, type ClientTimer } from './client-timer.js';
import { closeIdleAfterPendingReads, keepAliveHintSeconds } from './keep-alive.js';
import { installErrorHandling, rawErrorResponse, sendError, type RouteFlavor } from './errors.js';
import { adminRoutes } from './routes/admin.js';
import { openaiRoutes } from './routes/openai.js';
import { opsRoutes } from './routes/ops.js';
import { responsesRoutes } from './routes/responses.js';
import { tokenizeRoutes } from './routes/tokenize.js';
import { tgiRoutes } from './routes/tgi.js';
import { messagesRoutes } from './routes/messages.js';

/** Largest JSON body accepted on the inference routes. */
export const MAX_JSON_BODY = 8 * 1024 * 1024;

declare module 'fastify' {
  interface FastifyRequest {
    /** The adapter(s) the request used, for the request metrics ('' until resolved, 'base' for none). */
    adapterLabel: string;
    /** The error shape a route chose for this request (otherwise decided by its URL). */
    errorFlavor: RouteFlavor | null;
    /** Whose prefix-cache partition the request is in: a digest of its API key, or '' (shared). */
    cacheTenant: string;
    /** Whose request this is, for the fair share of batch rows: a digest of its API key (null: the server has no keys). */
    tenant: string | null;
    /** Runs until the body has arrived (null on routes that stream their body themselves). */
    bodyTimer: ClientTimer | null;
  }
}

/** Routes that are never counted as open work (shutdown does not wait for them). */
const OPS_ROUTES = new Set(['/health', '/metrics']);

export async function buildApp(ctx: ServerContext, opts: { logger?: Logger | null } = {}): Promise<FastifyInstance> {
  const { headersTimeoutMs, bodyTimeoutMs, keepAliveTimeoutMs } = ctx.settings;
  const keepAliveHint = `timeout=${keepAliveHintSeconds(keepAliveTimeoutMs)}`;
  const app = Fastify({
    ...(opts.logger ? { loggerInstance: opts.logger as unknown as FastifyBaseLogger } : { logger: false }),
    bodyLimit: MAX_JSON_BODY,
    // Adapter names (org/name) are path parameters: room for the longest valid name.
    routerOptions: { maxParamLength: MAX_NAME_LENGTH + 16 },
    genReqId: () => `req-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`,
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, allErrors: false } },
    serverFactory: (handler) =>
      // Idle connections: see keep-alive.ts.
      {
        const server = createServer({ headersTimeout: headersTimeoutMs, requestTimeout: 0, keepAliveTimeout: keepAliveTimeoutMs, connectionsCheckingInterval: Math.min(1000, headersTimeoutMs) }, (req: IncomingMessage, res: ServerResponse) => {
          res.setHeader('keep-alive', keepAliveHint);
          (handler as (req: IncomingMessage, res: ServerResponse) => void)(req, res);
        });
        closeIdleAfterPendingReads(server);
        return server;
      },
    clientErrorHandler: (err: NodeJS.ErrnoException, socket: Socket) => {
      if (!socket.writable) return socket.destroy();
      const code = err.code === 'HPE_HEADER_OVERFLOW' ? 'header_too_large' : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 'request_timeout' : 'bad_request';
      const message =
        code === 'header_too_large' ? 'the request headers are too large' : code === 'request_timeout' ? `the request headers did not arrive within ${headersTimeoutMs} ms (--headers-timeout-ms)` : `malformed HTTP request (${err.code ?? err.message})`;
      // The request line, when the parser got that far, says which route's error shape to use.
      const raw = (err as { rawPacket?: Buffer }).rawPacket;
      const url = (raw && /^[A-Z]+ (\S+)/.exec(raw.subarray(0, 2048).toString('latin1'))?.[1]) || '/v1';
      socket.end(rawErrorResponse(url, code, message));
    },
    frameworkErrors: (err, request, reply) => {
      sendError(request, reply, new LoraplexError('bad_request', err.message));
    },
  }).withTypeProvider<TypeBoxTypeProvider>();

  installErrorHandling(app);
  // JSON only on the API (and multipart on the admin upload routes); large bodies are parsed off
  // the event loop.
  app.removeContentTypeParser('text/plain');
  ctx.bodies.install(app, MAX_JSON_BODY);
  app.decorateRequest('adapterLabel', '');
  app.decorateRequest('errorFlavor', null);
  app.decorateRequest('cacheTenant', '');
  app.decorateRequest('tenant', null);
  app.decorateRequest('bodyTimer', null);
  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: { title: 'loraplex', version: VERSION, description: "Multi-LoRA inference server: OpenAI-compatible, Anthropic Messages and LoRAX/TGI-style APIs; `model` (or `adapter_id`) selects the adapter." },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      tags: [
        { name: 'openai', description: 'OpenAI-compatible inference' },
        { name: 'tgi', description: 'LoRAX/TGI-style inference' },
        { name: 'anthropic', description: "Anthropic's Messages API (x-api-key or Bearer)" },
        { name: 'admin', description: 'Adapter management (Bearer admin token)' },
        { name: 'ops', description: 'Health, metrics' },
      ],
    },
  });
  await app.register(swaggerUi, { routePrefix: '/docs' });

  app.addHook('onRequest', async (request, reply) => {
    const route = request.routeOptions.url ?? '';
    if (!OPS_ROUTES.has(route)) {
      ctx.openRequests++;
      reply.raw.once('close', () => ctx.openRequests--);
    }
    // The body must arrive in time (the timer stops once it is parsed; uploads are streamed by
    // their handler, which keeps its own no-progress timer).
    const timer = clientTimer(
      () => {
        const socket = request.raw.socket;
        socket.end(rawErrorResponse(request.url, 'request_timeout', `the request body did not arrive within ${bodyTimeoutMs} ms (--body-timeout-ms)`));
        socket.destroy();
      },
      bodyTimeoutMs,
      { unref: true },
    );
    request.raw.once('end', () => timer.cancel());
    reply.raw.once('close', () => timer.cancel());
    request.bodyTimer = timer;
  });
  app.addHook('preValidation', async (request) => {
    request.bodyTimer?.cancel();
  });

  // Request metrics (fastify logs each request with its id; routes set the adapter label).
  app.addHook('onResponse', async (request, reply) => {
    const route = request.routeOptions.url ?? 'unknown';
    if (OPS_ROUTES.has(route)) return;
    ctx.metrics.request(route, reply.statusCode, request.adapterLabel, reply.elapsedTime / 1000);
  });

  await app.register(async (inference) => {
    // TGI clients get TGI's error shape on the OpenAI routes too, as TGI answers them (they show
    // only a string `error`): @huggingface/inference says so in its User-Agent, and posts TGI's
    // parameters to /v1/completions with the server's URL as the model.
    inference.addHook('onRequest', async (request) => {
      if (/^@huggingface\/inference\//.test(request.headers['user-agent'] ?? '')) request.errorFlavor = 'tgi';
    });
    inference.addHook('preValidation', async (request) => {
      const model = (request.body as { model?: unknown } | null)?.model;
      if (typeof model === 'string' && /^https?:\/\//.test(model)) request.errorFlavor = 'tgi';
    });
    if (ctx.settings.apiKeys.length > 0) {
      const perKey = ctx.settings.prefixCacheScope === 'key';
      inference.addHook('onRequest', async (request) => {
        const key = presentedKey(request.headers);
        if (!keyMatches(key, ctx.settings.apiKeys)) throw new AuthError('missing or invalid API key: send Authorization: Bearer <key> (or x-api-key: <key>)');
        // Batch rows are shared fairly between keys (the scheduler's fair share), and grammar checks
        // run one at a time per key.
        request.tenant = tenantOf(key!);
        // Each key its own prefix cache: no key learns from cache hits what another key's prompts hold.
        if (perKey) request.cacheTenant = request.tenant;
      });
    }
    openaiRoutes(inference, ctx);
    responsesRoutes(inference, ctx);
    tokenizeRoutes(inference, ctx);
    tgiRoutes(inference, ctx);
    messagesRoutes(inference, ctx);
  });
  if (ctx.settings.adminToken) await app.register(async (admin) => adminRoutes(admin, ctx));
  await app.register(async (ops) => opsRoutes(ops, ctx));
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());
  return app;
}
