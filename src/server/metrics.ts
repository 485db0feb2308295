/**
 * Prometheus metrics (prom-client, own registry): requests by route/status/adapter, latency and
 * time-to-first-token histograms, tokens, queue depth, running rows, batch size, adapter cache
 * counters, prefix-cache queries and hits (in tokens, as vLLM counts them), the model-server
 * protocol the Gateway API inference extension's endpoint picker routes on (metrics-protocol.ts),
 * and adapter residency (host cache, graph slots, pinned). Engine-side numbers are read from the
 * engine on each scrape.
 *
 * Label sets are bounded, since every new label value is a series kept until restart: the adapter
 * label takes at most `maxAdapterLabels` values (first come; requests for others count under
 * `_other`, which no adapter name can be), besides `base` and '' (not resolved).
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { EngineStats } from '../scheduler/engine-stats.js';
import { LORAPLEX_PROTOCOL_NAMES, ProtocolGauges, VLLM_PROTOCOL_NAMES } from './metrics-protocol.js';

/** The adapter label of requests for adapters beyond the cap (adapter names start with a letter or digit). */
export const OTHER_ADAPTERS = '_other';

const LATENCY_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];

export class Metrics {
  readonly registry = new Registry();
  private readonly requests: Counter<'route' | 'status' | 'adapter'>;
  private readonly latency: Histogram<'route'>;
  readonly ttft: Histogram<'route'>;
  readonly interTokenLatency: Histogram;
  private readonly promptTokens: Counter<'adapter'>;
  private readonly generatedTokens: Counter<'adapter'>;
  private readonly maxAdapterLabels: number;
  private readonly adapterLabels = new Set<string>();
  private readonly cacheCounters: Record<'hits' | 'misses' | 'loads' | 'loadFailures' | 'evictions', Counter>;
  private readonly prefixCounters: Record<'prefixCacheQueryTokens' | 'prefixCacheHitTokens', Counter>;
  private readonly last: Record<string, number> = {};
  private readonly engineGauges: Record<'batch' | 'cacheBytes' | 'slotLoads' | 'slotMoves' | 'preemptions' | 'cachedBlocks' | 'idleBlocks', Gauge>;
  private readonly grammarGauges: Record<'replacements' | 'rowsFailed' | 'memoryBytes' | 'lateMasks', Gauge>;
  private readonly protocol: ProtocolGauges[];
  private readonly residency: Gauge<'adapter' | 'location'>;

