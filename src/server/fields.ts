/**
 * No field is silently ignored. Every field a request schema declares is honoured (or refused for
 * the values it cannot honour, by the route). Fields the schema does not declare but that other
 * servers accept (vLLM, TGI, OpenAI) and that would change the answer are refused with a 422 naming
 * them, unless their value is what loraplex does anyway. Anything else is accepted, as vLLM does,
 * and listed in a warning log line.
 */
import type { FastifyBaseLogger } from 'fastify';
import { UnsupportedError } from '../errors.js';

interface Refusal {
  /** Values that ask for what loraplex does anyway (accepted). */
  ok?: (v: unknown) => boolean;
  why: string;
}

const isFalse = (v: unknown): boolean => v === false || v == null;
const isTrue = (v: unknown): boolean => v === true || v == null;

/** Known fields of other servers' APIs that loraplex refuses. */
export const REFUSED_FIELDS: Readonly<Record<string, Refusal>> = {
  guided_whitespace_pattern: { ok: (v) => v == null, why: 'constrained JSON output has a fixed whitespace style; guided_whitespace_pattern is not supported' },
  functions: { why: 'the legacy functions API is not supported; use tools' },
  function_call: { why: 'the legacy functions API is not supported; use tool_choice' },
  use_beam_search: { ok: isFalse, why: 'beam search is not supported' },
  length_penalty: { ok: (v) => v == null || v === 1, why: 'length_penalty applies to beam search, which is not supported' },
  early_stopping: { ok: isFalse, why: 'early_stopping applies to beam search, which is not supported' },
  prompt_logprobs: { ok: (v) => v == null, why: 'prompt logprobs are not supported on this route; /generate returns them with decoder_input_details' },
  include_stop_str_in_output: { ok: isFalse, why: 'stop strings are never included in the output' },
  skip_special_tokens: { ok: isTrue, why: 'special tokens are always left out of the text' },
  spaces_between_special_tokens: { ok: isTrue, why: 'detokenization cannot be changed per request' },
  continue_final_message: { ok: isFalse, why: 'continuing the final message is not supported' },
  chat_template: { ok: (v) => v == null, why: 'per-request chat templates are not accepted; an adapter may carry its own' },
  documents: { ok: (v) => v == null, why: 'documents (RAG templates) are not supported' },
  echo: { ok: isFalse, why: 'echo is supported on /v1/completions only' },
  return_tokens_as_token_ids: { ok: isFalse, why: 'tokens are returned as text' },
  audio: { ok: (v) => v == null, why: 'audio is not supported' },
  modalities: { ok: (v) => v == null || (Array.isArray(v) && v.every((m) => m === 'text')), why: 'only text output is supported' },
  prediction: { ok: (v) => v == null, why: 'predicted outputs are not supported' },
  reasoning_effort: { ok: (v) => v == null, why: 'reasoning effort cannot be set for this model' },
  best_of: { ok: (v) => v == null || v === 1, why: 'best_of is supported on /v1/completions and /generate' },
  suffix: { ok: (v) => v == null || v === '', why: 'suffix (fill in the middle) is not supported' },
};

/**
 * Refuses the known fields loraplex cannot honour and logs the unknown ones. `declared` are the
 * schema's own fields (they are the route's business); `where` prefixes names (e.g. "parameters.").
 */
export function checkFields(body: unknown, declared: ReadonlySet<string>, log: FastifyBaseLogger, where = ''): void {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) return;
  const unknown: string[] = [];
  for (const [key, value] of Object.entries(body)) {
    if (declared.has(key)) continue;
    const r = REFUSED_FIELDS[key];
    if (r) {
      if (!r.ok?.(value)) throw new UnsupportedError(`${where}${key} is not supported: ${r.why}`, `${where}${key}`);
      continue;
    }
    unknown.push(`${where}${key}`);
  }
  if (unknown.length > 0) log.warn({ unknownFields: unknown }, `request fields not used by loraplex: ${unknown.join(', ')}`);
}

/** The properties a TypeBox object schema declares. */
export const declaredFields = (schema: { properties: Record<string, unknown> }): ReadonlySet<string> => new Set(Object.keys(schema.properties));
