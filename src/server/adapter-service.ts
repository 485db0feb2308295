/**
 * Adapter lifecycle for the server: the registry follows the store (scanned at start and every
 * --store-poll-ms, so replicas sharing a store see each other's uploads, replacements and deletes),
 * uploads are validated completely and published as immutable versions, vLLM's load_lora_adapter
 * registers a directory under --lora-roots, and deletes remove a name (the version it was asked
 * about) at once while requests on that version finish.
 */
import { existsSync, realpathSync } from 'node:fs';
import { isAbsolute, relative, resolve } from 'node:path';
import type { AdapterRecord, AdapterRegistry } from '../adapters/registry.js';
import { ConflictError, LoraplexError, ModelNotFoundError, ValidationError } from '../errors.js';
import type { StagingArea } from '../adapters/staging.js';
import type { Engine } from '../scheduler/engine.js';
import type { InflightAdapters } from './inflight.js';
import type { ServerSettings } from './settings.js';
import type { StoreClient } from './store/store-client.js';

export interface ServiceLog {
  info: (m: string) => void;
  warn: (m: string) => void;
}

/** What the service works with. */
export interface AdapterServiceParts {
  registry: AdapterRegistry;
  staging: StagingArea | null;
  settings: Pick<ServerSettings, 'storeDir' | 'loraRoots'>;
  baseId: string;
  inflight: InflightAdapters;
  /** The engine and the store client, or a 503 while the model loads or the server drains. */
  serving: () => { engine: Engine; store: StoreClient };
  /** The same, or null before the model is loaded (for work that can wait). */
  loaded: () => { engine: Engine; store: StoreClient } | null;
  log?: ServiceLog;
}

export function adapterInfo(r: AdapterRecord, status?: string): Record<string, unknown> {
  return {
    name: r.name,
    digest: r.digest,
    source: r.source,
    rank: r.info.maxRank,
    lora_alpha: r.info.config.loraAlpha,
    use_rslora: r.info.config.useRslora,
    target_modules: r.info.targets,
    bytes: r.info.bytes,
    base_model_name_or_path: r.info.config.baseModelNameOrPath,
    created: Math.floor(r.createdAt / 1000),
    ...(status ? { status } : {}),
  };
}

export class AdapterService {
  private readonly ctx: AdapterServiceParts;
  private readonly log: ServiceLog;
  /** Skip reasons already logged (each is logged once, when first seen). */
  private readonly reported = new Set<string>();
  /** Digests no name points at any more, to unload once no request uses them. */
  private readonly retired = new Set<string>();
  private syncing: Promise<void> | null = null;
  private timer: NodeJS.Timeout | null = null;

  constructor(parts: AdapterServiceParts) {
    this.ctx = parts;
    this.log = parts.log ?? { info: () => {}, warn: () => {} };
    parts.inflight.onIdle(() => void this.refreshUnloads());
  }

  private get store(): StoreClient {
    return this.ctx.serving().store;
  }

  // ---- following the store

  /** Brings the registry in line with the store (one refresh at a time); returns when done. */
  refresh(): Promise<void> {
    if (!this.ctx.settings.storeDir) return Promise.resolve();
    this.syncing ??= this.doRefresh().finally(() => (this.syncing = null));
    return this.syncing;
  }

  private async doRefresh(): Promise<void> {
    const scan = await this.store.scan();
    for (const s of scan.skipped) {
      const key = `${s.path}: ${s.why}`;
      if (!this.reported.has(key)) {
        this.reported.add(key);
        this.log.warn(`adapter store: ${s.path} is skipped: ${s.why}`);
      }
    }
    const seen = new Set<string>();
    for (const e of scan.entries) {
      seen.add(e.name);
      const have = this.ctx.registry.get(e.name);
      if (have && have.digest === e.digest) continue;
      try {
        const { info } = await this.store.validate(e.dir, false);
        this.ctx.registry.register({ name: e.name, digest: e.digest, dir: e.dir, info, source: e.managed ? 'upload' : 'directory', createdAt: e.createdAt });
        if (have) this.retire(have.digest);
        this.log.info(`adapter ${e.name}: ${have ? 'now' : 'serving'} version ${e.digest.slice(0, 12)}`);
      } catch (err) {
        const key = `${e.name}@${e.digest}: ${(err as Error).message}`;
        if (!this.reported.has(key)) {
          this.reported.add(key);
          this.log.warn(`adapter ${e.name} in the store is skipped: ${(err as Error).message}`);
        }
      }
    }
    for (const r of this.ctx.registry.list()) {
      if (r.source === 'path' || seen.has(r.name)) continue;
      this.ctx.registry.remove(r.name);
      this.retire(r.digest);
      this.log.info(`adapter ${r.name}: removed from the store`);
    }
    await this.unloadRetired();
  }

  private retire(digest: string): void {
    if (!this.ctx.registry.digests().has(digest)) this.retired.add(digest);
  }

  /** Unloads retired versions that no request uses any more (called when a version goes idle). */
  async refreshUnloads(): Promise<void> {
    await this.unloadRetired().catch(() => {});
  }

  /** Drops retired versions from the engine once no request uses them. */
  private async unloadRetired(): Promise<void> {
    for (const d of [...this.retired]) {
      if (this.ctx.registry.digests().has(d)) {
        this.retired.delete(d);
        continue;
      }
      if (this.ctx.inflight.of(d) > 0) continue;
      if (await this.ctx.loaded()?.engine.unload(d)) this.retired.delete(d);
    }
  }

