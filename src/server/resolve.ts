/**
 * Which adapter a request asks for: `model` (the base model's id = no adapter; an adapter name =
 * that adapter; this server's URL = no adapter), LoRAX's `adapter_id`, or a weighted
 * `merged_adapters` combination. Unknown names
 * are a 404, never a silent fallback to the base model.
 */
import { adapterKey, type AdapterRecord, type AdapterRegistry } from '../adapters/registry.js';
import { ModelNotFoundError, UnsupportedError, ValidationError } from '../errors.js';
import { mergeKey, type AdapterSource, type AdapterSpec, type MergeMethodSpec } from '../adapters/spec.js';
import { MERGE_METHODS, type MergeMethod } from '../adapters/task-arithmetic.js';
import type { Static } from 'typebox';
import type { MergedAdapters } from './schemas.js';

/** Directories that can change under us (not uploaded versions) are checked against their digest when loaded. */
function source(r: AdapterRecord): AdapterSource {
  return { key: adapterKey(r), name: r.name, dir: r.dir, verify: r.source !== 'upload' };
}

/**
 * LoRAX's merge_strategy: "linear" (the default: Σ wᵢ·ΔWᵢ, exactly), or a task-arithmetic merge
 * (ties, dare_linear, dare_ties, magnitude_prune) with its `density` (required, in (0, 1]) and,
 * for the TIES sign election, `majority_sign_method` ("total", the default, or "frequency").
 * Task-arithmetic merges take square roots of the weights, so these must not be negative.
 */
function mergeMethod(merged: Static<typeof MergedAdapters>): MergeMethodSpec | undefined {
  const strategy = merged.merge_strategy ?? 'linear';
  if (strategy === 'linear') {
    if (merged.density != null) throw new ValidationError('merged_adapters.density applies to ties / dare / magnitude_prune merges, not linear ones', 'merged_adapters.density');
    if (merged.majority_sign_method != null) throw new ValidationError('merged_adapters.majority_sign_method applies to ties merges, not linear ones', 'merged_adapters.majority_sign_method');
    return undefined;
  }
  if (!(MERGE_METHODS as readonly string[]).includes(strategy)) {
    throw new UnsupportedError(`merged_adapters.merge_strategy ${JSON.stringify(strategy)} is not supported; one of "linear", ${MERGE_METHODS.map((m) => `"${m}"`).join(', ')}`, 'merged_adapters.merge_strategy');
  }
  const density = merged.density;
  if (density == null) throw new ValidationError(`merged_adapters.density is required with merge_strategy "${strategy}" (the fraction of each adapter's weights kept, in (0, 1])`, 'merged_adapters.density');
  if (!(density > 0 && density <= 1)) throw new ValidationError(`merged_adapters.density must be in (0, 1]; given ${density}`, 'merged_adapters.density');
  const sign = merged.majority_sign_method ?? 'total';
  if (sign !== 'total' && sign !== 'frequency') throw new ValidationError(`merged_adapters.majority_sign_method must be "total" or "frequency", not ${JSON.stringify(sign)}`, 'merged_adapters.majority_sign_method');
  if (merged.majority_sign_method != null && (strategy === 'dare_linear' || strategy === 'magnitude_prune')) {
    throw new ValidationError(`merged_adapters.majority_sign_method applies to ties and dare_ties merges, not ${strategy}`, 'merged_adapters.majority_sign_method');
  }
  const negative = merged.weights.findIndex((w) => w < 0);
  if (negative >= 0) throw new ValidationError(`merged_adapters.weights[${negative}] is ${merged.weights[negative]}: ${strategy} merges need weights >= 0`, 'merged_adapters.weights');
  return { method: strategy as MergeMethod, density, signMethod: sign };
}

/** Largest |weight| of an adapter in a merged combination (real recipes use 0..2). */
export const MAX_MERGE_WEIGHT = 100;

export interface Resolved {
  spec: AdapterSpec | null;
  /** Names of the adapters used. */
  names: string[];
  /** Their versions (in-flight tracking). */
  digests: string[];
  /** The id to echo back in responses. */
  model: string;
  /** The adapter label of metrics and logs: 'base', a name, or a merge's names sorted and joined by '+'. */
  label: string;
}

