/**
 * PEFT LoRA adapters: adapter_config.json + adapter_model.safetensors → LoraWeights for the slots.
 * Honoured: r, lora_alpha, use_rslora (scale α/√r), target_modules (list, "all-linear" or a regex),
 * rank_pattern, alpha_pattern, bias "none", use_dora (DoRA: lora_magnitude_vector per module, see
 * dora.ts). Refused with an error naming the field: modules_to_save, other bias modes, pickle
 * weights, unknown targets, shapes that do not match the base model, ranks above the configured
 * maximum.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { AdapterInvalidError, CheckpointError } from '../errors.js';
import { ChatTemplate } from '../runtime/chat-template.js';
import { SafetensorsFile } from '../runtime/checkpoint/safetensors.js';
import { FUSED_PROJECTIONS, PROJECTIONS, projectionPath, projectionShape, type FusedProjection, type ModelSpec, type Projection } from '../runtime/checkpoint/spec.js';
import type { ProjectionWeights } from '../runtime/checkpoint/projection-weights.js';
import type { RowNorms } from '../runtime/row-norms.js';
import { checkFactorValues, factorKey, type LoraFactor, type LoraWeights, type SlotDtype } from '../runtime/lora-stacks.js';
import { checkMagnitudes, doraScale, withDoraScale } from './dora.js';

export const ADAPTER_CONFIG = 'adapter_config.json';
export const ADAPTER_WEIGHTS = 'adapter_model.safetensors';
/** An adapter's safetensors header is kilobytes (a 128-layer model, all targets: ~300 KB). */
export const MAX_ADAPTER_HEADER_BYTES = 8 * 1024 * 1024;
/**
 * The largest effective LoRA scale accepted (lora_alpha / r, or / √r with rsLoRA). Real adapters
 * use 0.25–32; far larger scales only overflow the activations.
 */
export const MAX_LORA_SCALE = 10_000;

export interface PeftConfig {
  r: number;
  loraAlpha: number;
  useRslora: boolean;
  /** DoRA: every module also has a magnitude vector (lora_magnitude_vector). */
  useDora: boolean;
  /** Module names or a regex over full module names (PEFT's string form). */
  targetModules: readonly string[] | RegExp;
  rankPattern: Readonly<Record<string, number>>;
  alphaPattern: Readonly<Record<string, number>>;
  baseModelNameOrPath: string | null;
}

function fail(message: string, param: string): never {
  throw new AdapterInvalidError(`${ADAPTER_CONFIG}: ${message}`, param);
}

function numberMap(v: unknown, field: string): Record<string, number> {
  if (v == null) return {};
  if (typeof v !== 'object' || Array.isArray(v)) fail(`${field} must be an object of pattern → number`, field);
  for (const [k, x] of Object.entries(v as Record<string, unknown>)) {
    if (typeof x !== 'number' || !(x > 0)) fail(`${field}[${JSON.stringify(k)}] must be a positive number, got ${JSON.stringify(x)}`, field);
  }
  return v as Record<string, number>;
}

