/**
 * `loraplex serve`: listen at once (so /health answers 503 while the model builds and loads), start
 * the engine worker and the tokenizer threads, discover the adapter store, then serve.
 * SIGTERM/SIGINT: drain — /health answers 503 and new requests are refused while the running ones
 * finish (up to --shutdown-grace-ms) — then close the listener and stop the engine.
 */
import { basename, resolve } from 'node:path';
import { AdapterRegistry } from '../adapters/registry.js';
import { StagingArea } from '../adapters/staging.js';
import { availableCores } from '../util/cores.js';
import type { Config, ServeConfig } from '../config.js';
import { Engine } from '../scheduler/engine.js';
import { buildApp } from './app.js';
import { buildMetricsApp } from './routes/ops.js';
import { ServerContext } from './context.js';
import type { ServerSettings } from './settings.js';
import { Metrics } from './metrics.js';
import { StoreClient } from './store/store-client.js';
import { TokenizerPool } from './prompt/tokenizer-pool.js';
import type { FastifyInstance } from 'fastify';
import { pino } from 'pino';

export interface RunningServer {
  app: FastifyInstance;
  ctx: ServerContext;
  url: string;
  /** The --metrics-port listener's URL ('' when off). */
  metricsUrl: string;
  /** Resolves once the model is loaded and adapters are discovered. */
  ready: Promise<void>;
  /** Drains (up to `graceMs`, default --shutdown-grace-ms), then stops. */
  close(graceMs?: number): Promise<void>;
}

export function serverSettings(c: Config): ServerSettings {
  return {
    adminToken: c.adminToken ?? null,
    apiKeys: c.apiKeys ?? [],
    prefixCacheScope: c.prefixCacheScope,
    metricsKey: c.metricsKey ?? null,
    maxUploadBytes: c.maxUploadBytes,
    logPrompts: c.logPrompts,
    toolCallParser: c.toolCallParser,
    reasoningParser: c.reasoningParser,
    requestTimeoutMs: c.requestTimeoutMs,
    strictBase: c.strictBase,
    loraRoots: c.loraRoots ?? [],
    maxBatchSize: c.maxBatchSize,
    maxRowsPerRequest: c.maxRowsPerRequest,
    maxBatchPrefillTokens: c.maxBatchPrefillTokens,
    maxQueuedRequests: c.maxQueuedRequests,
    adapterCycleMs: c.adapterCycleMs,
    storeDir: c.adapters ?? null,
    headersTimeoutMs: c.headersTimeoutMs,
    bodyTimeoutMs: c.bodyTimeoutMs,
    keepAliveTimeoutMs: c.keepAliveTimeoutMs,
    streamStallMs: c.streamStallMs,
  };
}

