/**
 * The family table: which family serves which architecture (config.json `architectures[0]`), and
 * the spec of a model of any of them. The table is the one source of truth: the supported
 * architectures, their type and the spec union are all derived from it. Adding a family: its
 * module under arch/ (architectures, spec, parsing, tensors, layer) and one entry here.
 */
import { CheckpointError } from '../../errors.js';
import type { Json } from './config-fields.js';
import type { ExpectedTensor, Family } from './family.js';
import { GEMMA_FAMILY } from './gemma.js';
import { LLAMA_FAMILY } from './llama.js';
import { PHI3_FAMILY } from './phi3.js';

const FAMILIES = [LLAMA_FAMILY, GEMMA_FAMILY, PHI3_FAMILY] as const;

type SpecOf<F> = F extends Family<infer S> ? S : never;
/** A model's spec: the shared fields (checkpoint/spec.ts) plus its family's own, told apart by `family`. */
export type FamilySpec = SpecOf<(typeof FAMILIES)[number]>;
export type Architecture = FamilySpec['architecture'];

/** Every supported architecture, in the table's order. */
export const SUPPORTED_ARCHITECTURES: readonly Architecture[] = FAMILIES.flatMap((f) => f.architectures);

const FAMILY_OF = new Map<string, Family<FamilySpec>>(FAMILIES.flatMap((f: Family<FamilySpec>) => f.architectures.map((a) => [a, f] as const)));

/** The family that parsed `spec` (so the one whose spec it is). */
export function familyOf(spec: FamilySpec): Family<FamilySpec> {
  return FAMILY_OF.get(spec.architecture)!;
}

/** Parses a config.json object. `file` names the file in error messages. */
export function parseModelSpec(cfg: Json, file = 'config.json'): FamilySpec {
  const archs = cfg.architectures;
  const arch = Array.isArray(archs) && typeof archs[0] === 'string' ? archs[0] : undefined;
  const family = arch === undefined ? undefined : FAMILY_OF.get(arch);
  if (!arch || !family) {
    throw new CheckpointError(`${file}: architecture ${arch ?? '(none given)'} is not supported; supported: ${SUPPORTED_ARCHITECTURES.join(', ')}`);
  }
  return family.parseConfig(cfg, arch as Architecture, file);
}

/** Every tensor the decoder reads, with the shape it must have (the model family's table). */
export function expectedTensors(spec: FamilySpec): ExpectedTensor[] {
  return familyOf(spec).tensors(spec);
}