export function parsePeftConfig(json: unknown): PeftConfig {
  if (json === null || typeof json !== 'object' || Array.isArray(json)) fail('must be a JSON object', 'adapter_config');
  const c = json as Record<string, unknown>;
  const peftType = c.peft_type ?? 'LORA';
  if (peftType !== 'LORA') fail(`peft_type ${JSON.stringify(peftType)} is not supported (only LORA)`, 'peft_type');
  if (c.use_dora != null && typeof c.use_dora !== 'boolean') fail(`use_dora must be true or false, got ${JSON.stringify(c.use_dora)}`, 'use_dora');
  if (Array.isArray(c.modules_to_save) ? c.modules_to_save.length > 0 : c.modules_to_save != null) {
    fail(`modules_to_save ${JSON.stringify(c.modules_to_save)} is not supported (full modules cannot be swapped per request)`, 'modules_to_save');
  }
  if ((c.bias ?? 'none') !== 'none') fail(`bias ${JSON.stringify(c.bias)} is not supported (only "none")`, 'bias');
  if (c.fan_in_fan_out === true) fail('fan_in_fan_out=true is not supported (Conv1D-style models)', 'fan_in_fan_out');
  if (typeof c.r !== 'number' || !Number.isInteger(c.r) || c.r < 1) fail(`r must be a positive integer, got ${JSON.stringify(c.r)}`, 'r');
  const alpha = c.lora_alpha ?? c.r;
  if (typeof alpha !== 'number' || !(alpha > 0)) fail(`lora_alpha must be a positive number, got ${JSON.stringify(c.lora_alpha)}`, 'lora_alpha');

  let targetModules: readonly string[] | RegExp;
  const t = c.target_modules;
  if (t === 'all-linear') {
    targetModules = PROJECTIONS;
  } else if (typeof t === 'string') {
    try {
      targetModules = new RegExp(`^(?:${t})$`);
    } catch {
      fail(`target_modules regex ${JSON.stringify(t)} is invalid`, 'target_modules');
    }
  } else if (Array.isArray(t) && t.length > 0 && t.every((x) => typeof x === 'string')) {
    // PEFT matches a list entry against the end of the module name ("q_proj", "self_attn.q_proj").
    const known = [...PROJECTIONS, ...Object.keys(FUSED_PROJECTIONS)];
    const unknown = (t as string[]).filter((x) => !known.includes(x.split('.').pop()!));
    if (unknown.length > 0) {
      fail(`target_modules ${JSON.stringify(unknown)} are not supported; supported: ${known.join(', ')}`, 'target_modules');
    }
    targetModules = t as string[];
  } else {
    fail(`target_modules must be a non-empty list of module names or a regex string, got ${JSON.stringify(t)}`, 'target_modules');
  }
  return {
    r: c.r,
    loraAlpha: alpha,
    useRslora: c.use_rslora === true,
    useDora: c.use_dora === true,
    targetModules,
    rankPattern: numberMap(c.rank_pattern, 'rank_pattern'),
    alphaPattern: numberMap(c.alpha_pattern, 'alpha_pattern'),
    baseModelNameOrPath: typeof c.base_model_name_or_path === 'string' ? c.base_model_name_or_path : null,
  };
}

/** PEFT's pattern rule: the key must match the end of the full module name at a dot boundary. */
function patternValue(pattern: Readonly<Record<string, number>>, moduleName: string): number | undefined {
  for (const [key, value] of Object.entries(pattern)) {
    if (new RegExp(`^(?:.*\\.)?(?:${key})$`).test(moduleName)) return value;
  }
  return undefined;
}

/** `base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight` (optionally `.lora_A.default.weight`). */
const KEY = /^(?:base_model\.model\.)?model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.[\w-]+)?\.weight$/;
/** DoRA's magnitude: `...q_proj.lora_magnitude_vector` (PEFT's saved form), or with `.default` / `.weight` after it. */
const MAGNITUDE_KEY = /^(?:base_model\.model\.)?model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_magnitude_vector(?:\.(?!weight$)[\w-]+)?(?:\.weight)?$/;

export interface LoadOptions {
  maxRank: number;
  /**
   * With --strict-base: the served model's name. An adapter whose base_model_name_or_path names a
   * different model (compared by last path component, case-insensitively) is refused.
   */
  strictBase?: string | null;
  /** The slots' element type: loaded factors must be finite once stored in it (default float32). */
  slotDtype?: SlotDtype;
  /** The base model's weights and a row-norm kernel, which DoRA adapters need at load (absent: DoRA adapters fail to load). */
  base?: DoraBase | null;
}

export interface DoraBase {
  weights: ProjectionWeights;
  norms: RowNorms;
}

