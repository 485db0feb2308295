/**
 * Which adapter weights to load: one adapter version on disk, or a weighted linear combination of
 * several. The key names the weights (the host cache, the slots and the scheduler's queues key on
 * it): the same key always means the same weights.
 */

/** One adapter version on disk. */
export interface AdapterSource {
  /** Cache/slot key of this version. */
  key: string;
  name: string;
  dir: string;
  /** The directory may change (it is not an immutable uploaded version): check its digest when loading. */
  verify?: boolean;
}

export type AdapterSpec =
  | ({ kind: 'single' } & AdapterSource)
  | { kind: 'merge'; key: string; name: string; parts: (AdapterSource & { weight: number })[] };

/** Combination keys are stable for the same recipe, whatever the order of the parts. */
export function mergeKey(parts: readonly { key: string; weight: number }[]): string {
  return `merge(${[...parts].sort((a, b) => a.key.localeCompare(b.key)).map((p) => `${p.key}*${p.weight}`).join('+')})`;
}
