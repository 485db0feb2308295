/**
 * What every model family's spec shares (config.json parsed by the model's family: arch/families.ts
 * holds the table and the full, per-family spec), and the projections' shapes and module paths.
 * Nothing here knows a family: the fields a family alone has live in its module (arch/*.ts).
 */
import type { RopeScaling } from '../arch/rope.js';

export interface ModelSpec {
  /** config.json `architectures[0]`, one that a family serves (arch/families.ts). */
  architecture: string;
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  /** Dimensions of each head that RoPE rotates (the first ones; Phi-4-mini's partial_rotary_factor). */
  rotaryDim: number;
  intermediateSize: number;
  vocabSize: number;
  ropeTheta: number;
  /** The scalings a family accepts are its own (its spec narrows this). */
  ropeScaling: RopeScaling | null;
  rmsNormEps: number;
  tieWordEmbeddings: boolean;
  maxPositionEmbeddings: number;
  /** Sliding-window attention: a query sees itself and the `slidingWindow - 1` keys before it, on the layers marked in `slidingLayers`. */
  slidingWindow: number | null;
  slidingLayers: boolean[];
  bosTokenId: number | null;
  eosTokenIds: number[];
}

/** The per-layer linear projections, in Hugging Face naming (also PEFT's `target_modules`). */
export const PROJECTIONS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] as const;
export type Projection = (typeof PROJECTIONS)[number];

/**
 * Fused modules (Phi-3's checkpoints): PEFT adapters may target them. A fused module's LoRA is its
 * parts' LoRAs with the same A and B split by rows — exactly — so it is served as those.
 */
export const FUSED_PROJECTIONS = {
  qkv_proj: { path: 'self_attn.qkv_proj', parts: ['q_proj', 'k_proj', 'v_proj'] },
  gate_up_proj: { path: 'mlp.gate_up_proj', parts: ['gate_proj', 'up_proj'] },
} as const satisfies Record<string, { path: string; parts: readonly Projection[] }>;
export type FusedProjection = keyof typeof FUSED_PROJECTIONS;

/** [in, out] features of a projection. */
export function projectionShape(spec: ModelSpec, p: Projection): [number, number] {
  const q = spec.numHeads * spec.headDim;
  const kv = spec.numKvHeads * spec.headDim;
  switch (p) {
    case 'q_proj':
      return [spec.hiddenSize, q];
    case 'k_proj':
    case 'v_proj':
      return [spec.hiddenSize, kv];
    case 'o_proj':
      return [q, spec.hiddenSize];
    case 'gate_proj':
    case 'up_proj':
      return [spec.hiddenSize, spec.intermediateSize];
    case 'down_proj':
      return [spec.intermediateSize, spec.hiddenSize];
  }
}

/** The module path of a projection inside a layer (`self_attn.q_proj`, `mlp.up_proj`). */
export function projectionPath(p: Projection): string {
  return p === 'gate_proj' || p === 'up_proj' || p === 'down_proj' ? `mlp.${p}` : `self_attn.${p}`;
}

/** A token id field of config.json / generation_config.json: a number or a list of numbers. */
export function tokenIds(v: unknown): number[] {
  if (typeof v === 'number') return [v];
  if (Array.isArray(v)) return v.filter((x): x is number => typeof x === 'number');
  return [];
}

/** Layer l's sliding window, or null when it attends over the whole context. */
export function attentionWindow(spec: ModelSpec, l: number): number | null {
  return spec.slidingWindow !== null && spec.slidingLayers[l] ? spec.slidingWindow : null;
}
