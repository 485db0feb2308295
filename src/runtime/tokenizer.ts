/**
 * Text ↔ token ids with the checkpoint's own tokenizer.json and tokenizer_config.json, through
 * @huggingface/tokenizers (the tokenizer transformers.js uses).
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { CheckpointError } from '../errors.js';
import { ChatTemplate, tokenText } from './chat-template.js';

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
  readonly bosId: number | null;
  readonly eosId: number | null;
  /** tokenizer_config.json's add_bos_token when it says; null = as tokenizer.json's post-processor does. */
  private readonly addBos: boolean | null;
  readonly chatTemplate: ChatTemplate | null;

  /** See maxTokenBytes below. */
  readonly maxTokenBytes: number;

  constructor(files: TokenizerFiles) {
    this.maxTokenBytes = maxTokenBytes(files.tokenizer);
    try {
      this.tok = new Tokenizer(files.tokenizer, files.config);
    } catch (err) {
      throw new CheckpointError(`tokenizer.json cannot be loaded: ${(err as Error).message}`, err);
    }
    this.config = files.config;
    const idOf = (key: string): number | null => {
      const text = tokenText(files.config[key]);
      return text === null ? null : (this.tok.token_to_id(text) ?? null);
    };
    this.bosId = idOf('bos_token');
    this.eosId = idOf('eos_token');
    this.addBos = typeof files.config.add_bos_token === 'boolean' ? files.config.add_bos_token : null;
    this.chatTemplate = ChatTemplate.fromTokenizerConfig(files.config);
  }

  static load(dir: string): TextTokenizer | null {
    const files = readTokenizerFiles(dir);
    return files ? new TextTokenizer(files) : null;
  }

  /**
   * Token ids of `text`. With `addSpecialTokens`, BOS is added as tokenizer.json's post-processor
   * says, corrected by tokenizer_config.json's add_bos_token when that is given.
   */
  encode(text: string, addSpecialTokens = true): number[] {
    const ids = this.tok.encode(text, { add_special_tokens: addSpecialTokens }).ids;
    if (addSpecialTokens && this.bosId !== null && this.addBos !== null) {
      const has = ids[0] === this.bosId;
      if (this.addBos && !has) ids.unshift(this.bosId);
      else if (!this.addBos && has && !text.startsWith(tokenText(this.config.bos_token) ?? '\0')) ids.shift();
    }
    return ids;
  }

  decode(ids: readonly number[], skipSpecialTokens = true): string {
    if (ids.length === 0) return '';
    return this.tok.decode([...ids], { skip_special_tokens: skipSpecialTokens });
  }

  tokenId(token: string): number | undefined {
    return this.tok.token_to_id(token);
  }
}

/**
 * The most bytes of text one token can stand for: the longest vocabulary entry or added token
 * (byte-level BPE vocabularies spell each byte as one character). An upper bound, used to refuse
 * texts that cannot fit a context without tokenizing them.
 */
function maxTokenBytes(tokenizerJson: Record<string, unknown>): number {
  const json = tokenizerJson as { model?: { vocab?: unknown }; added_tokens?: { content?: string }[]; decoder?: unknown };
  const byteLevel = JSON.stringify(json.decoder ?? {}).includes('"ByteLevel"');
  const size = (s: string): number => (byteLevel ? s.length : Buffer.byteLength(s));
  let max = 1;
  const vocab = json.model?.vocab;
  if (Array.isArray(vocab)) for (const e of vocab) max = Math.max(max, size(String(Array.isArray(e) ? e[0] : e)));
  else if (vocab && typeof vocab === 'object') for (const k of Object.keys(vocab)) max = Math.max(max, size(k));
  for (const a of json.added_tokens ?? []) if (typeof a.content === 'string') max = Math.max(max, Buffer.byteLength(a.content));
  return max;
}