export function resolveAdapter(
  registry: AdapterRegistry,
  baseId: string,
  req: { model?: string | null; adapter_id?: string | null; merged_adapters?: Static<typeof MergedAdapters> | null; lora_scale?: number | null },
): Resolved {
  const merged = req.merged_adapters;
  const scale = req.lora_scale ?? null;
  if (scale !== null && merged) throw new ValidationError('lora_scale scales one adapter; with merged_adapters, give each adapter its weight there', 'lora_scale');
  if (scale !== null && !(Math.abs(scale) <= MAX_MERGE_WEIGHT)) throw new ValidationError(`lora_scale must be a number between -${MAX_MERGE_WEIGHT} and ${MAX_MERGE_WEIGHT}; given ${scale}`, 'lora_scale');
  if (merged) {
    const method = mergeMethod(merged);
    if (merged.ids.length !== merged.weights.length) {
      throw new ValidationError(`merged_adapters has ${merged.ids.length} ids but ${merged.weights.length} weights`, 'merged_adapters.weights');
    }
    const parts = merged.ids.map((id, i) => {
      const r = registry.get(id);
      if (!r) throw new ModelNotFoundError(`adapter ${JSON.stringify(id)} in merged_adapters does not exist`, 'merged_adapters.ids');
      // A DoRA module normalizes its weight by rows: a weighted sum of DoRA modules is not one.
      if (r.info.config.useDora) throw new UnsupportedError(`adapter ${r.name} is a DoRA adapter; merged_adapters combines LoRA adapters only`, 'merged_adapters.ids');
      const w = merged.weights[i];
      if (!(Math.abs(w) <= MAX_MERGE_WEIGHT)) throw new ValidationError(`merged_adapters.weights[${i}] must be a number between -${MAX_MERGE_WEIGHT} and ${MAX_MERGE_WEIGHT}; given ${w}`, 'merged_adapters.weights');
      return { ...source(r), weight: merged.weights[i] };
    });
    if (new Set(merged.ids).size !== merged.ids.length) throw new ValidationError('merged_adapters.ids lists an adapter twice', 'merged_adapters.ids');
    // Σ wᵢ·ΔWᵢ does not depend on the order of the parts: one order (the key's) for the weights
    // computed, and one name and one metrics label for every ordering of the same recipe.
    parts.sort((a, b) => a.key.localeCompare(b.key));
    const names = [...merged.ids].sort();
    const name = (method ? `${method.method}(` : '') + [...parts].sort((a, b) => (a.name < b.name ? -1 : 1)).map((p) => `${p.name}*${p.weight}`).join('+') + (method ? ')' : '');
    return { spec: { kind: 'merge', key: mergeKey(parts, method), name, parts, ...(method ? { method } : {}) }, names, digests: parts.map((p) => p.key), model: req.model ?? baseId, label: names.join('+') };
  }
  // A model given as a URL is this server's own address (TGI clients, e.g. @huggingface/inference,
  // send their endpoint URL as the model): it means the base model, or `adapter_id` if given. No
  // adapter name can look like a URL, so this never stands in for a name.
  const model = req.model && /^https?:\/\//.test(req.model) ? baseId : req.model;
  // SGLang's `base:adapter` names the adapter (no adapter name holds a ':').
  const wanted = req.adapter_id || (model?.startsWith(`${baseId}:`) ? model.slice(baseId.length + 1) : model);
  const param = req.adapter_id ? 'adapter_id' : 'model';
  if (!wanted) throw new ValidationError('model is required', 'model');
  if (wanted === baseId) {
    if (scale !== null) throw new ValidationError('lora_scale scales an adapter, and this request asks for the base model', 'lora_scale');
    return { spec: null, names: [], digests: [], model: baseId, label: 'base' };
  }
  const r = registry.get(wanted);
  if (!r) throw new ModelNotFoundError(`The model \`${wanted}\` does not exist. Known: the base model \`${baseId}\` and ${registry.size} adapter(s); see GET /v1/models.`, param);
  const echo = model && model !== baseId && !req.adapter_id ? model : wanted;
  if (scale !== null && scale !== 1 && r.info.config.useDora) throw new UnsupportedError(`lora_scale scales LoRA adapters; ${r.name} is a DoRA adapter`, 'lora_scale');
  if (scale === null || scale === 1) return { spec: { kind: 'single', ...source(r) }, names: [r.name], digests: [r.digest], model: echo, label: r.name };
  // A scaled adapter is a one-part weighted combination: its own weights, its own prefix-cache identity.
  const parts = [{ ...source(r), weight: scale }];
  return { spec: { kind: 'merge', key: mergeKey(parts), name: `${r.name}*${scale}`, parts }, names: [r.name], digests: [r.digest], model: echo, label: r.name };
}