/** What an adapter is, known from its config and tensor headers alone (no weights read). */
export interface PeftInfo {
  config: PeftConfig;
  /** The projections that carry LoRA factors. */
  targets: Projection[];
  /** Largest rank of any factor. */
  maxRank: number;
  /** Bytes the factors take in memory (float32). */
  bytes: number;
}

export interface PeftAdapter extends PeftInfo {
  weights: LoraWeights;
}

interface FactorPlan {
  key: string;
  layer: number;
  projection: Projection;
  rank: number;
  scale: number;
  din: number;
  dout: number;
  a: string;
  b: string;
  /** A fused module's part: these rows of its lora_B (and of its magnitude). */
  bRows?: [number, number];
  /** DoRA: the module's lora_magnitude_vector. */
  m?: string;
}

export function readPeftConfig(dir: string): PeftConfig {
  const path = join(dir, ADAPTER_CONFIG);
  if (!existsSync(path)) throw new AdapterInvalidError(`adapter has no ${ADAPTER_CONFIG}`, 'adapter_config');
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new AdapterInvalidError(`${ADAPTER_CONFIG} is not valid JSON (${(err as Error).message})`, 'adapter_config');
  }
  return parsePeftConfig(json);
}

function openWeights(dir: string): SafetensorsFile {
  const weightsPath = join(dir, ADAPTER_WEIGHTS);
  if (!existsSync(weightsPath)) {
    const pickle = existsSync(join(dir, 'adapter_model.bin'));
    throw new AdapterInvalidError(
      pickle
        ? 'adapter_model.bin (a pickle) is not loaded for safety; save the adapter with safe_serialization=True (adapter_model.safetensors)'
        : `adapter has no ${ADAPTER_WEIGHTS}`,
      'adapter_model',
    );
  }
  try {
    return SafetensorsFile.open(weightsPath, { maxHeaderBytes: MAX_ADAPTER_HEADER_BYTES });
  } catch (err) {
    throw new AdapterInvalidError(err instanceof CheckpointError ? err.message : String(err), 'adapter_model');
  }
}

function lastComponent(path: string): string {
  return path.replace(/[\\/]+$/, '').split(/[\\/]/).pop()!.toLowerCase();
}

/** Validates an adapter directory against the base model from its config and tensor headers. */
export function inspectPeftAdapter(dir: string, spec: ModelSpec, opts: LoadOptions): PeftInfo {
  const config = readPeftConfig(dir);
  const file = openWeights(dir);
  try {
    return summarize(config, planFactors(file, config, spec, opts), opts);
  } finally {
    file.close();
  }
}

/**
 * Validates an adapter completely, as an upload must be before it becomes visible: config and
 * headers against the base model, then every factor read once (one at a time, so memory stays
 * small) and checked finite in the slot dtype with its scale applied.
 */
export function validatePeftAdapter(dir: string, spec: ModelSpec, opts: LoadOptions): PeftInfo {
  const config = readPeftConfig(dir);
  const file = openWeights(dir);
  try {
    const plan = planFactors(file, config, spec, opts);
    for (const f of plan) {
      checkFactorValues(readTensor(file, f.a), opts.slotDtype ?? 'float32', `${ADAPTER_WEIGHTS}: ${f.a}`);
      const b = readB(file, f);
      for (let i = 0; i < b.length; i++) b[i] *= f.scale;
      checkFactorValues(b, opts.slotDtype ?? 'float32', `${ADAPTER_WEIGHTS}: ${f.b} (times the scale ${f.scale})`);
      if (f.m) checkMagnitudes(readMagnitude(file, f), `${ADAPTER_WEIGHTS}: ${f.m}`);
    }
    return summarize(config, plan, opts);
  } finally {
    file.close();
  }
}

/** A factor's lora_B: its rows of a fused module's, or the whole tensor. */
function readB(file: SafetensorsFile, f: FactorPlan): Float32Array {
  const b = readTensor(file, f.b);
  return f.bRows ? b.slice(f.bRows[0] * f.rank, f.bRows[1] * f.rank) : b;
}

