/** The CLI's commands, as functions of a resolved configuration. */
import { loadPeftAdapter } from '../adapters/peft.js';
import type { Config } from '../config.js';
import { CapacityError } from '../errors.js';
import { buildFromSettings, openRuntime, type RuntimeSettings } from '../runtime/open.js';
import { progressBar } from '../util/progress.js';

function settings(c: Partial<Config>): RuntimeSettings {
  return c as RuntimeSettings;
}

const log = (m: string): void => {
  process.stderr.write(`${m}\n`);
};

export async function runBuild(config: Partial<Config>): Promise<void> {
  const bar = progressBar('build');
  const started = Date.now();
  const built = await buildFromSettings(settings(config), bar, log);
  bar.stop();
  log(`${built.built ? 'built' : 'cached'} ${built.options.weights} graph in ${((Date.now() - started) / 1000).toFixed(1)}s: ${built.dir}`);
  process.stdout.write(`${JSON.stringify({ dir: built.dir, built: built.built, options: built.options })}\n`);
}

export interface GenerateArgs {
  adapter?: string;
  promptIds?: string;
  prompt?: string;
  maxTokens: string;
  json: boolean;
}

function parsePromptIds(text: string): number[] {
  const ids = text.split(',').map((s) => s.trim());
  if (ids.length === 0 || ids.some((s) => !/^\d+$/.test(s))) {
    throw new CapacityError(`--prompt-ids must be comma-separated non-negative integers, got ${JSON.stringify(text)}`);
  }
  return ids.map(Number);
}

export async function runGenerate(config: Partial<Config>, args: GenerateArgs): Promise<void> {
  if ((args.promptIds === undefined) === (args.prompt === undefined)) {
    throw new CapacityError('give exactly one of --prompt-ids or --prompt');
  }
  const maxTokens = Number(args.maxTokens);
  if (!Number.isSafeInteger(maxTokens) || maxTokens < 1) throw new CapacityError(`--max-tokens must be a positive integer, got ${JSON.stringify(args.maxTokens)}`);
  const promptIds = args.promptIds === undefined ? null : parsePromptIds(args.promptIds);
  const bar = progressBar('build');
  const rt = await openRuntime(settings(config), bar, log);
  bar.stop();
  try {
    let prompt: number[];
    if (promptIds) {
      prompt = promptIds;
    } else {
      if (!rt.tokenizer) throw new CapacityError(`--prompt needs a tokenizer.json in ${config.model}; use --prompt-ids`);
      prompt = rt.tokenizer.encode(args.prompt!);
    }
    let slot = -1;
    if (args.adapter) {
      const adapter = loadPeftAdapter(args.adapter, rt.model.spec, { maxRank: rt.model.lora.maxRank });
      slot = rt.model.lora.load(adapter.weights);
    }
    const eos = new Set(rt.model.spec.eosTokenIds);
    const seq = rt.model.newSequence();
    const generated: number[] = [];
    let next = prompt;
    let finish: 'stop' | 'length' = 'length';
    for (let i = 0; i < maxTokens; i++) {
      const out = await rt.model.step([{ seq, tokens: next, slot, logits: 'last' }]);
      const logits = out.logits.subarray(0, out.vocabSize);
      let best = 0;
      for (let v = 1; v < logits.length; v++) if (logits[v] > logits[best]) best = v;
      if (eos.has(best)) {
        finish = 'stop';
        break;
      }
      generated.push(best);
      next = [best];
    }
    const result: Record<string, unknown> = { tokens: generated, finish_reason: finish };
    if (rt.tokenizer) result.text = rt.tokenizer.decode(generated);
    if (args.json) process.stdout.write(`${JSON.stringify(result)}\n`);
    else process.stdout.write(`${rt.tokenizer ? String(result.text) : generated.join(',')}\n`);
  } finally {
    await rt.model.close();
  }
}
