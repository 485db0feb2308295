/** The CLI's commands, as functions of a resolved configuration. */
import { loadAdapterHere } from '../adapters/loader.js';
import type { Config, ServeConfig } from '../config.js';
import { chatTemplateFor } from '../adapters/peft.js';
import { checkContext, checkPrompt, endOfSequenceIds } from '../scheduler/limits.js';
import { ValidationError } from '../errors.js';
import type { ChatMessage } from '../runtime/chat-template.js';
import { Generation } from '../runtime/generation.js';
import { parseSampling } from '../server/sampling-fields.js';
import { Sampler } from '../runtime/sampling.js';
import { buildFromSettings, openRuntime, type RuntimeSettings } from '../runtime/open.js';
import { progressBar } from '../util/progress.js';
import { DEMO_MODEL_ID, ensureDemo } from './demo.js';
import { serveForever, startServer } from '../server/serve.js';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';

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
  chat?: string;
  maxTokens: string;
  json: boolean;
  temperature?: string;
  topP?: string;
  topK?: string;
  minP?: string;
  repetitionPenalty?: string;
  frequencyPenalty?: string;
  presencePenalty?: string;
  seed?: string;
  logitBias?: string;
  stop?: string[];
  logprobs?: string;
}

function parsePromptIds(text: string): number[] {
  const ids = text.split(',').map((s) => s.trim());
  if (ids.length === 0 || ids.some((s) => !/^\d+$/.test(s))) {
    throw new ValidationError(`--prompt-ids must be comma-separated non-negative integers, got ${JSON.stringify(text)}`, 'prompt-ids');
  }
  return ids.map(Number);
}

function flagNumber(name: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n)) throw new ValidationError(`--${name} must be a number, got ${JSON.stringify(v)}`, name);
  return n;
}

function parseJsonFlag(name: string, v: string): unknown {
  try {
    return JSON.parse(v);
  } catch (err) {
    throw new ValidationError(`--${name} must be JSON (${(err as Error).message})`, name);
  }
}

function parseMessages(v: string): ChatMessage[] {
  const m = parseJsonFlag('chat', v);
  if (!Array.isArray(m) || m.length === 0 || !m.every((x) => x && typeof x.role === 'string' && (typeof x.content === 'string' || x.content === null))) {
    throw new ValidationError('--chat must be a non-empty JSON array of {"role": string, "content": string}', 'chat');
  }
  return m as ChatMessage[];
}

