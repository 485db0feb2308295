/**
 * Which adapter weights to load: one adapter version on disk, or a weighted linear combination of
 * several. The key names the weights (the host cache, the slots and the scheduler's queues key on
 * it): the same key always means the same weights.
 */
import type { MergeMethod, SignMethod } from './task-arithmetic.js';

/** One adapter version on disk. */
export interface AdapterSource {
  /** Cache/slot key of this version. */
  key: string;
  name: string;
  dir: string;
  /** The directory may change (it is not an immutable uploaded version): check its digest when loading. */
  verify?: boolean;
}

/** How a combination is made: absent, a linear sum; else a task-arithmetic merge (task-arithmetic.ts). */
export interface MergeMethodSpec {
  method: MergeMethod;
  density: number;
  signMethod: SignMethod;
}

export type AdapterSpec =
  | ({ kind: 'single' } & AdapterSource)
  | { kind: 'merge'; key: string; name: string; parts: (AdapterSource & { weight: number })[]; method?: MergeMethodSpec };

/**
 * Combination keys are stable for the same recipe, whatever the order of the parts; the method,
 * density and sign rule are part of the recipe (DARE's drops are seeded by the whole key).
 */
export function mergeKey(parts: readonly { key: string; weight: number }[], method?: MergeMethodSpec): string {
  const how = method ? `${method.method},${method.density},${method.signMethod};` : '';
  return `merge(${how}${[...parts].sort((a, b) => a.key.localeCompare(b.key)).map((p) => `${p.key}*${p.weight}`).join('+')})`;
}
