/**
 * `loraplex serve`: listen at once (so /health answers 503 while the model builds and loads), start
 * the engine worker, discover the adapter store, then serve. SIGTERM/SIGINT: stop taking requests,
 * let running ones finish, stop the engine.
 */
import { basename, resolve } from 'node:path';
import { AdapterRegistry } from '../adapters/registry.js';
import { AdapterStore } from '../adapters/store.js';
import type { Config } from '../config.js';
import type { RuntimeSettings } from '../runtime/open.js';
import { Engine } from '../scheduler/engine.js';
import { AdapterService } from './adapter-service.js';
import { buildApp } from './app.js';
import { ServerContext, type ServerSettings } from './context.js';
import { Metrics } from './metrics.js';
import type { FastifyInstance } from 'fastify';

export interface RunningServer {
  app: FastifyInstance;
  ctx: ServerContext;
  url: string;
  /** Resolves once the model is loaded and adapters are discovered. */
  ready: Promise<void>;
  close(): Promise<void>;
}

export function serverSettings(c: Partial<Config>): ServerSettings {
  return {
    adminToken: c.adminToken ?? null,
    apiKeys: c.apiKeys ?? [],
    maxUploadBytes: c.maxUploadBytes!,
    logPrompts: c.logPrompts ?? false,
    requestTimeoutMs: c.requestTimeoutMs!,
    strictBase: c.strictBase ?? false,
    loraRoots: c.loraRoots ?? [],
    maxBatchSize: c.maxBatchSize!,
    maxBatchPrefillTokens: c.maxBatchPrefillTokens!,
    maxQueuedRequests: c.maxQueuedRequests!,
    adapterCycleMs: c.adapterCycleMs!,
  };
}

export async function startServer(
  config: Partial<Config>,
  opts: { onProgress?: (done: number, total: number, label: string) => void; listen?: boolean; logger?: boolean; logStream?: NodeJS.WritableStream } = {},
): Promise<RunningServer> {
  const baseId = config.servedModelName ?? basename(resolve(config.model!));
  const ctx = new ServerContext({
    registry: new AdapterRegistry(),
    store: config.adapters ? new AdapterStore(config.adapters) : null,
    metrics: new Metrics(),
    baseId,
    settings: serverSettings(config),
  });
  const app = await buildApp(ctx, {
    logger: opts.logger === false ? false : { level: config.logLevel ?? 'info', ...(opts.logStream ? { stream: opts.logStream } : {}) },
  });
  let url = '';
  if (opts.listen !== false) {
    url = await app.listen({ host: config.host ?? '127.0.0.1', port: config.port ?? 8080 });
    app.log.info(`listening on ${url} (health: ${url}/health, docs: ${url}/docs)`);
  }
  let engine: Engine | null = null;
  const ready = (async () => {
    engine = await Engine.start(
      {
        settings: config as RuntimeSettings,
        engine: {
          maxBatchSize: config.maxBatchSize!,
          maxBatchPrefillTokens: config.maxBatchPrefillTokens!,
          maxQueuedRequests: config.maxQueuedRequests!,
          adapterCycleMs: config.adapterCycleMs!,
          adapterCacheBytes: config.adapterCacheBytes!,
        },
        strictBase: config.strictBase ? baseId : null,
      },
      { onProgress: opts.onProgress, log: (m) => app.log.info(m) },
    );
    ctx.engine = engine;
    const found = new AdapterService(ctx).discover((m) => app.log.warn(m));
    const names = ctx.registry.list().map((r) => r.name);
    app.log.info(
      `ready: model ${baseId} (${engine.info.architecture}, ${engine.info.weights}, ${engine.info.device}, context ${engine.info.maxPositions}); ` +
        `${found} adapter(s)${names.length ? `: ${names.join(', ')}` : ''}`,
    );
  })();
  ready.catch((err: Error) => app.log.error(`the model failed to load: ${err.message}`));
  let closing: Promise<void> | null = null;
  const close = (): Promise<void> => {
    closing ??= (async () => {
      await app.close();
      await (engine as Engine | null)?.close(config.requestTimeoutMs);
    })();
    return closing;
  };
  return { app, ctx, url, ready, close };
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
