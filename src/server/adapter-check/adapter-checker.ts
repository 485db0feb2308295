/**
 * Adapter validation for uploads, vLLM's load_lora_adapter and discovery, on a helper thread: the
 * config and tensor headers against the base model, and (for new adapters) every factor read once
 * and checked finite in the slot dtype; then the adapter's own chat template, parsed and rendered
 * within the prompt budget by a tokenizer thread. Nothing here runs on the HTTP event loop.
 */
import type { LoadOptions, PeftInfo } from '../../adapters/peft.js';
import { LoraplexError } from '../../errors.js';
import type { ModelSpec } from '../../runtime/checkpoint/spec.js';
import { WorkerPool } from '../../util/worker-pool.js';
import type { TokenizerPool } from '../prompt/tokenizer-pool.js';

export interface CheckTask {
  dir: string;
  /** true: read and check every factor (new adapters); false: config and headers only. */
  full: boolean;
}

/** Time to validate one adapter's weights (a large adapter is hundreds of MB). */
const CHECK_TIMEOUT_MS = 300_000;

export class AdapterChecker {
  private readonly pool: WorkerPool;
  private readonly tokenizers: TokenizerPool;

  constructor(spec: ModelSpec, load: LoadOptions, tokenizers: TokenizerPool) {
    this.pool = new WorkerPool({ from: import.meta.url, entry: 'check-worker', size: 1, workerData: { spec, load }, resourceLimits: { maxOldGenerationSizeMb: 2048 } });
    this.tokenizers = tokenizers;
  }

  async check(dir: string, full: boolean): Promise<PeftInfo> {
    const info = await this.pool.run<PeftInfo>({ dir, full } satisfies CheckTask, {
      timeoutMs: CHECK_TIMEOUT_MS,
      onTimeout: () => new LoraplexError('adapter_invalid', `validating the adapter took longer than ${CHECK_TIMEOUT_MS / 1000} s`, { param: 'adapter_model' }),
      onCrash: (why) => new LoraplexError('adapter_invalid', `validating the adapter failed: ${why}`, { param: 'adapter_model' }),
    });
    await this.tokenizers.checkAdapterTemplate(dir);
    return info;
  }

  close(): Promise<void> {
    return this.pool.close();
  }
}