/** A factor's DoRA magnitude: its rows of a fused module's, or the whole vector. */
function readMagnitude(file: SafetensorsFile, f: FactorPlan): Float32Array {
  const m = readTensor(file, f.m!);
  return f.bRows ? m.slice(f.bRows[0], f.bRows[1]) : m;
}

function readTensor(file: SafetensorsFile, name: string): Float32Array {
  try {
    return file.readFloat32(name);
  } catch (err) {
    throw new AdapterInvalidError((err as Error).message, 'adapter_model');
  }
}

/**
 * Reads and validates a PEFT adapter directory against the base model spec. A DoRA adapter's
 * scales are computed from `opts.base` (layer by layer, so each base layer is read once).
 */
export async function loadPeftAdapter(dir: string, spec: ModelSpec, opts: LoadOptions): Promise<PeftAdapter> {
  const config = readPeftConfig(dir);
  const file = openWeights(dir);
  const dtype = opts.slotDtype ?? 'float32';
  try {
    const plan = planFactors(file, config, spec, opts);
    const info = summarize(config, plan, opts);
    if (config.useDora && !opts.base) throw new Error('a DoRA adapter needs the base model weights to load');
    const factors = new Map<string, LoraFactor>();
    for (const f of config.useDora ? [...plan].sort((x, y) => x.layer - y.layer) : plan) {
      const rawA = readTensor(file, f.a);
      const rawB = readB(file, f);
      const a = transpose(rawA, f.rank, f.din, 1);
      const b = transpose(rawB, f.dout, f.rank, f.scale);
      checkFactorValues(a, dtype, `${ADAPTER_WEIGHTS}: ${f.a}`);
      checkFactorValues(b, dtype, `${ADAPTER_WEIGHTS}: ${f.b} (times the scale ${f.scale})`);
      let factor: LoraFactor = { rank: f.rank, a, b, scale: f.scale };
      if (f.m) {
        const what = `${ADAPTER_WEIGHTS}: ${f.m}`;
        const m = readMagnitude(file, f);
        checkMagnitudes(m, what);
        const w = opts.base!.weights.weight(f.layer, f.projection);
        const norms = await opts.base!.norms.of(w, rawB.map((x) => x * f.scale), rawA, f.dout, f.din, f.rank);
        factor = withDoraScale(factor, doraScale(norms, m, what));
        checkFactorValues(factor.b, dtype, `${ADAPTER_WEIGHTS}: ${f.b} (times the scale ${f.scale} and the DoRA scale)`);
      }
      factors.set(f.key, factor);
    }
    return { ...info, weights: { factors, maxRank: info.maxRank, bytes: info.bytes } };
  } finally {
    file.close();
  }
}

function summarize(config: PeftConfig, plan: FactorPlan[], opts: LoadOptions): PeftInfo {
  if (opts.strictBase && config.baseModelNameOrPath && lastComponent(config.baseModelNameOrPath) !== lastComponent(opts.strictBase)) {
    throw new AdapterInvalidError(
      `base_model_name_or_path ${JSON.stringify(config.baseModelNameOrPath)} does not match the served model ${JSON.stringify(opts.strictBase)} (--strict-base)`,
      'base_model_name_or_path',
    );
  }
  const targets = new Set(plan.map((f) => f.projection));
  return {
    config,
    targets: PROJECTIONS.filter((p) => targets.has(p)),
    maxRank: Math.max(...plan.map((f) => f.rank)),
    bytes: plan.reduce((n, f) => n + 4 * f.rank * (f.din + f.dout) + (f.m ? 4 * f.dout : 0), 0),
  };
}

