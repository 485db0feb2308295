/**
 * What the routes share: the serving parts (engine, tokenizer threads, store client: attached once
 * the model is loaded), the adapter registry and service, admission control, in-flight tracking,
 * metrics, the served model id and the server's settings.
 */
import type { AdapterRegistry } from '../adapters/registry.js';
import type { StagingArea } from '../adapters/staging.js';
import { LoraplexError, NotReadyError } from '../errors.js';
import type { Engine } from '../scheduler/engine.js';
import { Admission } from './admission.js';
import { InflightAdapters } from './inflight.js';
import type { Metrics } from './metrics.js';
import type { StoreClient } from './store/store-client.js';
import { AdapterService, type ServiceLog } from './adapter-service.js';
import { JsonBodyParser } from './body/json-body.js';
import type { TokenizerPool } from './prompt/tokenizer-pool.js';
import type { ServerSettings } from './settings.js';

/** What exists once the model is loaded: the engine, the tokenizer threads and the adapter store's client. */
export interface ServingParts {
  engine: Engine;
  tokenizers: TokenizerPool;
  store: StoreClient;
}

export class ServerContext {
  readonly registry: AdapterRegistry;
  readonly staging: StagingArea | null;
  readonly metrics: Metrics;
  readonly baseId: string;
  readonly settings: ServerSettings;
  readonly admission: Admission;
  readonly bodies = new JsonBodyParser();
  /** Requests in flight per adapter version. */
  readonly inflight = new InflightAdapters();
  readonly service: AdapterService;
  readonly startedAt = Math.floor(Date.now() / 1000);
  /** Set once shutdown begins: /health answers 503 and new work is refused while running work drains. */
  draining = false;
  /** Requests that went away before they reached the engine. */
  cancelledBeforeSubmit = 0;
  /** HTTP requests on the inference and admin routes not yet answered (shutdown waits for them). */
  openRequests = 0;
  /** Null until the model is loaded: the server listens (and /health answers 503) while it loads. */
  private parts: ServingParts | null = null;
  /** Set once the adapter store has been scanned too: /health says ok from then on. */
  private isReady = false;

  constructor(opts: { registry: AdapterRegistry; staging: StagingArea | null; metrics: Metrics; baseId: string; settings: ServerSettings; log?: ServiceLog }) {
    this.registry = opts.registry;
    this.staging = opts.staging;
    this.metrics = opts.metrics;
    this.baseId = opts.baseId;
    this.settings = opts.settings;
    this.admission = new Admission(opts.settings.maxQueuedRequests);
    this.service = new AdapterService({
      registry: this.registry,
      staging: this.staging,
      settings: this.settings,
      baseId: this.baseId,
      inflight: this.inflight,
      serving: () => this.serving(),
      loaded: () => this.parts,
      log: opts.log,
    });
  }

  /** The model is loaded: the server's parts exist from now on. */
  attach(parts: ServingParts): void {
    if (this.parts) throw new Error('the serving parts are attached once');
    this.parts = parts;
    this.bodies.limits = { maxPositions: parts.engine.info.maxPositions, maxTokenBytes: parts.tokenizers.info.maxTokenBytes };
  }

  /** The adapter store is scanned as well: the server is ready. */
  markReady(): void {
    if (!this.parts) throw new Error('ready before the model is loaded');
    this.isReady = true;
  }

  get ready(): boolean {
    return this.isReady;
  }

  /** The engine once the model is loaded (null before), for readers that answer either way (health, info, metrics). */
  get engine(): Engine | null {
    return this.parts?.engine ?? null;
  }

  /** The serving parts, or a 503 while the model is still loading or shutting down. */
  serving(): ServingParts {
    if (this.draining) throw new LoraplexError('shutting_down', 'the server is shutting down; retry on another replica');
    if (!this.parts) throw new NotReadyError('the model is still loading; retry shortly (see GET /health)');
    if (!this.parts.engine.alive) throw new LoraplexError('not_ready', 'the engine has stopped');
    return this.parts;
  }

  /** The engine, or a 503 while the model is still loading or shutting down. */
  requireEngine(): Engine {
    return this.serving().engine;
  }

  requireTokenizers(): TokenizerPool {
    return this.serving().tokenizers;
  }

  /** Closes what the model's loading started (the engine is closed by the caller, with its grace). */
  async closeParts(): Promise<void> {
    await this.parts?.store.close();
    await this.bodies.close();
  }
}