  /** `vllmNames`: export the endpoint picker's protocol gauges also under vLLM's names. */
  constructor(maxAdapterLabels = 100, opts: { vllmNames?: boolean } = {}) {
    this.maxAdapterLabels = maxAdapterLabels;
    const r = this.registry;
    collectDefaultMetrics({ register: r, prefix: 'loraplex_process_' });
    this.requests = new Counter({ name: 'loraplex_requests_total', help: 'Requests by route, HTTP status and adapter', labelNames: ['route', 'status', 'adapter'], registers: [r] });
    this.latency = new Histogram({ name: 'loraplex_request_duration_seconds', help: 'End-to-end request latency', labelNames: ['route'], buckets: LATENCY_BUCKETS, registers: [r] });
    this.ttft = new Histogram({ name: 'loraplex_time_to_first_token_seconds', help: 'Time from request to its first generated token', labelNames: ['route'], buckets: LATENCY_BUCKETS, registers: [r] });
    this.interTokenLatency = new Histogram({ name: 'loraplex_inter_token_latency_seconds', help: 'Time between consecutive generated tokens of a request', buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5], registers: [r] });
    this.promptTokens = new Counter({ name: 'loraplex_prompt_tokens_total', help: 'Prompt tokens processed', labelNames: ['adapter'], registers: [r] });
    this.generatedTokens = new Counter({ name: 'loraplex_generated_tokens_total', help: 'Tokens generated', labelNames: ['adapter'], registers: [r] });
    const counter = (name: string, help: string): Counter => new Counter({ name, help, registers: [r] });
    this.cacheCounters = {
      hits: counter('loraplex_adapter_cache_hits_total', 'Requests whose adapter was in the host cache'),
      misses: counter('loraplex_adapter_cache_misses_total', 'Requests whose adapter had to be loaded'),
      loads: counter('loraplex_adapter_loads_total', 'Adapter loads from disk'),
      loadFailures: counter('loraplex_adapter_load_failures_total', 'Adapter loads that failed'),
      evictions: counter('loraplex_adapter_cache_evictions_total', 'Adapters evicted from the host cache'),
    };
    this.prefixCounters = {
      prefixCacheQueryTokens: counter('loraplex_prefix_cache_queries_total', 'Prompt tokens looked up in the prefix cache when requests were admitted'),
      prefixCacheHitTokens: counter('loraplex_prefix_cache_hits_total', 'Prompt tokens found in the prefix cache (not computed)'),
    };
    const batch = new Gauge({ name: 'loraplex_batch_size', help: 'Rows in the last forward step', registers: [r] });
    const cacheBytes = new Gauge({ name: 'loraplex_adapter_cache_bytes', help: 'Bytes of adapters in the host cache', registers: [r] });
    const slotLoads = new Gauge({ name: 'loraplex_adapter_slot_loads', help: 'Adapters written into graph slots since start', registers: [r] });
    const slotMoves = new Gauge({ name: 'loraplex_adapter_slot_moves', help: "Slot swaps since start that moved a step's adapters into the lowest graph slots", registers: [r] });
    const preemptions = new Gauge({ name: 'loraplex_preemptions', help: 'Requests taken out of the batch to free KV cache since start (resumed by recomputation)', registers: [r] });
    const cachedBlocks = new Gauge({ name: 'loraplex_prefix_cache_blocks', help: 'KV blocks (16 tokens each) in the prefix cache, held by requests or idle', registers: [r] });
    const idleBlocks = new Gauge({ name: 'loraplex_prefix_cache_idle_blocks', help: 'Prefix-cache blocks no request holds (reclaimed first when the KV cache needs room)', registers: [r] });
    this.engineGauges = { batch, cacheBytes, slotLoads, slotMoves, preemptions, cachedBlocks, idleBlocks };
    this.grammarGauges = {
      replacements: new Gauge({ name: 'loraplex_grammar_thread_replacements', help: 'Grammar threads replaced since start (a row over --grammar-mask-timeout-ms, XGrammar aborting, or memory past --grammar-memory-mb)', registers: [r] }),
      rowsFailed: new Gauge({ name: 'loraplex_grammar_rows_failed', help: 'Constrained rows failed since start because their grammar needed too much CPU per token or made XGrammar abort', registers: [r] }),
      memoryBytes: new Gauge({ name: 'loraplex_grammar_memory_bytes', help: "XGrammar's memory on the grammar thread", registers: [r] }),
      lateMasks: new Gauge({ name: 'loraplex_grammar_late_masks', help: 'Times a constrained row sat out a step because its mask was not ready (other rows did not wait for it)', registers: [r] }),
    };
    this.protocol = [new ProtocolGauges(LORAPLEX_PROTOCOL_NAMES, r)];
    if (opts.vllmNames) this.protocol.push(new ProtocolGauges(VLLM_PROTOCOL_NAMES, r));
    this.residency = new Gauge({
      name: 'loraplex_adapter_residency',
      help: `Adapters resident by location (host_cache, slot: in a graph slot, pinned: in a slot and used by running rows); value = adapters (1, or how many have no label of their own under adapter="${OTHER_ADAPTERS}")`,
      labelNames: ['adapter', 'location'],
      registers: [r],
    });
  }

  /** One answered request: `adapter` is its adapter label ('base', a name, sorted names joined by '+', or '' if not resolved). */
  request(route: string, status: number, adapter: string, seconds: number): void {
    this.requests.inc({ route, status: String(status), adapter: this.adapterLabel(adapter) });
    this.latency.observe({ route }, seconds);
  }

  tokens(adapter: string, prompt: number, generated: number): void {
    const label = this.adapterLabel(adapter);
    this.promptTokens.inc({ adapter: label }, prompt);
    this.generatedTokens.inc({ adapter: label }, generated);
  }

  private adapterLabel(label: string): string {
    if (label === '' || label === 'base' || this.adapterLabels.has(label)) return label;
    if (this.adapterLabels.size >= this.maxAdapterLabels) return OTHER_ADAPTERS;
    this.adapterLabels.add(label);
    return label;
  }

  /** Copies the engine's numbers into the metrics (before each scrape). */
  refresh(s: EngineStats): void {
    const g = this.engineGauges;
    g.batch.set(s.lastBatchRows);
    g.cacheBytes.set(s.cache.bytes);
    g.slotLoads.set(s.slotLoads);
    g.slotMoves.set(s.slotMoves);
    g.preemptions.set(s.preemptions);
    g.cachedBlocks.set(s.kvCachedBlocks);
    g.idleBlocks.set(s.kvIdleBlocks);
    if (s.grammar) {
      this.grammarGauges.replacements.set(s.grammar.replacements);
      this.grammarGauges.rowsFailed.set(s.grammar.rowsFailed);
      this.grammarGauges.memoryBytes.set(s.grammar.memoryBytes);
    }
    this.grammarGauges.lateMasks.set(s.grammarLateMasks);
    for (const k of Object.keys(this.prefixCounters) as (keyof typeof this.prefixCounters)[]) {
      const delta = s[k] - (this.last[k] ?? 0);
      if (delta > 0) this.prefixCounters[k].inc(delta);
      this.last[k] = s[k];
    }
    for (const k of Object.keys(this.cacheCounters) as (keyof typeof this.cacheCounters)[]) {
      const delta = s.cache[k] - (this.last[k] ?? 0);
      if (delta > 0) this.cacheCounters[k].inc(delta);
      this.last[k] = s.cache[k];
    }
    const now = Date.now();
    for (const p of this.protocol) p.set(s, now);
    // Adapters with requests in flight get their label now (their requests will claim it anyway).
    for (const name of [...s.runningAdapters, ...s.waitingAdapters]) this.adapterLabel(name);
    this.residency.reset();
    const locations = { host_cache: s.cachedAdapters, slot: s.slotAdapters, pinned: s.pinnedAdapters };
    for (const [location, names] of Object.entries(locations)) {
      // Bounded like the request labels, and without taking their places: an adapter that has no
      // label from a request (a merge's parts, one beyond the cap) is counted under _other.
      for (const name of names) this.residency.inc({ adapter: this.adapterLabels.has(name) || name === 'base' ? name : OTHER_ADAPTERS, location });
    }
  }
}
