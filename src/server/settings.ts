/** The server's settings, as the routes and services read them (built from the configuration by serve.ts). */
import type { ReasoningParser } from '../runtime/reasoning/think-split.js';
import type { ToolCallFormat } from '../runtime/tool-calls/format.js';

export interface ServerSettings {
  adminToken: string | null;
  apiKeys: string[];
  /** Who shares cached prompt prefixes when there are API keys: requests with the same key, or all. */
  prefixCacheScope: 'key' | 'global';
  /** The bearer token of GET /metrics (null: the API keys; open when there are none). */
  metricsKey: string | null;
  maxUploadBytes: number;
  logPrompts: boolean;
  /** A tool-call format, or 'auto' (the chat template's). */
  toolCallParser: ToolCallFormat | 'auto';
  /** How reasoning is split from answers (see reasoning/think-split.ts). */
  reasoningParser: ReasoningParser;
  requestTimeoutMs: number;
  strictBase: boolean;
  loraRoots: string[];
  maxBatchSize: number;
  /** Batch rows (choices) one request may ask for. */
  maxRowsPerRequest: number;
  maxBatchPrefillTokens: number;
  maxQueuedRequests: number;
  adapterCycleMs: number;
  /** The adapter store's directory (null: none). */
  storeDir: string | null;
  /** Time to receive a request's headers / its body (uploads: time without progress). */
  headersTimeoutMs: number;
  bodyTimeoutMs: number;
  /** How long an idle keep-alive connection stays open (clients are told less: app.ts). */
  keepAliveTimeoutMs: number;
  /** How long a streaming client may leave more than STALL_BYTES unread before its request is cancelled (sse.ts). */
  streamStallMs: number;
}
