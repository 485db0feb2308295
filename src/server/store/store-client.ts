/**
 * The server's handle on the adapter store and on adapter validation, both on one helper thread
 * (store-worker.ts): nothing here blocks the HTTP event loop. Validation reads config and headers
 * (discovery) or every factor (uploads), digests the files, and checks the adapter's own chat
 * template within the prompt budget (by a tokenizer thread).
 */
import type { LoadOptions } from '../../adapters/peft.js';
import type { StoreEntry, StoreOptions, StoreScan } from '../../adapters/store.js';
import { LoraplexError } from '../../errors.js';
import type { ModelSpec } from '../../runtime/checkpoint/spec.js';
import { WorkerPool } from '../../util/worker-pool.js';
import type { TokenizerPool } from '../prompt/tokenizer-pool.js';
import type { StoreTasks, Validated } from './tasks.js';

/** CPU time to validate one adapter's weights (a large adapter is hundreds of MB), or to scan a big store. */
const TASK_BUDGET_MS = 300_000;
/** Wall-clock limit of a store task (reading from a slow disk included), beyond it a retryable 503. */
const TASK_WALL_LIMIT_MS = 900_000;

export class StoreClient {
  private readonly pool: WorkerPool<StoreTasks>;
  private readonly tokenizers: TokenizerPool;

  constructor(opts: { spec: ModelSpec; load: LoadOptions; root: string | null; store: Omit<StoreOptions, 'onStep'>; tokenizers: TokenizerPool }) {
    this.pool = new WorkerPool<StoreTasks>({
      from: import.meta.url,
      entry: 'store-worker',
      size: 1,
      workerData: { spec: opts.spec, load: opts.load, root: opts.root, store: opts.store },
      resourceLimits: { maxOldGenerationSizeMb: 2048 },
    });
    this.tokenizers = opts.tokenizers;
  }

  private run<K extends keyof StoreTasks>(kind: K, arg: StoreTasks[K]['arg'], what: string): Promise<StoreTasks[K]['result']> {
    return this.pool.run(kind, arg, {
      budgetMs: TASK_BUDGET_MS,
      wallLimitMs: TASK_WALL_LIMIT_MS,
      what,
      onTimeout: () => new LoraplexError(kind === 'validate' ? 'adapter_invalid' : 'internal_error', `${what} took longer than ${TASK_BUDGET_MS / 1000} s of CPU time`, { param: kind === 'validate' ? 'adapter_model' : null }),
      onCrash: (why) => new LoraplexError(kind === 'validate' ? 'adapter_invalid' : 'internal_error', `${what} failed: ${why}`, { param: kind === 'validate' ? 'adapter_model' : null }),
    });
  }

  /** Validates an adapter directory (`full`: every factor) and its chat template; returns its info and digest. */
  async validate(dir: string, full: boolean): Promise<Validated> {
    const v = await this.run('validate', { dir, full }, 'validating the adapter');
    await this.tokenizers.checkAdapterTemplate(dir);
    return v;
  }

  scan(): Promise<StoreScan> {
    return this.run('scan', null, 'scanning the adapter store');
  }

  publish(staged: string, name: string, digest: string, mode: 'create' | 'replace'): Promise<StoreEntry> {
    return this.run('publish', { staged, name, digest, mode }, 'publishing the adapter');
  }

  unpublish(name: string, digest: string): Promise<void> {
    return this.run('unpublish', { name, digest }, 'removing the adapter');
  }

  collect(inUse: Iterable<string>): Promise<{ removed: string[] }> {
    return this.run('collect', { inUse: [...inUse] }, 'collecting old adapter versions');
  }

  close(): Promise<void> {
    return this.pool.close();
  }
}