  /** Refreshes every `pollMs` and collects old versions now and then (0: at start only). */
  start(pollMs: number): void {
    if (pollMs <= 0 || !this.ctx.settings.storeDir) return;
    let rounds = 0;
    const tick = (): void => {
      this.timer = setTimeout(async () => {
        try {
          await this.refresh();
          if (++rounds % 30 === 0) await this.collect();
        } catch (err) {
          this.log.warn(`adapter store refresh failed: ${(err as Error).message}`);
        }
        if (this.timer) tick();
      }, pollMs);
      this.timer.unref();
    };
    tick();
  }

  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  /** Removes versions that lost their name longer than the grace period ago and that no request here uses. */
  async collect(): Promise<string[]> {
    const inUse = new Set([...this.ctx.registry.digests(), ...this.ctx.inflight.digests()]);
    return (await this.store.collect(inUse)).removed;
  }

  // ---- changes

  /** Validates a staged upload completely and publishes it as `name` (`replace`: an existing name). */
  async install(name: string, staged: string, replace: boolean): Promise<AdapterRecord> {
    try {
      if (!this.ctx.settings.storeDir) throw new LoraplexError('no_store', 'no adapter store is configured (--adapters)');
      if (name === this.ctx.baseId) throw new ConflictError(`${name} is the base model's id`, 'name');
      if (this.ctx.registry.get(name)?.source === 'path') throw new ConflictError(`adapter ${name} was registered from a path (load_lora_adapter); unload it first`, 'name');
      const { info, digest } = await this.store.validate(staged, true);
      const entry = await this.store.publish(staged, name, digest, replace ? 'replace' : 'create');
      const old = this.ctx.registry.get(name);
      const rec = this.ctx.registry.register({ name, digest, dir: entry.dir, info, source: 'upload', createdAt: entry.createdAt });
      if (old && old.digest !== digest) this.retire(old.digest);
      return rec;
    } finally {
      this.ctx.staging?.discard(staged);
    }
  }

  /**
   * vLLM's load_lora_adapter: registers an adapter directory under one of the configured roots.
   * Loading a name again from the same directory with the same files is a no-op that succeeds, so an
   * orchestrator's retry (AIBrix lists /v1/models, then loads) cannot fail on its own earlier load.
   */
  async registerPath(name: string, path: string): Promise<AdapterRecord> {
    const remote = /^([a-z][a-z0-9+.-]*):\/\//i.exec(path);
    if (remote) {
      throw new ValidationError(
        `lora_path ${JSON.stringify(path)} is a remote URI (${remote[1]}://): loraplex reads adapters only from directories on disk under --lora-roots; download it there first, or upload it through POST /admin/adapters`,
        'lora_path',
      );
    }
    const roots = this.ctx.settings.loraRoots;
    if (roots.length === 0) throw new ValidationError('loading adapters from paths is off: configure --lora-roots', 'lora_path');
    if (!isAbsolute(path)) throw new ValidationError(`lora_path ${JSON.stringify(path)} must be an absolute path to a directory on disk (Hugging Face Hub ids are not downloaded)`, 'lora_path');
    if (!existsSync(path)) throw new ValidationError(`lora_path ${JSON.stringify(path)} must be an existing absolute path`, 'lora_path');
    const real = realpathSync(path);
    const inside = roots.some((root) => {
      const rel = relative(realpathSync(resolve(root)), real);
      return rel !== '' && !rel.startsWith('..') && !isAbsolute(rel);
    });
    if (!inside) throw new ValidationError(`lora_path ${JSON.stringify(path)} is not under a configured root (--lora-roots)`, 'lora_path');
    const existing = this.ctx.registry.get(name);
    if (existing && (existing.source !== 'path' || existing.dir !== real)) throw new ConflictError(`adapter ${name} already exists`, 'lora_name');
    if (name === this.ctx.baseId) throw new ConflictError(`${name} is the base model's id`, 'lora_name');
    let v;
    try {
      v = await this.store.validate(real, true);
    } catch (err) {
      if (err instanceof LoraplexError && err.code === 'adapter_invalid') throw err;
      throw new ValidationError(`lora_path: ${(err as Error).message}`, 'lora_path');
    }
    // Looked up again: another load of this name may have finished while this one validated.
    const current = this.ctx.registry.get(name);
    if (current) {
      if (current.source === 'path' && current.dir === real && current.digest === v.digest) return current;
      throw new ConflictError(`adapter ${name} is already loaded from another path or with other files; unload it first`, 'lora_name');
    }
    return this.ctx.registry.register({ name, digest: v.digest, dir: real, info: v.info, source: 'path', createdAt: Date.now() });
  }

  /**
   * Removes `name` — the version it serves now; a name re-created meanwhile is another version and
   * is not touched. New requests stop finding it at once; requests running on it finish, and its
   * weights are unloaded (and, after the store's grace period, its files removed) when no request
   * uses it.
   */
  async remove(name: string): Promise<AdapterRecord> {
    const rec = this.ctx.registry.get(name);
    if (!rec) throw new ModelNotFoundError(`adapter ${name} does not exist`, 'name');
    if (rec.source !== 'path') await this.store.unpublish(name, rec.digest);
    if (this.ctx.registry.get(name) === rec) this.ctx.registry.remove(name);
    this.retire(rec.digest);
    void this.unloadRetired().catch(() => {});
    return rec;
  }

  status(name: string, running: Set<string>, waiting: Set<string>): string {
    return running.has(name) ? 'running' : waiting.has(name) ? 'waiting' : 'idle';
  }
}