export async function runGenerate(config: Partial<Config>, args: GenerateArgs): Promise<void> {
  const given = [args.promptIds, args.prompt, args.chat].filter((x) => x !== undefined).length;
  if (given !== 1) throw new ValidationError('give exactly one of --prompt-ids, --prompt or --chat');
  const maxTokens = Number(args.maxTokens);
  if (!Number.isSafeInteger(maxTokens) || maxTokens < 1) throw new ValidationError(`--max-tokens must be a positive integer, got ${JSON.stringify(args.maxTokens)}`, 'max-tokens');
  const promptIds = args.promptIds === undefined ? null : parsePromptIds(args.promptIds);
  const messages = args.chat === undefined ? null : parseMessages(args.chat);
  const rawSampling = {
    temperature: flagNumber('temperature', args.temperature) ?? 0,
    top_p: flagNumber('top-p', args.topP),
    top_k: flagNumber('top-k', args.topK),
    min_p: flagNumber('min-p', args.minP),
    repetition_penalty: flagNumber('repetition-penalty', args.repetitionPenalty),
    frequency_penalty: flagNumber('frequency-penalty', args.frequencyPenalty),
    presence_penalty: flagNumber('presence-penalty', args.presencePenalty),
    seed: flagNumber('seed', args.seed),
    logit_bias: args.logitBias === undefined ? undefined : parseJsonFlag('logit-bias', args.logitBias),
    logprobs: flagNumber('logprobs', args.logprobs),
  };
  const bar = progressBar('build');
  const rt = await openRuntime(settings(config), bar, log);
  bar.stop();
  try {
    const sampling = parseSampling(rawSampling, rt.model.spec.vocabSize);
    const tok = rt.tokenizer;
    let prompt: number[];
    if (promptIds) {
      prompt = promptIds;
    } else if (!tok) {
      throw new ValidationError(`--prompt and --chat need a tokenizer.json in ${config.model}; use --prompt-ids`);
    } else if (messages) {
      const template = chatTemplateFor(tok, args.adapter ?? null);
      if (!template) throw new ValidationError(`the model in ${config.model} has no chat template (tokenizer_config.json chat_template); use --prompt`, 'chat');
      prompt = tok.encode(template.render(messages), false);
    } else {
      prompt = tok.encode(args.prompt!);
    }
    // The engine's own checks: the vocabulary, the context (and the KV cache).
    checkPrompt(prompt, rt.model.spec.vocabSize);
    checkContext(prompt.length, maxTokens, rt.model.maxPositions, rt.model.kv.capacity);
    let slot = -1;
    if (args.adapter) {
      slot = rt.model.lora.load(await loadAdapterHere({ kind: 'single', key: args.adapter, name: args.adapter, dir: args.adapter }, { spec: rt.model.spec, maxRank: rt.model.lora.maxRank, strictBase: null, slotDtype: rt.model.lora.dtype, checkpointDir: settings(config).model }));
    }
    const eos = endOfSequenceIds(rt.model, tok);
    const gen = new Generation(prompt, sampling, { maxNewTokens: maxTokens, eosIds: eos, stopTokenIds: new Set(), stopStrings: args.stop ?? [] }, tok);
    const sampler = new Sampler(rt.model.spec.vocabSize);
    const seq = rt.model.newSequence();
    let text = '';
    const logprobs: { token: number; logprob: number; top: { token: number; logprob: number }[] }[] = [];
    let next = prompt;
    while (!gen.done) {
      const out = await rt.model.step([{ seq, tokens: next, slot, logits: 'last' }]);
      const e = gen.next(out.logits.subarray(0, out.vocabSize), sampler);
      text += e.text;
      if (e.logprob !== undefined) logprobs.push({ token: e.id, logprob: e.logprob, top: (e.top ?? []).map((t) => ({ token: t.id, logprob: t.logprob })) });
      next = [e.id];
    }
    const result: Record<string, unknown> = { tokens: gen.output, finish_reason: gen.finishReason };
    if (tok) result.text = text;
    if (sampling.logprobs !== null) result.logprobs = logprobs;
    if (args.json) process.stdout.write(`${JSON.stringify(result)}\n`);
    else process.stdout.write(`${tok ? text : gen.output.join(',')}\n`);
  } finally {
    await rt.model.close();
  }
}

export async function runServe(config: ServeConfig): Promise<void> {
  const bar = progressBar('build');
  const server = await startServer(config, { onProgress: bar });
  await serveForever(server, log);
  bar.stop();
}

/**
 * The demo: the built-in model and adapters. Unless told otherwise it listens on loopback only and
 * makes up a fresh admin token, printed once.
 */
export async function runDemo(config: Config, hostGiven: boolean): Promise<void> {
  const demo = ensureDemo(join(config.cacheDir, 'demo'), log, config.adapters);
  const adminToken = config.adminToken ?? randomBytes(16).toString('hex');
  const full: ServeConfig = {
    ...config,
    host: hostGiven ? config.host : '127.0.0.1',
    model: config.model ?? demo.model,
    adapters: demo.adapters,
    servedModelName: config.servedModelName ?? DEMO_MODEL_ID,
    adminToken,
  };
  if (!config.adminToken) log(`demo admin token: ${adminToken} (made up for this run; set --admin-token or LORAPLEX_ADMIN_TOKEN to choose one)`);
  await runServe(full);
}
