/**
 * What a model family (an architecture, or a few that share their math) provides to the rest of
 * the runtime: config.json parsing, the table of tensors its graph reads (which checkpoint
 * validation checks before anything is built), its layers' linear weights and the ONNX ops of one
 * layer. The decoder driver (graph/decoder.ts) owns what every family shares: the step's inputs,
 * the attention mask, the rotary tables, the multi-LoRA plumbing, the embedding lookup and the head.
 */
import type { Checkpoint } from '../checkpoint/checkpoint.js';
import type { ModelSpec, Projection } from '../checkpoint/spec.js';
import type { GraphBuilder } from '../graph/graph-builder.js';
import type { LinearWeight, PreparedLinear } from '../graph/linear.js';

export interface ExpectedTensor {
  name: string;
  shape: number[];
}

/** The driver's per-step values and LoRA helpers, as a layer emitter uses them. */
export interface LayerContext {
  g: GraphBuilder;
  ckpt: Checkpoint;
  spec: ModelSpec;
  /** [1, T] int64 positions. */
  positions: string;
  /** The rotary cos/sin tables [maxPositions, headDim / 2]: the model's, or (local) its sliding layers' own base. */
  rotary(local: boolean): { cos: string; sin: string };
  /** The attention mask [B, 1, S, W] for a window (null: causal over the whole context), and the gathers between packed tokens, padded rows and the KV pool. */
  mask(window: number | null): string;
  kvIndex: string;
  /** [T, 2] int64 (row, key slot) of each packed token's new key and value. */
  kvNewSlot: string;
  padIndex: string;
  unpadIndex: string;
  /** [T, d] → [U, n, d]: tokens grouped by adapter slot. */
  group(x: string, d: number): string;
  /** One module's LoRA delta for grouped tokens (the A/B stacks are graph inputs). */
  delta(xg: string, l: number, m: Projection, din: number, dout: number): string;
  /** y plus the deltas `d()` at their tokens (y itself in a base-only graph). */
  scatterAdd(y: string, d: () => string): string;
}

/** Between layers: the normalized input of the next layer (`x`) and the residual stream (`h`). */
export interface LayerState {
  x: string;
  h: string;
}

export interface Family {
  /** config.json → spec; `architecture` is one this family serves. Refuses what it cannot run, naming it. */
  parseConfig(cfg: Record<string, unknown>, architecture: ModelSpec['architecture'], file: string): ModelSpec;
  /** Every tensor the graph reads, with its shape. */
  tensors(spec: ModelSpec): ExpectedTensor[];
  /** The embedding table's and the head's tensor names (the head may be the embedding, tied). */
  embedTensor: string;
  headTensor(spec: ModelSpec): string;
  /** Layer l's linear weights, in the order emitLayer receives them prepared. */
  layerWeights(ckpt: Checkpoint, spec: ModelSpec, l: number): LinearWeight[];
  /** The embeddings → the first layer's state. */
  firstLayerInput(ctx: LayerContext, embeddings: string): LayerState;
  /** One layer; after the last one, `x` is the final norm's output (what the head multiplies). */
  emitLayer(ctx: LayerContext, l: number, weights: PreparedLinear[], state: LayerState): LayerState;
}
