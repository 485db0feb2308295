#!/usr/bin/env node
/**
 * The loraplex command line. Options come from the knob table in config.ts (flag > environment >
 * default); errors exit non-zero with a one-line message.
 */
import { Command, Option } from 'commander';
import { ConfigError, KNOBS, resolveAllKnobs, resolveConfig, serveConfig, type Knob, type KnobKey } from '../config.js';
import { LoraplexError } from '../errors.js';
import { runBuild, runDemo, runGenerate, runServe, type GenerateArgs } from './commands.js';

const RUNTIME_KEYS = [
  'model', 'quant', 'activations', 'lmHeadAccuracy', 'device', 'allowCpuFallback', 'threads', 'ortProfile', 'cacheDir', 'maxContext', 'kvCacheTokens',
  'maxLoraRank', 'maxActiveAdapters',
] as const satisfies readonly KnobKey[];

function describeKnob(k: Knob): string {
  const parts = [k.doc];
  if (k.choices) parts.push(`one of: ${k.choices.join(', ')}`);
  if (k.default !== undefined && k.default !== '' && !(Array.isArray(k.default) && k.default.length === 0)) {
    parts.push(`default: ${Array.isArray(k.default) ? k.default.join(',') : String(k.default)}`);
  }
  parts.push(`env: ${k.env}`);
  return `${parts[0]} (${parts.slice(1).join('; ')})`;
}

/**
 * Adds the knobs as options. Commander names an option's value after its flag (`--api-key` →
 * `apiKey`), which need not be the knob's key (`apiKeys`): `knobFlags` reads each value back under
 * the attribute name commander itself chose, so no spelling can be lost between flag and config.
 */
export function addKnobs(cmd: Command, keys: readonly KnobKey[]): Command {
  for (const key of keys) {
    const k = KNOBS[key] as Knob;
    cmd.addOption(new Option(k.flag, describeKnob(k)));
  }
  return cmd;
}

/** The knob values given as flags, keyed by knob key. */
export function knobFlags(cmd: Command, keys: readonly KnobKey[]): Partial<Record<KnobKey, unknown>> {
  const opts = cmd.opts();
  const out: Partial<Record<KnobKey, unknown>> = {};
  for (const key of keys) {
    const option = cmd.options.find((o) => o.flags === (KNOBS[key] as Knob).flag);
    if (!option) throw new Error(`the knob ${key} has no option on ${cmd.name()}`);
    // Only values given on the command line: commander presets a `--no-…` flag's value to true.
    if (cmd.getOptionValueSource(option.attributeName()) !== 'cli') continue;
    const v = opts[option.attributeName()];
    if (v !== undefined) out[key] = v;
  }
  return out;
}

function fail(err: unknown): never {
  if (err instanceof ConfigError) {
    process.stderr.write(`loraplex: ${err.message}\n`);
  } else if (err instanceof LoraplexError) {
    process.stderr.write(`loraplex: ${err.message}\n`);
  } else {
    process.stderr.write(`loraplex: ${(err as Error)?.stack ?? String(err)}\n`);
  }
  process.exit(1);
}

const program = new Command('loraplex')
  .description('Multi-LoRA inference server: one quantized base model, many PEFT adapters, one OpenAI-compatible API.')
  .showHelpAfterError();

// Errors thrown by an action reach parseAsync's catch below: one line on stderr, exit 1.
addKnobs(program.command('build').description('build (or reuse) the cached ONNX graph for a checkpoint'), RUNTIME_KEYS).action((_opts: unknown, cmd: Command) =>
  runBuild(resolveConfig(RUNTIME_KEYS, knobFlags(cmd, RUNTIME_KEYS), process.env, ['model'])),
);

addKnobs(program.command('generate').description('generate from a prompt or chat messages (greedy unless --temperature is given)'), RUNTIME_KEYS)
  .option('--adapter <dir>', 'PEFT adapter directory to apply')
  .option('--prompt-ids <ids>', 'prompt as comma-separated token ids')
  .option('--prompt <text>', 'prompt text (needs tokenizer.json in the model directory)')
  .option('--chat <messages>', 'chat messages as JSON, rendered with the chat template: [{"role":"user","content":"Hi"}]')
  .option('--max-tokens <n>', 'tokens to generate', '32')
  .option('--temperature <t>', '0 = greedy (default 0)')
  .option('--top-p <p>', 'nucleus sampling mass (0, 1]')
  .option('--top-k <k>', 'sample among the k most likely tokens (0 = off)')
  .option('--min-p <p>', 'drop tokens below p times the most likely one')
  .option('--repetition-penalty <x>', 'penalize tokens already in prompt or output (> 1)')
  .option('--frequency-penalty <x>', 'OpenAI frequency penalty (-2..2)')
  .option('--presence-penalty <x>', 'OpenAI presence penalty (-2..2)')
  .option('--logit-bias <json>', 'token id → bias, e.g. {"42": -100}')
  .option('--seed <n>', 'seed for sampling (same seed and input → same tokens)')
  .option('--stop <text...>', 'stop strings (not included in the output)')
  .option('--logprobs <n>', 'report each token\'s logprob and the top n alternatives (0..20)')
  .option('--json', 'print one JSON object on the last line of stdout')
  // The option names are GenerateArgs' field names (commander camel-cases them).
  .action((opts: Record<string, unknown>, cmd: Command) =>
    runGenerate(resolveConfig(RUNTIME_KEYS, knobFlags(cmd, RUNTIME_KEYS), process.env, ['model']), { ...(opts as unknown as GenerateArgs), json: opts.json === true }),
  );

const SERVE_KEYS = Object.keys(KNOBS) as KnobKey[];

addKnobs(program.command('serve').description('serve a model and its adapters over HTTP (OpenAI-compatible, LoRAX/TGI-style, admin)'), SERVE_KEYS).action(
  (_opts: unknown, cmd: Command) => runServe(serveConfig(resolveAllKnobs(knobFlags(cmd, SERVE_KEYS), process.env, ['model']))),
);

addKnobs(
  program.command('demo').description('build (once) a small demo model with a real tokenizer and three demo adapters, then serve it'),
  SERVE_KEYS,
).action((_opts: unknown, cmd: Command) => {
  const flags = knobFlags(cmd, SERVE_KEYS);
  return runDemo(resolveAllKnobs(flags, process.env), flags.host !== undefined || !!process.env[KNOBS.host.env]);
});

addKnobs(
  program
    .command('config')
    .description('print the configuration that serve would run with (flags > environment > defaults) as JSON, and exit')
    .option('--show-secrets', 'print the admin token, API keys and metrics key instead of masking them'),
  SERVE_KEYS,
).action((opts: { showSecrets?: boolean }, cmd: Command) => {
  const config = resolveConfig(SERVE_KEYS, knobFlags(cmd, SERVE_KEYS), process.env) as Record<string, unknown>;
  const shown = opts.showSecrets ? config : { ...config, ...maskSecrets(config) };
  process.stdout.write(`${JSON.stringify(shown, null, 2)}\n`);
});

function maskSecrets(c: Record<string, unknown>): Record<string, unknown> {
  const mask = (v: unknown): unknown => (v === undefined ? undefined : Array.isArray(v) ? v.map(() => '***') : '***');
  return { adminToken: mask(c.adminToken), apiKeys: mask(c.apiKeys), metricsKey: mask(c.metricsKey) };
}

program.parseAsync(process.argv).catch(fail);
