/** The command line end to end: real processes, real files, JSON on the last line of stdout. */
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { KNOBS } from '../../src/config.js';
import { referenceLogits } from '../helpers/reference.js';
import { argmax } from '../helpers/runtime.js';
import { copyTokenizer, loadTokenizer } from '../helpers/tokenizers.js';
import { makeTinyAdapter, makeTinyModel, tempDir } from '../helpers/tiny-model.js';

const run = promisify(execFile);
const CLI = join(import.meta.dirname, '../../src/cli/index.ts');

async function cli(args: string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await run(process.execPath, ['--import', 'tsx', CLI, ...args], { env: { ...process.env, ...env } });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

const lastJson = (stdout: string): Record<string, unknown> => JSON.parse(stdout.trim().split('\n').at(-1)!) as Record<string, unknown>;

describe('loraplex CLI', () => {
  const tm = makeTinyModel({ flavour: 'llama', seed: 61 });
  const adapter = makeTinyAdapter(tm, { seed: 62 });
  const cacheDir = tempDir();

  it('build caches the graph: the second run reuses it', async () => {
    const first = await cli(['build', '--model', tm.dir, '--quant', 'int8', '--cache-dir', cacheDir]);
    expect(first.code).toBe(0);
    expect(lastJson(first.stdout).built).toBe(true);
    expect(first.stderr).toMatch(/build: 100% \(4\/4\)/);
    const second = await cli(['build', '--model', tm.dir, '--cache-dir', cacheDir], { LORAPLEX_QUANT: 'int8' });
    expect(lastJson(second.stdout)).toMatchObject({ built: false, dir: lastJson(first.stdout).dir });
  });

  it.each([
    ['a LoRA adapter', adapter],
    ['a DoRA adapter', makeTinyAdapter(tm, { seed: 63, dora: 0.3 })],
  ])('generate greedy tokens equal the reference argmax chain, with %s', async (_, a) => {
    const r = await cli(['generate', '--model', tm.dir, '--adapter', a.dir, '--quant', 'fp32', '--prompt-ids', '1,2,3', '--max-tokens', '4', '--json', '--cache-dir', cacheDir]);
    expect(r.code, r.stderr).toBe(0);
    const out = lastJson(r.stdout);
    const toks = [1, 2, 3];
    for (let i = 0; i < 4; i++) toks.push(argmax(referenceLogits(tm.cfg, tm.weights, toks, a.lora).at(-1)!));
    expect(out.tokens).toEqual(toks.slice(3));
  });

  it('generate with w8a8 weights and a LoRA adapter follows the reference argmax chain', async () => {
    const r = await cli(['generate', '--model', tm.dir, '--adapter', adapter.dir, '--quant', 'w8a8', '--prompt-ids', '1,2,3', '--max-tokens', '4', '--json', '--cache-dir', cacheDir]);
    expect(r.code, r.stderr).toBe(0);
    const toks = [1, 2, 3];
    for (let i = 0; i < 4; i++) toks.push(argmax(referenceLogits(tm.cfg, tm.weights, toks, adapter.lora).at(-1)!));
    expect(lastJson(r.stdout).tokens).toEqual(toks.slice(3));
  });

  it.each([
    [['generate', '--prompt-ids', '1'], /--model \(or LORAPLEX_MODEL\) is required/],
    [['generate', '--model', '/nonexistent', '--prompt-ids', '1'], /model directory \/nonexistent does not exist/],
    [['build', '--model', '.', '--quant', 'int5', '--threads', '-1'], /--quant \(LORAPLEX_QUANT\) must be one of fp32, int8, int4, nf4, w8a8, got "int5"; --threads \(LORAPLEX_THREADS\) must be >= 0, got -1/],
    [['generate', '--model', '.', '--prompt-ids', '1,x'], /--prompt-ids must be comma-separated non-negative integers, got "1,x"/],
    [['generate', '--model', '.', '--prompt-ids', '1', '--prompt', 'hi'], /give exactly one of --prompt-ids, --prompt or --chat/],
    [['generate', '--model', '.', '--prompt-ids', '1', '--temperature', 'hot'], /--temperature must be a number, got "hot"/],
    [['generate', '--model', '.', '--chat', '{"role":"user"}'], /--chat must be a non-empty JSON array/],
  ])('%j fails with one line', async (args, message) => {
    const r = await cli([...args, '--cache-dir', cacheDir]);
    expect(r.code).not.toBe(0);
    const lines = r.stderr.trim().split('\n');
    expect(lines.at(-1)).toMatch(message);
    expect(lines.at(-1)).toMatch(/^loraplex: /);
  });

  describe('with a real tokenizer (Qwen3 vocabulary and chat template)', () => {
    const qwen = loadTokenizer('qwen3');
    const vocabSize = 151669;
    const model = makeTinyModel({ flavour: 'qwen2', seed: 63, vocabSize, hiddenSize: 32, numHeads: 2, numKvHeads: 1, intermediateSize: 64 });
    copyTokenizer('qwen3', model.dir);
    const base = ['generate', '--model', model.dir, '--quant', 'fp32', '--cache-dir', cacheDir, '--json'];

    it('--chat renders the template; text, tokens, finish_reason and logprobs come back', async () => {
      const r = await cli([...base, '--chat', JSON.stringify([{ role: 'user', content: 'Hello!' }]), '--max-tokens', '5', '--logprobs', '2']);
      expect(r.code, r.stderr).toBe(0);
      const out = lastJson(r.stdout) as { tokens: number[]; text: string; finish_reason: string; logprobs: { token: number; logprob: number; top: unknown[] }[] };
      expect(out.finish_reason).toMatch(/^(length|stop)$/);
      expect(out.text).toBe(qwen.decode(out.tokens));
      expect(out.logprobs).toHaveLength(out.tokens.length);
      expect(out.logprobs[0].top).toHaveLength(2);
      expect(out.logprobs[0].logprob).toBeLessThanOrEqual(0);
    });

    it('a seed makes sampling reproducible; a stop string ends with reason stop', async () => {
      const args = [...base, '--prompt', 'Once upon a time', '--max-tokens', '6', '--temperature', '1.5', '--seed', '7'];
      const a = lastJson((await cli(args)).stdout);
      const b = lastJson((await cli(args)).stdout);
      expect(a.tokens).toEqual(b.tokens);
      const text = a.text as string;
      const cut = text.slice(1, 3);
      if (cut.trim().length > 0) {
        const s = lastJson((await cli([...args, '--stop', cut])).stdout);
        expect(s.finish_reason).toBe('stop');
        expect(s.text).toBe(text.slice(0, text.indexOf(cut)));
      }
    });
  });
});

describe('loraplex demo', () => {
  it('listens on loopback only, makes up its admin token, and drains on SIGTERM', async () => {
    const { spawn } = await import('node:child_process');
    const child = spawn(process.execPath, ['--import', 'tsx', CLI, 'demo', '--cache-dir', tempDir(), '--port', '0', '--threads', '1', '--quant', 'fp32'], {
      env: { ...process.env, LORAPLEX_HOST: '', LORAPLEX_ADMIN_TOKEN: '' },
    });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    const exited = new Promise<number | null>((r) => child.on('exit', r));
    const find = async (re: RegExp): Promise<RegExpExecArray> => {
      for (let i = 0; i < 1200; i++) {
        const m = re.exec(out);
        if (m) return m;
        await new Promise((r) => setTimeout(r, 50));
      }
      throw new Error(`not seen: ${re}; output: ${out}`);
    };
    try {
      const token = (await find(/demo admin token: ([0-9a-f]{32})/))[1];
      const url = (await find(/listening on (http:\/\/[^ ]+) /))[1];
      expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
      await find(/"msg":"ready: model loraplex-demo/);
      expect((await fetch(`${url}/admin/adapters`, { headers: { authorization: 'Bearer demo-admin-token' } })).status).toBe(401);
      expect((await fetch(`${url}/admin/adapters`, { headers: { authorization: `Bearer ${token}` } })).status).toBe(200);
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
    } finally {
      child.kill('SIGKILL');
    }
  });
});

describe('every knob reaches the configuration, as a flag and as an environment variable', () => {
  /** A value for each knob that differs from its default, and what the configuration should hold. */
  const sample = (k: (typeof KNOBS)[keyof typeof KNOBS]): [string, unknown] => {
    switch (k.kind) {
      case 'bool':
        // Off by default: `--flag` turns it on; on by default: `--no-flag` turns it off.
        expect(k.flag.startsWith('--no-')).toBe(k.default === true);
        return [String(!k.default), !k.default];
      case 'int': {
        const v = (typeof k.default === 'number' ? k.default : 0) + 7;
        return [String(v), v];
      }
      case 'bytes':
        return ['3MiB', 3 * 1024 * 1024];
      case 'list':
        return ['a1,b2', ['a1', 'b2']];
      case 'string':
        if (k.choices) {
          const c = k.choices.find((x) => x !== k.default)!;
          return [c, c];
        }
        return [`value-of-${k.key}`, `value-of-${k.key}`];
    }
  };
  const knobs = Object.values(KNOBS);
  const expected = Object.fromEntries(knobs.map((k) => [k.key, sample(k)[1]]));

  it('as flags', async () => {
    const args = knobs.flatMap((k) => (k.kind === 'bool' ? [k.flag] : [k.flag.split(' ')[0], sample(k)[0]]));
    const r = await cli(['config', '--show-secrets', ...args], Object.fromEntries(knobs.map((k) => [k.env, ''])));
    expect(r.stderr).toBe('');
    expect(JSON.parse(r.stdout)).toEqual(expected);
  });

  it('as environment variables', async () => {
    const r = await cli(['config', '--show-secrets'], Object.fromEntries(knobs.map((k) => [k.env, sample(k)[0]])));
    expect(JSON.parse(r.stdout)).toEqual(expected);
  });

  it('serve --api-key k1 requires the key', async () => {
    const { spawn } = await import('node:child_process');
    const tiny = makeTinyModel({ seed: 63 });
    const child = spawn(process.execPath, ['--import', 'tsx', CLI, 'serve', '--model', tiny.dir, '--api-key', 'k1', '--port', '0', '--host', '127.0.0.1', '--quant', 'fp32', '--threads', '1', '--cache-dir', tempDir()], {
      env: { ...process.env, LORAPLEX_API_KEY: '' },
    });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    try {
      for (let i = 0; i < 1200 && !/listening on/.test(out); i++) await new Promise((r) => setTimeout(r, 50));
      const url = /listening on (http:\/\/[^ ]+) /.exec(out)![1];
      expect((await fetch(`${url}/v1/models`)).status).toBe(401);
      expect((await fetch(`${url}/v1/models`, { headers: { authorization: 'Bearer wrong' } })).status).toBe(401);
      expect((await fetch(`${url}/v1/models`, { headers: { authorization: 'Bearer k1' } })).status).toBe(200);
    } finally {
      child.kill('SIGKILL');
    }
  });
});
