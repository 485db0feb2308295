/**
 * Every configuration knob, declared once: flag, environment variable, default and description.
 * The CLI builds its options from this table; values are validated at start-up (all errors listed
 * together), frozen and passed down. Nothing else reads process.env (the CLI passes it in).
 */
import { homedir } from 'node:os';
import { join } from 'node:path';
import { DEVICES, type Device } from './runtime/devices.js';
import { WEIGHT_FORMATS, type WeightFormat } from './runtime/graph/quant.js';
import { REASONING_PARSERS, type ReasoningParser } from './runtime/reasoning/think-split.js';
import { TOOL_CALL_FORMATS, type ToolCallFormat } from './runtime/tool-calls/format.js';

type Kind = 'string' | 'int' | 'bool' | 'bytes' | 'list';

export interface Knob<K extends string = string> {
  key: K;
  flag: string;
  env: string;
  kind: Kind;
  /** undefined = no default (required where a command needs it, else unset). */
  default?: string | number | boolean | string[];
  choices?: readonly string[];
  min?: number;
  doc: string;
}

const knob = <K extends string>(k: Knob<K>): Knob<K> => k;

export const KNOBS = {
  // ---- model and runtime
  model: knob({ key: 'model', flag: '--model <dir>', env: 'LORAPLEX_MODEL', kind: 'string', doc: 'Hugging Face checkpoint directory (config.json, *.safetensors, tokenizer files)' }),
  quant: knob({ key: 'quant', flag: '--quant <format>', env: 'LORAPLEX_QUANT', kind: 'string', default: 'int4', choices: WEIGHT_FORMATS, doc: 'weight format of the base model: int4 and int8 are the fast CPU paths (int8 activations per block of 32); w8a8 (int8 weights per channel, activations quantized per token) runs prompts fastest on CPUs with VNNI, at twice int4\'s weight memory; nf4 is what QLoRA trained against (slower on CPU)' }),
  lmHeadAccuracy: knob({ key: 'lmHeadAccuracy', flag: '--lm-head-accuracy <type>', env: 'LORAPLEX_LM_HEAD_ACCURACY', kind: 'string', default: 'int8', choices: ['int8', 'fp32'], doc: 'compute precision of the output projection (lm_head) with int4/int8 weights: int8 quantizes its input like every other projection (fast); fp32 keeps it in float, so rounding the input cannot flip a greedy token at a near-tie' }),
  activations: knob({ key: 'activations', flag: '--activations <type>', env: 'LORAPLEX_ACTIVATIONS', kind: 'string', default: 'fp32', choices: ['fp32', 'fp16'], doc: 'activation precision; fp16 is meant for GPU execution providers' }),
  device: knob({ key: 'device', flag: '--device <ep>', env: 'LORAPLEX_DEVICE', kind: 'string', default: 'cpu', choices: DEVICES, doc: 'onnxruntime execution provider' }),
  allowCpuFallback: knob({ key: 'allowCpuFallback', flag: '--allow-cpu-fallback', env: 'LORAPLEX_ALLOW_CPU_FALLBACK', kind: 'bool', default: false, doc: 'run on the CPU when the chosen device is unavailable (otherwise refuse to start)' }),
  threads: knob({ key: 'threads', flag: '--threads <n>', env: 'LORAPLEX_THREADS', kind: 'int', default: 0, min: 0, doc: 'onnxruntime intra-op threads (0 = the cores this process may use: its CPU affinity, capped by a cgroup CPU quota as in a container; logged at start)' }),
  ortProfile: knob({ key: 'ortProfile', flag: '--ort-profile <prefix>', env: 'LORAPLEX_ORT_PROFILE', kind: 'string', doc: "write onnxruntime's per-operator profile (JSON) to files starting with this prefix (for performance work)" }),
  cacheDir: knob({ key: 'cacheDir', flag: '--cache-dir <dir>', env: 'LORAPLEX_CACHE_DIR', kind: 'string', default: join(homedir(), '.cache', 'loraplex'), doc: 'where built graphs (and the demo model) are cached' }),
  maxContext: knob({ key: 'maxContext', flag: '--max-context <tokens>', env: 'LORAPLEX_MAX_CONTEXT', kind: 'int', default: 0, min: 0, doc: "longest sequence (prompt + generated tokens); 0 = the model's max_position_embeddings" }),
  kvCacheTokens: knob({ key: 'kvCacheTokens', flag: '--kv-cache-tokens <n>', env: 'LORAPLEX_KV_CACHE_TOKENS', kind: 'int', default: 0, min: 0, doc: 'tokens the KV cache holds across all running sequences (0 = a quarter of the memory the process may use, 4096 to 131072 tokens; logged at start)' }),
  maxLoraRank: knob({ key: 'maxLoraRank', flag: '--max-lora-rank <r>', env: 'LORAPLEX_MAX_LORA_RANK', kind: 'int', default: 64, min: 1, doc: 'highest adapter rank accepted' }),
  maxActiveAdapters: knob({ key: 'maxActiveAdapters', flag: '--max-active-adapters <n>', env: 'LORAPLEX_MAX_ACTIVE_ADAPTERS', kind: 'int', default: 8, min: 1, doc: 'distinct adapters in one batch (adapter slots in the graph)' }),
  // ---- adapters and scheduling
  adapters: knob({ key: 'adapters', flag: '--adapters <dir>', env: 'LORAPLEX_ADAPTERS', kind: 'string', doc: 'adapter store: one sub-directory per adapter (PEFT files); uploads land here' }),
  adapterCacheBytes: knob({ key: 'adapterCacheBytes', flag: '--adapter-cache-bytes <size>', env: 'LORAPLEX_ADAPTER_CACHE_BYTES', kind: 'bytes', default: 2 * 1024 ** 3, min: 0, doc: 'host memory for loaded adapters (LRU), e.g. 2GiB or 512MB' }),
  maxBatchSize: knob({ key: 'maxBatchSize', flag: '--max-batch-size <rows>', env: 'LORAPLEX_MAX_BATCH_SIZE', kind: 'int', default: 32, min: 1, doc: 'sequences in one forward step' }),
  maxRowsPerRequest: knob({ key: 'maxRowsPerRequest', flag: '--max-rows-per-request <n>', env: 'LORAPLEX_MAX_ROWS_PER_REQUEST', kind: 'int', default: 16, min: 1, doc: "sequences one request may ask for: each choice of n (or best_of, times the prompts of /v1/completions) is a batch row; beyond it: 400 naming n or best_of. Rows are also shared fairly at run time: each API key (without keys, each adapter) is owed --max-batch-size divided by the keys with work, and a key below its share takes rows from the one most above it (see docs/operations.md)" }),
  maxBatchPrefillTokens: knob({ key: 'maxBatchPrefillTokens', flag: '--max-batch-prefill-tokens <n>', env: 'LORAPLEX_MAX_BATCH_PREFILL_TOKENS', kind: 'int', default: 512, min: 1, doc: 'prompt tokens processed in one step, beside the decoding rows (longer prompts are chunked): bounds how long a step can delay every running stream' }),
  maxStepMs: knob({ key: 'maxStepMs', flag: '--max-step-ms <ms>', env: 'LORAPLEX_MAX_STEP_MS', kind: 'int', default: 250, min: 0, doc: 'target time of one step, the default 250 (0 = off: steps take --max-batch-prefill-tokens prompt tokens whatever they cost): the prompt tokens of a step are chosen from the measured step times so that the step (its decode rows included) takes about this long, at least 32 tokens and at most --max-batch-prefill-tokens; a slow or busy machine then gets shorter prefill chunks instead of steps that stall every stream. On W8 (2 vCPUs) 250 ms cut inter-token p99 from 0.8 s to 0.3 s at 0.90–1.10× the tokens/s; on 1,024-token prompts from 1.9 s to 0.3 s at 0.82–0.88× (set 0 for bulk prefill)' }),
  maxQueuedRequests: knob({ key: 'maxQueuedRequests', flag: '--max-queued-requests <n>', env: 'LORAPLEX_MAX_QUEUED_REQUESTS', kind: 'int', default: 256, min: 1, doc: 'waiting requests beyond which new ones are refused with 429' }),
  adapterCycleMs: knob({ key: 'adapterCycleMs', flag: '--adapter-cycle-ms <ms>', env: 'LORAPLEX_ADAPTER_CYCLE_MS', kind: 'int', default: 2000, min: 1, doc: 'time slice after which waiting adapters get their turn over the running ones' }),
  prefixCache: knob({ key: 'prefixCache', flag: '--no-prefix-cache', env: 'LORAPLEX_PREFIX_CACHE', kind: 'bool', default: true, doc: "reuse the KV cache of prompt prefixes seen before (same adapter version, same tokens): a repeated system prompt or conversation history is computed once; cached blocks yield to running requests' need for room" }),
  prefixCacheScope: knob({ key: 'prefixCacheScope', flag: '--prefix-cache-scope <scope>', env: 'LORAPLEX_PREFIX_CACHE_SCOPE', kind: 'string', default: 'key', choices: ['key', 'global'], doc: "who may share cached prompt prefixes when --api-key is set: key = only requests with the same API key (a hit is visible in cached_tokens and in the time to the first token, so shared blocks would tell one key what another key's prompts hold); global = all keys (more hits; only when the keys' holders may see each other's prompts). cache_salt partitions further either way" }),
  requestTimeoutMs: knob({ key: 'requestTimeoutMs', flag: '--request-timeout-ms <ms>', env: 'LORAPLEX_REQUEST_TIMEOUT_MS', kind: 'int', default: 600000, min: 1, doc: 'deadline for one request, queueing included' }),
  promptTimeoutMs: knob({ key: 'promptTimeoutMs', flag: '--prompt-timeout-ms <ms>', env: 'LORAPLEX_PROMPT_TIMEOUT_MS', kind: 'int', default: 2000, min: 1, doc: "CPU time a request's chat template rendering and prompt tokenization may use, counted on the tokenizer thread, so a busy machine does not use it up (beyond it: 400; not finished within --request-timeout-ms because the machine is busy: 503 with Retry-After)" }),
  grammarCompileTimeoutMs: knob({ key: 'grammarCompileTimeoutMs', flag: '--grammar-compile-timeout-ms <ms>', env: 'LORAPLEX_GRAMMAR_COMPILE_TIMEOUT_MS', kind: 'int', default: 10000, min: 1, doc: "CPU time compiling a new response_format schema, regex, grammar or tool-call grammar may use, counted on the thread that compiles it, so a busy machine does not use it up (beyond it: 400; not finished within --request-timeout-ms because the machine is busy: 503 with Retry-After); it is compiled first on a thread of its own, so a grammar that takes longer never delays other requests' constrained rows" }),
  grammarMaskTimeoutMs: knob({ key: 'grammarMaskTimeoutMs', flag: '--grammar-mask-timeout-ms <ms>', env: 'LORAPLEX_GRAMMAR_MASK_TIMEOUT_MS', kind: 'int', default: 200, min: 1, doc: "CPU time a constraint may use to compute the set of tokens allowed next, per token: a new constraint's first masks are probed before it is accepted (beyond it: 400), and a running row whose mask needs more fails alone (its stream ends with invalid_grammar) while the others go on; rows whose mask is late sit out a step instead of holding back the batch" }),
  grammarMemoryMb: knob({ key: 'grammarMemoryMb', flag: '--grammar-memory-mb <MiB>', env: 'LORAPLEX_GRAMMAR_MEMORY_MB', kind: 'int', default: 1024, min: 64, doc: 'memory the grammar thread may hold for compiled grammars and constrained rows (WebAssembly memory never shrinks): beyond it the thread is replaced by a fresh one and its rows move there; it is never taken below 128 MiB more than a fresh thread holds' }),
  reasoningParser: knob({ key: 'reasoningParser', flag: '--reasoning-parser <parser>', env: 'LORAPLEX_REASONING_PARSER', kind: 'string', default: 'auto', choices: REASONING_PARSERS, doc: "how a reasoning model's thinking is split from its answer on chat completions (message.reasoning_content and message.reasoning) and the Responses API (a reasoning output item): qwen3 and deepseek_r1 split <think>…</think> blocks, including one the prompt opened; auto = when the chat template in use writes them; none = the thinking stays in content" }),
  toolCallParser: knob({ key: 'toolCallParser', flag: '--tool-call-parser <format>', env: 'LORAPLEX_TOOL_CALL_PARSER', kind: 'string', default: 'auto', choices: ['auto', ...TOOL_CALL_FORMATS], doc: 'how the model writes tool calls: hermes (<tool_call> blocks: Hermes, Qwen2.5, Qwen3), llama3_json (Llama 3.1+ JSON), mistral ([TOOL_CALLS]); auto = read from the chat template in use (the adapter\'s or the model\'s), and a request with tools is refused when it shows none' }),
  tokenizerWorkers: knob({ key: 'tokenizerWorkers', flag: '--tokenizer-workers <n>', env: 'LORAPLEX_TOKENIZER_WORKERS', kind: 'int', default: 0, min: 0, doc: 'threads that tokenize prompts and render chat templates (0 = half the cores, at least 1)' }),
  storePollMs: knob({ key: 'storePollMs', flag: '--store-poll-ms <ms>', env: 'LORAPLEX_STORE_POLL_MS', kind: 'int', default: 2000, min: 0, doc: 'how often the adapter store is rescanned for adapters added, replaced or deleted by other replicas (0 = at start only)' }),
  storeGraceMs: knob({ key: 'storeGraceMs', flag: '--store-grace-ms <ms>', env: 'LORAPLEX_STORE_GRACE_MS', kind: 'int', default: 900000, min: 0, doc: "how long an adapter version's files are kept after its name was deleted or replaced (requests on it, on any replica, finish first)" }),
  strictBase: knob({ key: 'strictBase', flag: '--strict-base', env: 'LORAPLEX_STRICT_BASE', kind: 'bool', default: false, doc: "refuse adapters whose base_model_name_or_path names another model" }),
  // ---- HTTP server
  host: knob({ key: 'host', flag: '--host <addr>', env: 'LORAPLEX_HOST', kind: 'string', default: '0.0.0.0', doc: 'address to listen on' }),
  port: knob({ key: 'port', flag: '--port <n>', env: 'LORAPLEX_PORT', kind: 'int', default: 8080, min: 0, doc: 'port to listen on' }),
  servedModelName: knob({ key: 'servedModelName', flag: '--served-model-name <id>', env: 'LORAPLEX_SERVED_MODEL_NAME', kind: 'string', doc: "the base model's id in the API (default: the model directory's name)" }),
  adminToken: knob({ key: 'adminToken', flag: '--admin-token <token>', env: 'LORAPLEX_ADMIN_TOKEN', kind: 'string', doc: 'bearer token for the admin routes; without it they are off' }),
  apiKeys: knob({ key: 'apiKeys', flag: '--api-key <keys>', env: 'LORAPLEX_API_KEY', kind: 'list', doc: 'comma-separated API keys required on the inference routes (none = open)' }),
  metricsKey: knob({ key: 'metricsKey', flag: '--metrics-key <token>', env: 'LORAPLEX_METRICS_KEY', kind: 'string', doc: 'bearer token for GET /metrics (then the API keys do not open it); without it, /metrics takes the API keys, and is open when there are none' }),
  metricsAdapterLabels: knob({ key: 'metricsAdapterLabels', flag: '--metrics-adapter-labels <n>', env: 'LORAPLEX_METRICS_ADAPTER_LABELS', kind: 'int', default: 100, min: 1, doc: 'distinct adapter label values in /metrics (adapter names, merges as their sorted names); requests for further ones are counted under adapter="_other"' }),
  metricsVllmNames: knob({ key: 'metricsVllmNames', flag: '--metrics-vllm-names', env: 'LORAPLEX_METRICS_VLLM_NAMES', kind: 'bool', default: false, doc: "also export the endpoint picker's gauges under vLLM's names (vllm:num_requests_waiting, vllm:num_requests_running, vllm:kv_cache_usage_perc, vllm:lora_requests_info, vllm:cache_config_info), so the Gateway API inference extension's built-in vLLM engine config reads loraplex unchanged" }),
  metricsPort: knob({ key: 'metricsPort', flag: '--metrics-port <n>', env: 'LORAPLEX_METRICS_PORT', kind: 'int', min: 0, doc: 'also serve GET /metrics and GET /health on this port, on --host, without any key (for in-cluster scrapers: the endpoint picker, Prometheus); keep the port reachable only inside the cluster. Unset = off' }),
  loraRoots: knob({ key: 'loraRoots', flag: '--lora-roots <dirs>', env: 'LORAPLEX_LORA_ROOTS', kind: 'list', doc: 'comma-separated directories /v1/load_lora_adapter may read adapters from' }),
  headersTimeoutMs: knob({ key: 'headersTimeoutMs', flag: '--headers-timeout-ms <ms>', env: 'LORAPLEX_HEADERS_TIMEOUT_MS', kind: 'int', default: 10000, min: 1, doc: "time a client has to send a request's headers (beyond it: 408, connection closed)" }),
  keepAliveTimeoutMs: knob({ key: 'keepAliveTimeoutMs', flag: '--keep-alive-timeout-ms <ms>', env: 'LORAPLEX_KEEP_ALIVE_TIMEOUT_MS', kind: 'int', default: 72000, min: 2000, doc: "how long an idle keep-alive connection stays open; clients are told a shorter time (the Keep-Alive header's timeout, 12 s or a sixth less) so they stop reusing it first. Keep it above the idle timeout of any load balancer in front (Google Cloud's HTTP(S) load balancers keep idle backend connections 10 minutes: use more than 600000)" }),
  bodyTimeoutMs: knob({ key: 'bodyTimeoutMs', flag: '--body-timeout-ms <ms>', env: 'LORAPLEX_BODY_TIMEOUT_MS', kind: 'int', default: 30000, min: 1, doc: 'time a client has to send a JSON body; for uploads, the longest pause without progress (beyond it: 408)' }),
  streamStallMs: knob({ key: 'streamStallMs', flag: '--stream-stall-ms <ms>', env: 'LORAPLEX_STREAM_STALL_MS', kind: 'int', default: 30000, min: 1, doc: 'how long a streaming client may leave more than 256 KiB of its stream unread (its socket not draining) before the connection is closed and the request cancelled, freeing its batch rows' }),
  shutdownGraceMs: knob({ key: 'shutdownGraceMs', flag: '--shutdown-grace-ms <ms>', env: 'LORAPLEX_SHUTDOWN_GRACE_MS', kind: 'int', default: 30000, min: 0, doc: 'on SIGTERM, how long running requests may finish (health answers 503 meanwhile) before they are cancelled' }),
  maxUploadBytes: knob({ key: 'maxUploadBytes', flag: '--max-upload-bytes <size>', env: 'LORAPLEX_MAX_UPLOAD_BYTES', kind: 'bytes', default: 1024 ** 3, min: 1, doc: 'largest adapter upload' }),
  logLevel: knob({ key: 'logLevel', flag: '--log-level <level>', env: 'LORAPLEX_LOG_LEVEL', kind: 'string', default: 'info', choices: ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'], doc: 'log level' }),
  logPrompts: knob({ key: 'logPrompts', flag: '--log-prompts', env: 'LORAPLEX_LOG_PROMPTS', kind: 'bool', default: false, doc: 'include prompt and completion text in request logs' }),
} as const;

export type KnobKey = keyof typeof KNOBS;

/** Resolved configuration; optional fields are the knobs without a default. */
export interface Config {
  readonly model?: string;
  readonly quant: WeightFormat;
  readonly activations: 'fp32' | 'fp16';
  readonly lmHeadAccuracy: 'int8' | 'fp32';
  readonly device: Device;
  readonly allowCpuFallback: boolean;
  readonly threads: number;
  readonly ortProfile?: string;
  readonly cacheDir: string;
  readonly maxContext: number;
  readonly kvCacheTokens: number;
  readonly maxLoraRank: number;
  readonly maxActiveAdapters: number;
  readonly adapters?: string;
  readonly adapterCacheBytes: number;
  readonly maxBatchSize: number;
  readonly maxRowsPerRequest: number;
  readonly maxBatchPrefillTokens: number;
  readonly maxStepMs: number;
  readonly maxQueuedRequests: number;
  readonly adapterCycleMs: number;
  readonly prefixCache: boolean;
  readonly prefixCacheScope: 'key' | 'global';
  readonly requestTimeoutMs: number;
  readonly promptTimeoutMs: number;
  readonly tokenizerWorkers: number;
  readonly storePollMs: number;
  readonly storeGraceMs: number;
  readonly strictBase: boolean;
  readonly host: string;
  readonly port: number;
  readonly servedModelName?: string;
  readonly adminToken?: string;
  readonly apiKeys?: string[];
  readonly metricsKey?: string;
  readonly metricsAdapterLabels: number;
  readonly metricsVllmNames: boolean;
  readonly metricsPort?: number;
  readonly loraRoots?: string[];
  readonly headersTimeoutMs: number;
  readonly keepAliveTimeoutMs: number;
  readonly bodyTimeoutMs: number;
  readonly streamStallMs: number;
  readonly shutdownGraceMs: number;
  readonly maxUploadBytes: number;
  readonly logLevel: string;
  readonly logPrompts: boolean;
  readonly toolCallParser: ToolCallFormat | 'auto';
  readonly reasoningParser: ReasoningParser;
  readonly grammarCompileTimeoutMs: number;
  readonly grammarMaskTimeoutMs: number;
  readonly grammarMemoryMb: number;
}

// Every knob is a Config field and every Config field a knob.
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
const _knobsMatchConfig: Same<KnobKey, keyof Config> = true;
void _knobsMatchConfig;

const UNITS: Record<string, number> = { '': 1, b: 1, k: 1e3, kb: 1e3, m: 1e6, mb: 1e6, g: 1e9, gb: 1e9, kib: 1024, mib: 1024 ** 2, gib: 1024 ** 3 };

export function parseBytes(text: string): number | null {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i.exec(text);
  if (!m) return null;
  const unit = UNITS[m[2].toLowerCase()];
  return unit === undefined ? null : Math.round(Number(m[1]) * unit);
}

/** Parses one raw value (from a flag or the environment); returns an error message or the value. */
export function parseKnob(k: Knob, raw: unknown): { value?: unknown; error?: string } {
  if (raw === undefined) return { value: k.default };
  const name = `${k.flag.split(' ')[0]} (${k.env})`;
  switch (k.kind) {
    case 'bool':
      if (typeof raw === 'boolean') return { value: raw };
      if (/^(1|true|yes|on)$/i.test(String(raw))) return { value: true };
      if (/^(0|false|no|off|)$/i.test(String(raw))) return { value: false };
      return { error: `${name} must be true or false, got ${JSON.stringify(raw)}` };
    case 'int': {
      const s = String(raw).trim();
      const n = Number(s);
      if (!/^-?\d+$/.test(s) || !Number.isSafeInteger(n)) return { error: `${name} must be an integer, got ${JSON.stringify(raw)}` };
      if (k.min !== undefined && n < k.min) return { error: `${name} must be >= ${k.min}, got ${n}` };
      return { value: n };
    }
    case 'bytes': {
      const n = typeof raw === 'number' ? raw : parseBytes(String(raw));
      if (n === null) return { error: `${name} must be a size like 512MB or 2GiB, got ${JSON.stringify(raw)}` };
      if (k.min !== undefined && n < k.min) return { error: `${name} must be >= ${k.min} bytes, got ${n}` };
      return { value: n };
    }
    case 'list':
      return { value: (Array.isArray(raw) ? raw.map(String) : String(raw).split(',')).map((s) => s.trim()).filter((s) => s !== '') };
    case 'string': {
      const s = String(raw);
      if (k.choices && !k.choices.includes(s)) return { error: `${name} must be one of ${k.choices.join(', ')}, got ${JSON.stringify(s)}` };
      return { value: s };
    }
  }
}

export class ConfigError extends Error {
  readonly problems: string[];
  constructor(problems: string[]) {
    super(`invalid configuration: ${problems.join('; ')}`);
    this.problems = problems;
  }
}

/**
 * Resolves the knobs `keys` from flag values (already parsed by the CLI, undefined when not given)
 * and the environment, in that order of precedence. Throws ConfigError listing every problem.
 */
export function resolveConfig(
  keys: readonly KnobKey[],
  flags: Partial<Record<KnobKey, unknown>>,
  env: Record<string, string | undefined>,
  required: readonly KnobKey[] = [],
): Partial<Config> {
  const out: Record<string, unknown> = {};
  const problems: string[] = [];
  for (const key of keys) {
    const k = KNOBS[key] as Knob;
    const raw = flags[key] !== undefined ? flags[key] : env[k.env];
    const { value, error } = parseKnob(k, raw === '' && k.kind !== 'bool' ? undefined : raw);
    if (error) problems.push(error);
    else if (value === undefined && required.includes(key)) problems.push(`${k.flag.split(' ')[0]} (or ${k.env}) is required`);
    else out[key] = value;
  }
  if (problems.length > 0) throw new ConfigError(problems);
  return Object.freeze(out) as Partial<Config>;
}

/** What `serve` runs with: every knob resolved, the model given. */
export type ServeConfig = Config & { readonly model: string };

const ALL_KEYS = Object.keys(KNOBS) as KnobKey[];

/**
 * Resolves every knob. Each knob with a default always gets a value and every Config field is a
 * knob (checked above), so the result is a whole Config; `required` names knobs without a default
 * that must be given.
 */
export function resolveAllKnobs(flags: Partial<Record<KnobKey, unknown>>, env: Record<string, string | undefined>, required: readonly KnobKey[] = []): Config {
  return resolveConfig(ALL_KEYS, flags, env, required) as Config;
}

/** The configuration with its model given, or a ConfigError saying it is missing. */
export function serveConfig(c: Config): ServeConfig {
  if (c.model === undefined) throw new ConfigError([`${KNOBS.model.flag.split(' ')[0]} (or ${KNOBS.model.env}) is required`]);
  return { ...c, model: c.model };
}
