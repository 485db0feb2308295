/**
 * What a model family (an architecture, or a few that share their math) provides to the rest of
 * the runtime: the architectures it serves, config.json parsing into its own spec (the shared
 * fields of checkpoint/spec.ts plus its own), the table of tensors its graph reads (which
 * checkpoint validation checks before anything is built), its layers' linear weights and the ONNX
 * ops of one layer. The decoder driver (graph/decoder.ts) owns what every family shares: the
 * step's inputs, the attention mask, the rotary tables, the multi-LoRA plumbing, the embedding
 * lookup and the head.
 *
 * Families read tensors through `TensorReader`, not the checkpoint class, so that the checkpoint
 * reader may depend on the family table and nothing here depends back on it.
 */
import type { ModelSpec, Projection } from '../checkpoint/spec.js';
import type { GraphBuilder } from '../graph/graph-builder.js';
import type { LinearWeight, PreparedLinear } from '../graph/linear.js';
import type { Rope } from './rope.js';

export interface ExpectedTensor {
  name: string;
  shape: number[];
}

/** A checkpoint's tensors by name, as float32 (checkpoint/checkpoint.ts's Checkpoint is one). */
export interface TensorReader {
  read(name: string): Float32Array;
}

/** The driver's per-step values and LoRA helpers, as a layer emitter uses them. */
export interface LayerContext<S extends ModelSpec = ModelSpec> {
  g: GraphBuilder;
  ckpt: TensorReader;
  spec: S;
  /** [1, T] int64 positions. */
  positions: string;
  /** The rotary cos/sin tables [maxPositions, rotaryDim / 2]: the model's, or (local) its sliding layers' own (Family.slidingRope). */
  rotary(local: boolean): { cos: string; sin: string };
  /** The step's attention groups (graph/io.ts): attention runs once per group. */
  attentionGroups: AttentionGroup[];
  /** [T] where each packed token's attention output sits in the groups' concatenated padded outputs. */
  unpadIndex: string;
  /**
   * A linear layer's output y = x·Wᵀ (+ bias), holding the projections `parts` side by side, plus
   * the step's adapter deltas at their tokens: each slot's LoRA delta and, for DoRA slots,
   * (g − 1) ⊙ x·Wᵀ (see graph/decoder.ts). y itself in a base-only graph.
   */
  adapt(y: string, x: string, l: number, parts: readonly Projection[], bias: Float32Array | null): string;
}

/** One attention group's per-step values (graph/io.ts attentionInputs). */
export interface AttentionGroup {
  /** The attention mask [Bg, 1, Sg, Wg] for a window (null: causal over the whole context). */
  mask(window: number | null): string;
  /** [Bg, Sg] packed token of each padded query. */
  padIndex: string;
  /** [Bg, Wg] pool index of each key position. */
  kvIndex: string;
  /** [Tg, 2] int64 (row, key slot) of each of the group's new keys and values. */
  kvNewSlot: string;
  /** [Tg] packed index of each of the group's new tokens. */
  newTokens: string;
}

/** Between layers: the normalized input of the next layer (`x`) and the residual stream (`h`). */
export interface LayerState {
  x: string;
  h: string;
}

/**
 * A family over its spec S. Methods (not function-valued fields) on purpose: the table in
 * families.ts holds every family as a Family of the union of their specs, and pairs each spec with
 * the family that parsed it.
 */
export interface Family<S extends ModelSpec> {
  /** config.json `architectures[0]` values this family serves. */
  architectures: readonly S['architecture'][];
  /** config.json → spec; `architecture` is one this family serves. Refuses what it cannot run, naming it. */
  parseConfig(cfg: Record<string, unknown>, architecture: S['architecture'], file: string): S;
  /** Every tensor the graph reads, with its shape. */
  tensors(spec: S): ExpectedTensor[];
  /** The embedding table's and the head's tensor names (the head may be the embedding, tied). */
  embedTensor: string;
  headTensor(spec: S): string;
  /** Layer l's linear weights, in the order emitLayer receives them prepared. */
  layerWeights(ckpt: TensorReader, spec: S, l: number): LinearWeight[];
  /** The embeddings → the first layer's state. */
  firstLayerInput(ctx: LayerContext<S>, embeddings: string): LayerState;
  /** One layer; after the last one, `x` is the final norm's output (what the head multiplies). */
  emitLayer(ctx: LayerContext<S>, l: number, weights: PreparedLinear[], state: LayerState): LayerState;
  /** The rotary parameters of the sliding-window layers when they differ from the model's (absent or null: the model's). */
  slidingRope?(spec: S): Rope | null;
  /** Logits = cap · tanh(logits / cap) after the head, when the family caps them (absent or null: no cap). */
  finalLogitSoftcap?(spec: S): number | null;
}
