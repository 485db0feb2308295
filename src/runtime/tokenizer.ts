/**
 * Text ↔ token ids with the checkpoint's own tokenizer.json and tokenizer_config.json, through
 * @huggingface/tokenizers (the tokenizer transformers.js uses).
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { CheckpointError } from '../errors.js';

export interface TokenizerFiles {
  tokenizer: Record<string, unknown>;
  config: Record<string, unknown>;
}

export function readTokenizerFiles(dir: string): TokenizerFiles | null {
  const path = join(dir, 'tokenizer.json');
  if (!existsSync(path)) return null;
  const read = (p: string): Record<string, unknown> => {
    try {
      return JSON.parse(readFileSync(p, 'utf8')) as Record<string, unknown>;
    } catch (err) {
      throw new CheckpointError(`${p}: invalid JSON (${(err as Error).message})`, err);
    }
  };
  const cfgPath = join(dir, 'tokenizer_config.json');
  return { tokenizer: read(path), config: existsSync(cfgPath) ? read(cfgPath) : {} };
}

export class TextTokenizer {
  private readonly tok: Tokenizer;
  readonly config: Record<string, unknown>;

  constructor(files: TokenizerFiles) {
    try {
      this.tok = new Tokenizer(files.tokenizer, files.config);
    } catch (err) {
      throw new CheckpointError(`tokenizer.json cannot be loaded: ${(err as Error).message}`, err);
    }
    this.config = files.config;
  }

  static load(dir: string): TextTokenizer | null {
    const files = readTokenizerFiles(dir);
    return files ? new TextTokenizer(files) : null;
  }

  /** Token ids of `text`; special tokens (BOS) added as the tokenizer's post-processor says. */
  encode(text: string, addSpecialTokens = true): number[] {
    return this.tok.encode(text, { add_special_tokens: addSpecialTokens }).ids;
  }

  decode(ids: readonly number[], skipSpecialTokens = true): string {
    return this.tok.decode([...ids], { skip_special_tokens: skipSpecialTokens });
  }

  tokenId(token: string): number | undefined {
    return this.tok.token_to_id(token);
  }
}
