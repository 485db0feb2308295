/**
 * Prompt tokenization for the server: a pool of tokenizer threads (TGI's router keeps a pool of
 * tokenizer workers for the same reason) so that rendering a chat template or tokenizing a huge
 * text never runs on the HTTP event loop or the engine thread. Every task has a time budget and a
 * heap limit; a task that overruns either fails with a 4xx naming the budget, and its thread is
 * replaced.
 */
import { LoraplexError } from '../../errors.js';
import type { ChatMessage } from '../../runtime/chat-template.js';
import { WorkerPool } from '../../util/worker-pool.js';
import type { ChatPrompt, TokenizeTask, TokenizerInfo, TokenPiece } from './tasks.js';

export interface TokenizerPoolOptions {
  modelDir: string;
  workers: number;
  /** Budget of one task (template rendering + tokenization). */
  timeoutMs: number;
  /** Heap limit of each tokenizer thread. */
  maxHeapMb?: number;
}

export class TokenizerPool {
  private readonly pool: WorkerPool;
  private readonly timeoutMs: number;
  private infoValue: TokenizerInfo | null = null;

  private constructor(pool: WorkerPool, timeoutMs: number) {
    this.pool = pool;
    this.timeoutMs = timeoutMs;
  }

  static async start(opts: TokenizerPoolOptions): Promise<TokenizerPool> {
    const pool = new WorkerPool({
      from: import.meta.url,
      entry: 'tokenize-worker',
      size: opts.workers,
      workerData: { modelDir: opts.modelDir },
      resourceLimits: { maxOldGenerationSizeMb: opts.maxHeapMb ?? 1024 },
    });
    const p = new TokenizerPool(pool, opts.timeoutMs);
    // Loading a tokenizer can take a while on a busy machine: the first task gets a long budget.
    p.infoValue = await pool.run<TokenizerInfo>({ kind: 'info' } satisfies TokenizeTask, {
      timeoutMs: Math.max(60_000, opts.timeoutMs),
      onTimeout: () => new LoraplexError('checkpoint_invalid', 'the tokenizer did not load within 60 s'),
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

  private run<T = Int32Array>(task: TokenizeTask, what: string, param: string): Promise<T> {
    return this.pool.run<T>(task, {
      timeoutMs: this.timeoutMs,
      onTimeout: () => new LoraplexError('prompt_too_expensive', `${what} took longer than its budget of ${this.timeoutMs} ms (--prompt-timeout-ms)`, { param }),
      onCrash: (why) => new LoraplexError('prompt_too_expensive', `${what} needed more memory than allowed (${why})`, { param }),
    });
  }

  encodeText(text: string, addSpecialTokens: boolean, param = 'prompt'): Promise<Int32Array> {
    return this.run({ kind: 'text', text, addSpecialTokens }, 'tokenizing the prompt', param);
  }

  encodeChat(chat: { messages: ChatMessage[]; tools: unknown[] | null; addGenerationPrompt: boolean; templateKwargs: Record<string, unknown> | null; adapterDir: string | null }): Promise<ChatPrompt> {
    return this.run<ChatPrompt>({ kind: 'chat', ...chat }, 'rendering the chat template and tokenizing the messages', 'messages');
  }

  decode(ids: number[], skipSpecialTokens: boolean): Promise<string> {
    return this.pool.run<string>({ kind: 'decode', ids, skipSpecialTokens } satisfies TokenizeTask, {
      timeoutMs: this.timeoutMs,
      onTimeout: () => new LoraplexError('prompt_too_expensive', `detokenizing took longer than its budget of ${this.timeoutMs} ms`, { param: 'tokens' }),
    });
  }

  pieces(ids: number[]): Promise<TokenPiece[]> {
    return this.pool.run<TokenPiece[]>({ kind: 'pieces', ids } satisfies TokenizeTask, {
      timeoutMs: this.timeoutMs,
      onTimeout: () => new LoraplexError('prompt_too_expensive', `splitting the prompt into tokens took longer than its budget of ${this.timeoutMs} ms`, { param: 'inputs' }),
    });
  }

  /** Checks an adapter's own chat template (if it has one): parses and renders within the budget. */
  async checkAdapterTemplate(adapterDir: string): Promise<boolean> {
    return this.pool.run<boolean>({ kind: 'checkTemplate', adapterDir } satisfies TokenizeTask, {
      timeoutMs: this.timeoutMs,
      onTimeout: () =>
        new LoraplexError('adapter_invalid', `tokenizer_config.json: the chat template takes longer than ${this.timeoutMs} ms (--prompt-timeout-ms) to render a short conversation`, { param: 'tokenizer_config' }),
      onCrash: (why) => new LoraplexError('adapter_invalid', `tokenizer_config.json: rendering the chat template failed (${why})`, { param: 'tokenizer_config' }),
    });
  }

  close(): Promise<void> {
    return this.pool.close();
  }
}
