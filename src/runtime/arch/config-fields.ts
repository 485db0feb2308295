/** Typed reads of config.json fields, with errors that name the file and the field. */
import { CheckpointError } from '../../errors.js';

export type Json = Record<string, unknown>;

export function int(cfg: Json, key: string, file: string, fallback?: number): number {
  const v = cfg[key] ?? fallback;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) {
    throw new CheckpointError(`${file}: ${key} must be a positive integer, got ${JSON.stringify(cfg[key])}`);
  }
  return v;
}

export function num(cfg: Json, key: string, file: string, fallback: number): number {
  const v = cfg[key] ?? fallback;
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) {
    throw new CheckpointError(`${file}: ${key} must be a positive number, got ${JSON.stringify(cfg[key])}`);
  }
  return v;
}

export interface AttentionShape {
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
}

/** The sizes every decoder family reads, checked alike; head_dim defaults to hidden_size / heads unless the family has its own default. */
export function attentionShape(cfg: Json, file: string, defaultHeadDim?: number): AttentionShape {
  const hiddenSize = int(cfg, 'hidden_size', file);
  const numLayers = int(cfg, 'num_hidden_layers', file);
  const numHeads = int(cfg, 'num_attention_heads', file);
  const numKvHeads = int(cfg, 'num_key_value_heads', file, numHeads);
  if (numHeads % numKvHeads !== 0) {
    throw new CheckpointError(`${file}: num_attention_heads (${numHeads}) must be a multiple of num_key_value_heads (${numKvHeads})`);
  }
  const headDim = cfg.head_dim == null ? (defaultHeadDim ?? hiddenSize / numHeads) : int(cfg, 'head_dim', file);
  if (!Number.isInteger(headDim) || headDim % 2 !== 0) {
    throw new CheckpointError(`${file}: head dimension ${headDim} must be an even integer (hidden_size / num_attention_heads or head_dim)`);
  }
  return { hiddenSize, numLayers, numHeads, numKvHeads, headDim };
}