export async function startServer(
  config: ServeConfig,
  opts: { onProgress?: (done: number, total: number, label: string) => void; listen?: boolean; logger?: boolean; logStream?: NodeJS.WritableStream } = {},
): Promise<RunningServer> {
  const baseId = config.servedModelName ?? basename(resolve(config.model));
  // JSON log lines (pino), to stdout or the given stream; request logs carry the request id.
  const logger = opts.logger === false ? null : pino({ level: config.logLevel }, opts.logStream ?? process.stdout);
  const ctx = new ServerContext({
    registry: new AdapterRegistry(),
    staging: config.adapters ? new StagingArea(config.adapters) : null,
    metrics: new Metrics(config.metricsAdapterLabels, { vllmNames: config.metricsVllmNames }),
    baseId,
    settings: serverSettings(config),
    log: logger ? { info: (m) => logger.info(m), warn: (m) => logger.warn(m) } : undefined,
  });
  const app = await buildApp(ctx, { logger });
  let url = '';
  if (opts.listen !== false) {
    url = await app.listen({ host: config.host, port: config.port });
    app.log.info(`listening on ${url} (health: ${url}/health, docs: ${url}/docs)`);
  }
  // Keyless /metrics and /health for in-cluster scrapers; the port must not be exposed outside.
  const metricsPort = opts.listen !== false ? config.metricsPort : undefined;
  const metricsApp = metricsPort !== undefined ? await buildMetricsApp(ctx) : null;
  let metricsUrl = '';
  if (metricsApp) {
    metricsUrl = await metricsApp.listen({ host: config.host, port: metricsPort }).catch(async (err: Error) => {
      await app.close();
      throw err;
    });
    app.log.info(`metrics listener on ${metricsUrl} (GET /metrics, GET /health; no keys)`);
  }
  let engine: Engine | null = null;
  const service = ctx.service;
  const workers = config.tokenizerWorkers || Math.max(1, Math.floor(availableCores().count / 2));
  const tokenizers = TokenizerPool.start({ modelDir: config.model, workers, budgetMs: config.promptTimeoutMs, wallLimitMs: config.requestTimeoutMs });
  tokenizers.catch(() => {});
  const ready = (async () => {
    engine = await Engine.start(
      {
        settings: config,
        engine: {
          maxBatchSize: config.maxBatchSize,
          maxBatchPrefillTokens: config.maxBatchPrefillTokens,
          maxStepMs: config.maxStepMs,
          // The server's admission control refuses first; the engine's bound is a backstop.
          maxQueuedRequests: 2 * config.maxQueuedRequests + config.maxBatchSize,
          adapterCycleMs: config.adapterCycleMs,
          adapterCacheBytes: config.adapterCacheBytes,
          prefixCache: config.prefixCache,
          grammarCompileTimeoutMs: config.grammarCompileTimeoutMs,
          grammarCompileWallLimitMs: config.requestTimeoutMs,
          grammarMaskTimeoutMs: config.grammarMaskTimeoutMs,
          grammarMemoryMb: config.grammarMemoryMb,
        },
        strictBase: config.strictBase ? baseId : null,
      },
      { onProgress: opts.onProgress, log: (m) => app.log.info(m) },
    );
    const tokenizerPool = await tokenizers;
    const store = new StoreClient({
      spec: engine.info.spec,
      load: { maxRank: engine.info.maxLoraRank, strictBase: config.strictBase ? baseId : null, slotDtype: engine.info.slotDtype },
      root: config.adapters ?? null,
      store: { allowedRoots: config.loraRoots ?? [], graceMs: config.storeGraceMs },
      tokenizers: tokenizerPool,
    });
    ctx.attach({ engine, tokenizers: tokenizerPool, store });
    await service.refresh();
    await service.collect().catch((err: Error) => app.log.warn(`collecting old adapter versions failed: ${err.message}`));
    service.start(config.storePollMs);
    ctx.markReady();
    const names = ctx.registry.list().map((r) => r.name);
    app.log.info(
      `ready: model ${baseId} (${engine.info.architecture}, ${engine.info.weights}, ${engine.info.device}, context ${engine.info.maxPositions}); ` +
        `${names.length} adapter(s)${names.length ? `: ${names.join(', ')}` : ''}`,
    );
  })();
  ready.catch((err: Error) => app.log.error(`the model failed to load: ${err.message}`));
  let closing: Promise<void> | null = null;
  const close = (graceMs = config.shutdownGraceMs): Promise<void> => {
    closing ??= (async () => {
      // Drain: keep listening (health says 503, new work is refused) while running requests finish.
      ctx.draining = true;
      const until = Date.now() + graceMs;
      while (ctx.openRequests > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 25));
      await (engine as Engine | null)?.close(Math.max(0, until - Date.now()));
      await app.close();
      await metricsApp?.close();
      service.stop();
      await ctx.closeParts();
      await (await tokenizers.catch(() => null))?.close();
    })();
    return closing;
  };
  return { app, ctx, url, metricsUrl, ready, close };
}

/** Runs until SIGTERM/SIGINT, then shuts down gracefully. */
export async function serveForever(server: RunningServer, log: (m: string) => void): Promise<void> {
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) {
      log(`${signal} again: exiting now`);
      process.exit(1);
    }
    stopping = true;
    log(`${signal}: finishing running requests, then exiting`);
    server.close().then(
      () => process.exit(0),
      (err: Error) => {
        log(`shutdown failed: ${err.message}`);
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  try {
    await server.ready;
  } catch (err) {
    log(`loraplex: ${(err as Error).message}`);
    await server.close();
    process.exit(1);
  }
}
