/**
 * Adapter lifecycle for the server: discovery at start, install (validate a staged upload against
 * the base model, then commit and register it), registration from a path (vLLM's
 * load_lora_adapter), and removal once the requests using an adapter have finished.
 */
import { existsSync, realpathSync } from 'node:fs';
import { isAbsolute, relative, resolve } from 'node:path';
import type { PeftInfo } from '../adapters/peft.js';
import { adapterKey, type AdapterRecord } from '../adapters/registry.js';
import { ConflictError, LoraplexError, ModelNotFoundError, ValidationError } from '../errors.js';
import type { ServerContext } from './context.js';

export function adapterInfo(r: AdapterRecord, status?: string): Record<string, unknown> {
  return {
    name: r.name,
    version: r.version,
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
  private readonly ctx: ServerContext;

  constructor(ctx: ServerContext) {
    this.ctx = ctx;
  }

  /** Validates an adapter directory on a helper thread: fully (new adapters) or from its headers. */
  private inspect(dir: string, full: boolean): Promise<PeftInfo> {
    this.ctx.requireEngine();
    return this.ctx.checker!.check(dir, full);
  }

  /**
   * Registers every valid adapter in the store (config, headers and chat template are checked;
   * the factors were checked at upload and are checked again whenever they are loaded); invalid
   * ones are reported and skipped.
   */
  async discover(warn: (msg: string) => void): Promise<number> {
    const store = this.ctx.store;
    if (!store) return 0;
    let n = 0;
    for (const name of store.list()) {
      try {
        this.ctx.registry.register(name, store.dirOf(name), await this.inspect(store.dirOf(name), false), 'store');
        n++;
      } catch (err) {
        warn(`adapter ${name} in the store is skipped: ${(err as Error).message}`);
      }
    }
    return n;
  }

  /** Validates a staged upload completely and makes it visible as `name` (replacing it when `replace`). */
  async install(name: string, staged: string, replace: boolean): Promise<AdapterRecord> {
    const store = this.ctx.store;
    try {
      if (!store) throw new LoraplexError('no_store', 'no adapter store is configured (--adapters)');
      const existing = this.ctx.registry.get(name);
      if (!replace && existing) throw new ConflictError(`adapter ${name} already exists; use PUT /admin/adapters/${name} to replace it`, 'name');
      if (replace && !existing) throw new ModelNotFoundError(`adapter ${name} does not exist; use POST /admin/adapters to create it`, 'name');
      if (name === this.ctx.baseId) throw new ConflictError(`${name} is the base model's id`, 'name');
      const info = await this.inspect(staged, true);
      store.commit(staged, name);
      return this.ctx.registry.register(name, store.dirOf(name), info, 'store');
    } finally {
      store?.discard(staged);
    }
  }

  /** vLLM's load_lora_adapter: registers an adapter directory under one of the configured roots. */
  async registerPath(name: string, path: string): Promise<AdapterRecord> {
    const roots = this.ctx.settings.loraRoots;
    if (roots.length === 0) throw new ValidationError('loading adapters from paths is off: configure --lora-roots', 'lora_path');
    if (!isAbsolute(path) || !existsSync(path)) throw new ValidationError(`lora_path ${JSON.stringify(path)} must be an existing absolute path`, 'lora_path');
    const real = realpathSync(path);
    const inside = roots.some((root) => {
      const rel = relative(realpathSync(resolve(root)), real);
      return rel !== '' && !rel.startsWith('..') && !isAbsolute(rel);
    });
    if (!inside) throw new ValidationError(`lora_path ${JSON.stringify(path)} is not under a configured root (--lora-roots)`, 'lora_path');
    if (this.ctx.registry.get(name)) throw new ConflictError(`adapter ${name} already exists`, 'lora_name');
    if (name === this.ctx.baseId) throw new ConflictError(`${name} is the base model's id`, 'lora_name');
    let info: PeftInfo;
    try {
      info = await this.inspect(real, true);
    } catch (err) {
      if (err instanceof LoraplexError && err.code === 'adapter_invalid') throw err;
      throw new ValidationError(`lora_path: ${(err as Error).message}`, 'lora_path');
    }
    return this.ctx.registry.register(name, real, info, 'path');
  }

  /**
   * Removes an adapter: it disappears for new requests at once; its files are deleted (store
   * adapters) and its weights unloaded once the requests using it have finished.
   */
  async remove(name: string, waitMs: number): Promise<{ deleted: boolean; waitedMs: number }> {
    const rec = this.ctx.registry.remove(name);
    if (!rec) throw new ModelNotFoundError(`adapter ${name} does not exist`, 'name');
    const started = Date.now();
    while (this.ctx.inflightOf(name) > 0 && Date.now() - started < waitMs) await new Promise((r) => setTimeout(r, 25));
    if (rec.source === 'store') this.ctx.store?.remove(name);
    await this.ctx.engine?.unload(adapterKey(rec));
    return { deleted: true, waitedMs: Date.now() - started };
  }

  status(name: string, running: Set<string>, waiting: Set<string>): string {
    return running.has(name) ? 'running' : waiting.has(name) ? 'waiting' : 'idle';
  }
}
