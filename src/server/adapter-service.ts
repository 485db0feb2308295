/**
 * Adapter lifecycle for the server: discovery at start, install (validate a staged upload against
 * the base model, then commit and register it), registration from a path (vLLM's
 * load_lora_adapter), and removal once the requests using an adapter have finished.
 */
import { existsSync, realpathSync } from 'node:fs';
import { isAbsolute, relative, resolve } from 'node:path';
import { inspectPeftAdapter, type PeftInfo } from '../adapters/peft.js';
import { adapterKey, type AdapterRecord } from '../adapters/registry.js';
import { AdapterInvalidError, ConflictError, LoraplexError, ModelNotFoundError, ValidationError } from '../errors.js';
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

  private inspect(dir: string): PeftInfo {
    const engine = this.ctx.requireEngine();
    return inspectPeftAdapter(dir, engine.info.spec, { maxRank: engine.info.maxLoraRank, strictBase: this.ctx.settings.strictBase ? this.ctx.baseId : null });
  }

  /** Registers every valid adapter in the store; invalid ones are reported and skipped. */
  discover(warn: (msg: string) => void): number {
    const store = this.ctx.store;
    if (!store) return 0;
    let n = 0;
    for (const name of store.list()) {
      try {
        this.ctx.registry.register(name, store.dirOf(name), this.inspect(store.dirOf(name)), 'store');
        n++;
      } catch (err) {
        warn(`adapter ${name} in the store is skipped: ${(err as Error).message}`);
      }
    }
    return n;
  }

  /** Validates a staged upload and makes it visible as `name` (replacing it when `replace`). */
  install(name: string, staged: string, replace: boolean): AdapterRecord {
    const store = this.ctx.store;
    try {
      if (!store) throw new LoraplexError('no adapter store is configured (--adapters)', { code: 'no_store', statusCode: 409, type: 'invalid_request_error' });
      const existing = this.ctx.registry.get(name);
      if (!replace && existing) throw new ConflictError(`adapter ${name} already exists; use PUT /admin/adapters/${name} to replace it`, 'name');
      if (replace && !existing) throw new ModelNotFoundError(`adapter ${name} does not exist; use POST /admin/adapters to create it`, 'name');
      if (name === this.ctx.baseId) throw new ConflictError(`${name} is the base model's id`, 'name');
      const info = this.inspect(staged);
      store.commit(staged, name);
      return this.ctx.registry.register(name, store.dirOf(name), info, 'store');
    } finally {
      store?.discard(staged);
    }
  }

  /** vLLM's load_lora_adapter: registers an adapter directory under one of the configured roots. */
  registerPath(name: string, path: string): AdapterRecord {
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
      info = this.inspect(real);
    } catch (err) {
      if (err instanceof AdapterInvalidError) throw err;
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
