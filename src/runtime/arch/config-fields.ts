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
