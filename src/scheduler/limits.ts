/**
 * What a request must satisfy before it can run on a model: prompt ids inside the vocabulary, the
 * prompt plus its answer inside the context and the KV cache, and the ids that end a sequence. The
 * server and the CLI check these before a request is queued; the engine checks them again so a
 * caller's bug never reaches the runtime.
 */
import { LoraplexError } from '../errors.js';
import { KvPool } from '../runtime/kv-cache.js';
import type { DecoderModel } from '../runtime/model.js';
import type { TextTokenizer } from '../runtime/tokenizer.js';

/** Every id that ends a sequence: generation_config's (possibly several) and the tokenizer's own. */
export function endOfSequenceIds(model: Pick<DecoderModel, 'spec'>, tokenizer: Pick<TextTokenizer, 'eosId'> | null): Set<number> {
  const ids = new Set(model.spec.eosTokenIds);
  if (tokenizer?.eosId != null) ids.add(tokenizer.eosId);
  return ids;
}

/** Prompt ids must be non-empty and inside the vocabulary. */
export function checkPrompt(prompt: ArrayLike<number>, vocabSize: number): void {
  if (prompt.length === 0) throw new LoraplexError('empty_prompt', 'the prompt is empty (no tokens)', { param: 'prompt' });
  for (let i = 0; i < prompt.length; i++) {
    const id = prompt[i];
    if (!Number.isInteger(id) || id < 0 || id >= vocabSize) {
      throw new LoraplexError('invalid_token', `prompt token id ${id} is outside the vocabulary (0..${vocabSize - 1})`, { param: 'prompt' });
    }
  }
}

/** The prompt plus the tokens to generate must fit the context and the KV cache (in whole blocks). */
export function checkContext(promptLen: number, maxNewTokens: number, maxPositions: number, kvCapacity: number): void {
  if (!Number.isSafeInteger(maxNewTokens) || maxNewTokens < 1 || promptLen + maxNewTokens > maxPositions) {
    throw new LoraplexError(
      'context_length_exceeded',
      `max_tokens + prompt tokens must be <= ${maxPositions} (the context length); given ${promptLen} prompt tokens and ${maxNewTokens} max_tokens`,
      { param: 'max_tokens' },
    );
  }
  if (KvPool.tokensFor(promptLen + maxNewTokens) > kvCapacity) {
    throw new LoraplexError(
      'context_length_exceeded',
      `max_tokens + prompt tokens must fit the KV cache of ${kvCapacity} tokens; given ${promptLen} prompt tokens and ${maxNewTokens} max_tokens`,
      { param: 'max_tokens' },
    );
  }
}