function planFactors(file: SafetensorsFile, config: PeftConfig, spec: ModelSpec, opts: LoadOptions): FactorPlan[] {
  const pairs = new Map<string, { layer: number; module: Projection | FusedProjection; a?: string; b?: string; m?: string }>();
  for (const name of file.tensors.keys()) {
    const magnitude = MAGNITUDE_KEY.exec(name);
    const m = KEY.exec(name) ?? magnitude;
    const module = m?.[3] as Projection | FusedProjection | undefined;
    if (!m || !module || modulePath(module) !== `${m[2]}.${m[3]}`) {
      throw new AdapterInvalidError(`${ADAPTER_WEIGHTS}: tensor ${name} is not a LoRA factor of a supported projection`, 'adapter_model');
    }
    const layer = Number(m[1]);
    if (layer >= spec.numLayers) {
      throw new AdapterInvalidError(`${ADAPTER_WEIGHTS}: tensor ${name} is for layer ${layer} but the base model has ${spec.numLayers} layers`, 'adapter_model');
    }
    const key = `${layer}.${module}`;
    const entry = pairs.get(key) ?? { layer, module };
    if (magnitude) {
      if (!config.useDora) throw new AdapterInvalidError(`${ADAPTER_WEIGHTS}: tensor ${name} is a DoRA magnitude but the adapter does not set use_dora`, 'use_dora');
      entry.m = name;
    } else if (m[4] === 'A') entry.a = name;
    else entry.b = name;
    pairs.set(key, entry);
  }
  if (pairs.size === 0) throw new AdapterInvalidError(`${ADAPTER_WEIGHTS} holds no LoRA factors`, 'adapter_model');

  const plan: FactorPlan[] = [];
  for (const e of pairs.values()) {
    const moduleName = `model.layers.${e.layer}.${modulePath(e.module)}`;
    if (!e.a && !e.b) throw new AdapterInvalidError(`${ADAPTER_WEIGHTS}: ${moduleName} has a lora_magnitude_vector but no LoRA factors`, 'adapter_model');
    if (!e.a || !e.b) throw new AdapterInvalidError(`${ADAPTER_WEIGHTS}: ${moduleName} has lora_${e.a ? 'A' : 'B'} but no lora_${e.a ? 'B' : 'A'}`, 'adapter_model');
    if (!targeted(config.targetModules, moduleName)) {
      throw new AdapterInvalidError(`${ADAPTER_WEIGHTS}: ${moduleName} has LoRA factors but is not in target_modules`, 'target_modules');
    }
    const rank = patternValue(config.rankPattern, moduleName) ?? config.r;
    const alpha = patternValue(config.alphaPattern, moduleName) ?? config.loraAlpha;
    if (rank > opts.maxRank) {
      throw new AdapterInvalidError(`rank ${rank} of ${moduleName} is above the maximum LoRA rank ${opts.maxRank}`, rank !== config.r ? 'rank_pattern' : 'r');
    }
    // A fused module (qkv_proj, gate_up_proj) is its parts, each with the same A and its rows of B.
    const parts: readonly Projection[] = e.module in FUSED_PROJECTIONS ? FUSED_PROJECTIONS[e.module as FusedProjection].parts : [e.module as Projection];
    const din = projectionShape(spec, parts[0])[0];
    const dout = parts.reduce((n, p) => n + projectionShape(spec, p)[1], 0);
    const want = (what: string, got: number[], shape: number[]): void => {
      if (got.length !== 2 || got[0] !== shape[0] || got[1] !== shape[1]) {
        throw new AdapterInvalidError(
          `${ADAPTER_WEIGHTS}: ${what} has shape ${JSON.stringify(got)}, expected ${JSON.stringify(shape)} (rank ${rank}, base model ${din}→${dout})`,
          'adapter_model',
        );
      }
    };
    want(e.a, file.tensors.get(e.a)!.shape, [rank, din]);
    want(e.b, file.tensors.get(e.b)!.shape, [dout, rank]);
    if (config.useDora) {
      if (!e.m) throw new AdapterInvalidError(`${ADAPTER_WEIGHTS}: ${moduleName} has no lora_magnitude_vector, which use_dora requires for every module`, 'adapter_model');
      const got = file.tensors.get(e.m)!.shape;
      if (got.length !== 1 || got[0] !== dout) {
        throw new AdapterInvalidError(`${ADAPTER_WEIGHTS}: ${e.m} has shape ${JSON.stringify(got)}, expected [${dout}] (one magnitude per output of ${moduleName})`, 'adapter_model');
      }
    }
    const scale = config.useRslora ? alpha / Math.sqrt(rank) : alpha / rank;
    if (!(scale <= MAX_LORA_SCALE)) {
      const how = config.useRslora ? 'lora_alpha / √r' : 'lora_alpha / r';
      throw new AdapterInvalidError(`${ADAPTER_CONFIG}: the LoRA scale of ${moduleName} (${how} = ${alpha} / ${config.useRslora ? `√${rank}` : rank}) is ${scale}, above the limit of ${MAX_LORA_SCALE}`, alpha !== config.loraAlpha ? 'alpha_pattern' : 'lora_alpha');
    }
    let row = 0;
    for (const p of parts) {
      const key = factorKey(e.layer, p);
      if (plan.some((f) => f.key === key)) throw new AdapterInvalidError(`${ADAPTER_WEIGHTS}: layer ${e.layer}'s ${p} has LoRA factors twice (its own and its fused module's)`, 'adapter_model');
      const out = projectionShape(spec, p)[1];
      plan.push({ key, layer: e.layer, projection: p, rank, scale, din, dout: out, a: e.a, b: e.b, ...(e.m ? { m: e.m } : {}), ...(parts.length > 1 ? { bRows: [row, row + out] as [number, number] } : {}) });
      row += out;
    }
  }
  return plan;
}

