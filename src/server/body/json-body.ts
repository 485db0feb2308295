/**
 * JSON request bodies without stalling the HTTP event loop: small bodies are parsed in place;
 * large ones are parsed on a helper thread, which also refuses, before anything is copied back,
 * bodies that nest deeper than any request needs or whose prompt cannot fit the context (so a
 * client sending 7.5 MB messages in a loop costs the event loop little more than reading bytes).
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { LoraplexError } from '../../errors.js';
import { WorkerPool } from '../../util/worker-pool.js';

/** Bodies up to this size are parsed on the event loop (well under a millisecond). */
const INLINE_BYTES = 64 * 1024;
/** No request needs deeper nesting (free-form fields have their own, tighter limit). */
const MAX_BODY_DEPTH = 64;
/** CPU time a body may take to parse (a 7.5 MB body takes about a tenth of it). */
const PARSE_BUDGET_MS = 10_000;

export interface ParseTask {
  bytes: ArrayBuffer;
  /** The route (its prompt fields are checked against the context). */
  route: string;
  maxDepth: number;
  limits: PromptLimits | null;
}

/** The body thread's task map (see worker-protocol.ts): the parsed body. */
export interface ParseTasks {
  parse: { arg: ParseTask; result: unknown };
}

export interface PromptLimits {
  maxPositions: number;
  maxTokenBytes: number;
}

export class JsonBodyParser {
  /** Started with the first large body. */
  private pool: WorkerPool<ParseTasks> | null = null;
  /** Set once the model and its tokenizer are known. */
  limits: PromptLimits | null = null;

  install(app: FastifyInstance, bodyLimit: number): void {
    app.removeContentTypeParser('application/json');
    app.addContentTypeParser('application/json', { parseAs: 'buffer', bodyLimit }, async (request: FastifyRequest, body: Buffer) => {
      if (body.length === 0) throw new LoraplexError('bad_request', 'the body is empty; send a JSON object');
      if (body.length <= INLINE_BYTES) {
        try {
          return JSON.parse(body.toString('utf8'));
        } catch (err) {
          throw new LoraplexError('bad_request', `the body is not valid JSON: ${(err as Error).message}`);
        }
      }
      const bytes = new ArrayBuffer(body.length);
      new Uint8Array(bytes).set(body);
      const task: ParseTask = { bytes, route: request.routeOptions.url ?? '', maxDepth: MAX_BODY_DEPTH, limits: this.limits };
      this.pool ??= new WorkerPool<ParseTasks>({ from: import.meta.url, entry: 'parse-worker', size: 1, resourceLimits: { maxOldGenerationSizeMb: 512 } });
      return this.pool.run('parse', task, {
        budgetMs: PARSE_BUDGET_MS,
        what: 'parsing the request body',
        transfer: [bytes],
        onTimeout: () => new LoraplexError('bad_request', `parsing the body took longer than ${PARSE_BUDGET_MS} ms of CPU time`),
        onCrash: (why) => new LoraplexError('bad_request', `the body could not be parsed (${why})`),
      });
    });
  }

  async close(): Promise<void> {
    await this.pool?.close();
  }
}
