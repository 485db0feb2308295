/**
 * The model-server metrics protocol that the Kubernetes Gateway API inference extension's endpoint
 * picker (llm-d's router) scrapes, every ~50 ms, treating data older than ~2 s as stale:
 * - queued requests and running requests (gauges);
 * - KV-cache utilization (gauge, a fraction 0–1);
 * - LoRA info (gauge; value = the unix time of the scrape in seconds, since the picker uses only
 *   the series with the largest value; labels `max_lora`, `running_lora_adapters`,
 *   `waiting_lora_adapters`, adapter names comma-separated);
 * - cache config info (gauge = 1; labels `block_size`, `num_gpu_blocks`).
 *
 * They are exported under loraplex's names and, with --metrics-vllm-names, also under vLLM's, so
 * the picker's built-in vLLM engine config reads loraplex unchanged.
 */
import { Gauge, type Registry } from 'prom-client';
import type { EngineStats } from '../scheduler/engine-stats.js';

export interface ProtocolNames {
  waiting: string;
  running: string;
  kvUsage: string;
  loraInfo: string;
  cacheInfo: string;
}

export const LORAPLEX_PROTOCOL_NAMES: ProtocolNames = {
  waiting: 'loraplex_queue_depth',
  running: 'loraplex_running_requests',
  kvUsage: 'loraplex_kv_cache_usage_ratio',
  loraInfo: 'loraplex_lora_requests_info',
  cacheInfo: 'loraplex_cache_config_info',
};

export const VLLM_PROTOCOL_NAMES: ProtocolNames = {
  waiting: 'vllm:num_requests_waiting',
  running: 'vllm:num_requests_running',
  kvUsage: 'vllm:kv_cache_usage_perc',
  loraInfo: 'vllm:lora_requests_info',
  cacheInfo: 'vllm:cache_config_info',
};

type LoraLabels = 'running_lora_adapters' | 'waiting_lora_adapters' | 'max_lora';

/** One set of the protocol's gauges under one naming. */
export class ProtocolGauges {
  private readonly waiting: Gauge;
  private readonly running: Gauge;
  private readonly kvUsage: Gauge;
  private readonly loraInfo: Gauge<LoraLabels>;
  private readonly cacheInfo: Gauge<'block_size' | 'num_gpu_blocks'>;

  constructor(names: ProtocolNames, registry: Registry) {
    const registers = [registry];
    this.waiting = new Gauge({ name: names.waiting, help: 'Requests waiting to be scheduled', registers });
    this.running = new Gauge({ name: names.running, help: 'Requests running (holding a batch row)', registers });
    this.kvUsage = new Gauge({ name: names.kvUsage, help: 'Share of the KV cache reserved by running requests (0 to 1)', registers });
    this.loraInfo = new Gauge({
      name: names.loraInfo,
      help: 'Adapters with running / waiting requests (comma-separated) and max_lora, the distinct adapters one batch can hold; value = unix time of the scrape in seconds',
      labelNames: ['running_lora_adapters', 'waiting_lora_adapters', 'max_lora'],
      registers,
    });
    this.cacheInfo = new Gauge({ name: names.cacheInfo, help: 'KV cache layout: tokens per block and blocks in all; value = 1', labelNames: ['block_size', 'num_gpu_blocks'], registers });
  }

  /** Copies the engine's numbers; `nowMs` is the scrape time. */
  set(s: EngineStats, nowMs: number): void {
    this.waiting.set(s.waiting);
    this.running.set(s.running);
    this.kvUsage.set(s.kvCapacity > 0 ? Math.min(1, Math.max(0, s.kvReservedTokens / s.kvCapacity)) : 0);
    // One series only: the picker takes the one with the largest value, and a stale label set
    // left beside the fresh one would be a second series until restart.
    this.loraInfo.reset();
    this.loraInfo.set(
      { running_lora_adapters: s.runningAdapters.join(','), waiting_lora_adapters: s.waitingAdapters.join(','), max_lora: String(s.maxLora) },
      nowMs / 1000,
    );
    this.cacheInfo.reset();
    this.cacheInfo.set({ block_size: String(s.kvBlockSize), num_gpu_blocks: String(Math.floor(s.kvCapacity / s.kvBlockSize)) }, 1);
  }
}
