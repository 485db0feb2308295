/**
 * Prompt tokenization for the server: a pool of tokenizer threads (TGI's router keeps a pool of
 * tokenizer workers for the same reason) so that rendering a chat template or tokenizing a huge
 * text never runs on the HTTP event loop or the engine thread. Every task has a budget of CPU time
 * (the tokenizer thread's own, so a busy machine does not use it up) and a heap limit; a task that
 * overruns either fails with a 4xx naming the budget, and its thread is replaced. A task the busy
 * machine cannot finish within the pool's wall-clock limit fails with a retryable 503.
 */
import { LoraplexError } from '../../errors.js';
import { WorkerPool } from '../../util/worker-pool.js';
import type { ChatPrompt, ChatTask, TokenizerInfo, TokenizerTasks, TokenPiece } from './tasks.js';

export interface TokenizerPoolOptions {
  modelDir: string;
  workers: number;
  /** CPU-time budget of one task (template rendering + tokenization). */
  budgetMs: number;
  /** Wall-clock limit of one task, queueing included (the request's deadline): beyond it, 503 busy. */
  wallLimitMs?: number;
  /** Heap limit of each tokenizer thread. */
  maxHeapMb?: number;
}

export class TokenizerPool {
  private readonly pool: WorkerPool<TokenizerTasks>;
  private readonly budgetMs: number;
  private readonly wallLimitMs: number | undefined;
  private infoValue: TokenizerInfo | null = null;

  private constructor(pool: WorkerPool<TokenizerTasks>, budgetMs: number, wallLimitMs: number | undefined) {
    this.pool = pool;
    this.budgetMs = budgetMs;
    this.wallLimitMs = wallLimitMs;
  }

  static async start(opts: TokenizerPoolOptions): Promise<TokenizerPool> {
    const pool = new WorkerPool<TokenizerTasks>({
      from: import.meta.url,
      entry: 'tokenize-worker',
      size: opts.workers,
      workerData: { modelDir: opts.modelDir },
      resourceLimits: { maxOldGenerationSizeMb: opts.maxHeapMb ?? 1024 },
    });
    const p = new TokenizerPool(pool, opts.budgetMs, opts.wallLimitMs);
    // Each thread loads the tokenizer and renders a sample conversation before it takes tasks; the
    // first task waits for that (it is not counted in its budget).
    p.infoValue = await pool.run('info', null, {
      budgetMs: Math.max(60_000, opts.budgetMs),
      what: 'loading the tokenizer',
      onTimeout: () => new LoraplexError('checkpoint_invalid', 'the tokenizer did not load within 60 s of CPU time'),
    });
    return p;
  }

  get info(): TokenizerInfo {
    return this.infoValue!;
  }

  /** Threads replaced after a timeout, a crash or heap growth. */
  get replaced(): number {
    return this.pool.replaced;
  }

  private run<K extends 'text' | 'chat' | 'decode' | 'pieces'>(kind: K, arg: TokenizerTasks[K]['arg'], what: string, param: string): Promise<TokenizerTasks[K]['result']> {
    return this.pool.run(kind, arg, {
      budgetMs: this.budgetMs,
      wallLimitMs: this.wallLimitMs,
      what,
      onTimeout: () => new LoraplexError('prompt_too_expensive', `${what} took longer than its budget of ${this.budgetMs} ms of CPU time (--prompt-timeout-ms)`, { param }),
      onCrash: (why) => new LoraplexError('prompt_too_expensive', `${what} needed more memory than allowed (${why})`, { param }),
    });
  }

  encodeText(text: string, addSpecialTokens: boolean, param = 'prompt'): Promise<Int32Array> {
    return this.run('text', { text, addSpecialTokens }, 'tokenizing the prompt', param);
  }

  encodeChat(chat: ChatTask): Promise<ChatPrompt> {
    return this.run('chat', chat, 'rendering the chat template and tokenizing the messages', 'messages');
  }

  decode(ids: number[], skipSpecialTokens: boolean): Promise<string> {
    return this.run('decode', { ids, skipSpecialTokens }, 'detokenizing', 'tokens');
  }

  pieces(ids: number[]): Promise<TokenPiece[]> {
    return this.run('pieces', { ids }, 'splitting the prompt into tokens', 'inputs');
  }

  /** Checks an adapter's own chat template (if it has one): parses and renders within the budget. */
  async checkAdapterTemplate(adapterDir: string): Promise<boolean> {
    return this.pool.run('checkTemplate', { adapterDir }, {
      budgetMs: this.budgetMs,
      wallLimitMs: this.wallLimitMs,
      what: "checking the adapter's chat template",
      onTimeout: () =>
        new LoraplexError('adapter_invalid', `tokenizer_config.json: the chat template takes longer than ${this.budgetMs} ms of CPU time (--prompt-timeout-ms) to render a short conversation`, { param: 'tokenizer_config' }),
      onCrash: (why) => new LoraplexError('adapter_invalid', `tokenizer_config.json: rendering the chat template failed (${why})`, { param: 'tokenizer_config' }),
    });
  }

  close(): Promise<void> {
    return this.pool.close();
  }
}