/** A module's path inside a layer, for a projection or a fused module (undefined: neither). */
function modulePath(m: string): string | undefined {
  if (m in FUSED_PROJECTIONS) return FUSED_PROJECTIONS[m as FusedProjection].path;
  return (PROJECTIONS as readonly string[]).includes(m) ? projectionPath(m as Projection) : undefined;
}

function targeted(t: readonly string[] | RegExp, moduleName: string): boolean {
  if (t instanceof RegExp) return t.test(moduleName);
  return t.some((entry) => moduleName === entry || moduleName.endsWith(`.${entry}`));
}

/** [rows, cols] → [cols, rows], times `scale`. */
function transpose(m: Float32Array, rows: number, cols: number, scale: number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) out[j * rows + i] = m[i * cols + j] * scale;
  return out;
}

/**
 * The chat template a request is rendered with: the adapter's own (tokenizer_config.json in its
 * directory) when it has one, else the base model's (LoRAX behaviour). `read` may cache.
 */
export function chatTemplateFor(base: { chatTemplate: ChatTemplate | null } | null, adapterDir: string | null, read: (dir: string) => ChatTemplate | null = readAdapterChatTemplate): ChatTemplate | null {
  return (adapterDir ? read(adapterDir) : null) ?? base?.chatTemplate ?? null;
}

/** An adapter directory's own chat template (tokenizer_config.json), which wins over the base model's. */
export function readAdapterChatTemplate(dir: string): ChatTemplate | null {
  const path = join(dir, 'tokenizer_config.json');
  if (!existsSync(path)) return null;
  let cfg: unknown;
  try {
    cfg = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new AdapterInvalidError(`tokenizer_config.json is not valid JSON (${(err as Error).message})`, 'tokenizer_config');
  }
  if (cfg === null || typeof cfg !== 'object' || Array.isArray(cfg)) throw new AdapterInvalidError('tokenizer_config.json must be a JSON object', 'tokenizer_config');
  try {
    return ChatTemplate.fromTokenizerConfig(cfg as Record<string, unknown>, 'tokenizer_config.json');
  } catch (err) {
    throw new AdapterInvalidError((err as Error).message, 'tokenizer_config');
  }
}
