/**
 * Which family serves which architecture (config.json `architectures[0]`): a table the type system
 * requires to cover every supported architecture. Adding a family: its module under arch/, its
 * architectures in SUPPORTED_ARCHITECTURES (checkpoint/spec.ts) and here.
 */
import { CheckpointError } from '../../errors.js';
import { SUPPORTED_ARCHITECTURES, type Architecture, type ModelSpec } from '../checkpoint/spec.js';
import type { Json } from './config-fields.js';
import type { Family } from './family.js';
import { GEMMA_FAMILY } from './gemma.js';
import { LLAMA_FAMILY } from './llama.js';
import { PHI3_FAMILY } from './phi3.js';

const FAMILY_OF: Record<Architecture, Family> = {
  LlamaForCausalLM: LLAMA_FAMILY,
  MistralForCausalLM: LLAMA_FAMILY,
  Qwen2ForCausalLM: LLAMA_FAMILY,
  Qwen3ForCausalLM: LLAMA_FAMILY,
  Gemma2ForCausalLM: GEMMA_FAMILY,
  Gemma3ForCausalLM: GEMMA_FAMILY,
  Phi3ForCausalLM: PHI3_FAMILY,
};

export function familyOf(architecture: Architecture): Family {
  return FAMILY_OF[architecture];
}

/** Parses a config.json object. `file` names the file in error messages. */
export function parseModelSpec(cfg: Json, file = 'config.json'): ModelSpec {
  const archs = cfg.architectures;
  const arch = Array.isArray(archs) && typeof archs[0] === 'string' ? archs[0] : undefined;
  if (!arch || !(SUPPORTED_ARCHITECTURES as readonly string[]).includes(arch)) {
    throw new CheckpointError(`${file}: architecture ${arch ?? '(none given)'} is not supported; supported: ${SUPPORTED_ARCHITECTURES.join(', ')}`);
  }
  return familyOf(arch as Architecture).parseConfig(cfg, arch as Architecture, file);
}
