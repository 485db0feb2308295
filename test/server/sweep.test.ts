/**
 * A malformed-input sweep over every route: each field of a valid request replaced by hostile
 * values (wrong types, huge and tiny numbers, NaN-like strings, deep nesting, huge strings), broken
 * bodies and headers, hostile adapter uploads and names. None may answer 5xx or hang (each request
 * is abandoned after 3 minutes, generous for a machine whose cores are saturated); every 4xx is in
 * the route's error shape; afterwards the server is healthy and its greedy output unchanged.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type RunningServer } from '../../src/server/serve.js';
import { ADMIN, testConfig, tinyQwen } from '../helpers/server.js';
import { makeTinyAdapter, tempDir } from '../helpers/tiny-model.js';

const tm = tinyQwen(301);
const storeDir = tempDir('loraplex-sweep-store-');
const alpha = makeTinyAdapter(tm, { seed: 302, r: 4 }, join(storeDir, 'alpha'));

let server: RunningServer;
let base: string;
beforeAll(async () => {
  server = await startServer(testConfig({ model: tm.dir, adapters: storeDir, adminToken: ADMIN, port: 0, host: '127.0.0.1', servedModelName: 'tiny', bodyTimeoutMs: 5000 }), { logger: false });
  await server.ready;
  base = server.url;
});
afterAll(async () => {
  await server?.close(0);
});

const HUGE = 'x'.repeat(100_000);
/** Values that are wrong for most fields (some are valid for some fields: those may answer 200). */
const HOSTILE: unknown[] = [
  null, true, false, 0, -1, 1, 1.5, -0.5, 2 ** 53 + 1, 1e308, -1e308, 1e-320, '', 'x', 'NaN', 'Infinity', '-1', '\u0000', '\ud800', HUGE,
  [], [null], [[[]]], ['x', 1, null], {}, { a: 1 }, { '': null }, { __proto__: { polluted: true } }, Array.from({ length: 2000 }, (_, i) => i),
];

interface Case {
  name: string;
  method: string;
  path: string;
  headers?: Record<string, string>;
  body?: string | FormData;
}

function jsonCases(path: string, valid: Record<string, unknown>, fields: string[]): Case[] {
  const out: Case[] = [];
  for (const field of fields) {
    for (const v of HOSTILE) {
      const body = structuredClone(valid);
      const parts = field.split('.');
      let at = body as Record<string, unknown>;
      for (const p of parts.slice(0, -1)) at = (at[p] ??= {}) as Record<string, unknown>;
      at[parts.at(-1)!] = v;
      out.push({ name: `${path} ${field}=${JSON.stringify(v)?.slice(0, 40)}`, method: 'POST', path, body: JSON.stringify(body) });
    }
    const body = structuredClone(valid);
    delete (body as Record<string, unknown>)[field];
    out.push({ name: `${path} without ${field}`, method: 'POST', path, body: JSON.stringify(body) });
  }
  return out;
}

const deep = (n: number): string => `${'['.repeat(n)}1${']'.repeat(n)}`;

function rawCases(path: string): Case[] {
  const json = { 'content-type': 'application/json' };
  return [
    { name: `${path} empty body`, method: 'POST', path, headers: json, body: '' },
    { name: `${path} truncated JSON`, method: 'POST', path, headers: json, body: '{"model": "tiny", "prompt": ' },
    { name: `${path} not an object`, method: 'POST', path, headers: json, body: '[1,2,3]' },
    { name: `${path} a string`, method: 'POST', path, headers: json, body: '"hello"' },
    { name: `${path} invalid UTF-8`, method: 'POST', path, headers: json, body: '{"model":"\xff\xfe"}' },
    { name: `${path} deep nesting`, method: 'POST', path, headers: json, body: `{"model":"tiny","x":${deep(20000)}}` },
    { name: `${path} text/plain`, method: 'POST', path, headers: { 'content-type': 'text/plain' }, body: 'hello' },
    { name: `${path} no content type`, method: 'POST', path, headers: {}, body: '{}' },
    { name: `${path} form-urlencoded`, method: 'POST', path, headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: 'a=b' },
    { name: `${path} 9 MB`, method: 'POST', path, headers: json, body: JSON.stringify({ model: 'tiny', prompt: 'y'.repeat(9 * 1024 * 1024) }) },
    { name: `${path} 7 MB prompt`, method: 'POST', path, headers: json, body: JSON.stringify({ model: 'tiny', prompt: 'y'.repeat(7 * 1024 * 1024), inputs: 'y'.repeat(100), messages: [{ role: 'user', content: 'z'.repeat(7 * 1024 * 1024) }] }) },
    { name: `${path} duplicate keys`, method: 'POST', path, headers: json, body: '{"model":"tiny","model":"nope","prompt":"x","inputs":"x","messages":[{"role":"user","content":"x"}],"max_tokens":1}' },
  ];
}

const chat = { model: 'alpha', messages: [{ role: 'user', content: 'hi' }], max_tokens: 1 };
const completion = { model: 'tiny', prompt: 'hi', max_tokens: 1 };
const generate = { inputs: 'hi', parameters: { max_new_tokens: 1 } };
const common = ['model', 'max_tokens', 'temperature', 'top_p', 'n', 'stream', 'stream_options', 'stop', 'seed', 'presence_penalty', 'frequency_penalty', 'logit_bias', 'user', 'top_k', 'min_p', 'repetition_penalty', 'stop_token_ids', 'ignore_eos', 'adapter_id', 'merged_adapters', 'merged_adapters.ids', 'merged_adapters.weights'];

function uploadCases(): Case[] {
  const cfg = JSON.parse(readFileSync(join(alpha.dir, 'adapter_config.json'), 'utf8')) as Record<string, unknown>;
  const weights = readFileSync(join(alpha.dir, 'adapter_model.safetensors'));
  const form = (name: string | null, files: [string, Buffer | string][]): FormData => {
    const f = new FormData();
    if (name !== null) f.append('name', name);
    for (const [n, d] of files) f.append('file', new Blob([d]), n);
    return f;
  };
  const out: Case[] = [];
  const add = (name: string, body: FormData): void => {
    out.push({ name: `upload ${name}`, method: 'POST', path: '/admin/adapters', body });
  };
  const badConfigs: Record<string, unknown>[] = [
    { r: -1 }, { r: 0 }, { r: 'x' }, { r: 1e9 }, { r: 2.5 }, { lora_alpha: -3 }, { lora_alpha: 'NaN' }, { lora_alpha: 1e300 }, { target_modules: 5 }, { target_modules: ['nope'] },
    { target_modules: [] }, { target_modules: '(' }, { peft_type: 'IA3' }, { use_dora: true }, { use_dora: 'yes' }, { modules_to_save: ['lm_head'] }, { bias: 'all' }, { fan_in_fan_out: true }, { rank_pattern: { q_proj: -1 } }, { rank_pattern: [] }, { alpha_pattern: { q_proj: 'x' } },
    { rank_pattern: { q_proj: 64 } }, { r: 2 }, { target_modules: ['q_proj'] },
  ];
  for (const patch of badConfigs) add(`config ${JSON.stringify(patch)}`, form('sweep-a', [['adapter_config.json', JSON.stringify({ ...cfg, ...patch })], ['adapter_model.safetensors', weights]]));
  for (const raw of ['', 'null', '[]', '"x"', '{', HUGE, JSON.stringify({ ...cfg, target_modules: JSON.parse(deep(100)) })]) {
    add(`config text ${raw.slice(0, 20)}`, form('sweep-b', [['adapter_config.json', raw], ['adapter_model.safetensors', weights]]));
  }
  const header = (json: string): Buffer => {
    const h = Buffer.from(json);
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(h.length));
    return Buffer.concat([len, h]);
  };
  const badWeights: [string, Buffer][] = [
    ['empty', Buffer.alloc(0)], ['7 bytes', Buffer.alloc(7)], ['truncated', weights.subarray(0, weights.length - 100)], ['header only', weights.subarray(0, 8 + Number(weights.readBigUInt64LE(0)))],
    ['header length 2^63', Buffer.from([0, 0, 0, 0, 0, 0, 0, 0x80])], ['header not JSON', header('{nope')], ['header an array', header('[]')], ['unknown dtype', header('{"x":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}')],
    ['bad offsets', header('{"x":{"dtype":"F32","shape":[1],"data_offsets":[8,0]}}')], ['negative shape', header('{"x":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}')], ['no factors', header('{}')],
    ['garbage', Buffer.from(HUGE)],
  ];
  for (const [what, data] of badWeights) add(`weights ${what}`, form('sweep-c', [['adapter_config.json', JSON.stringify(cfg)], ['adapter_model.safetensors', data]]));
  const badNames = ['', '.', '..', '../x', '/abs', 'a/b/c', 'a b', 'é', 'a'.repeat(129), '-x', 'x.', 'x/', '/x', 'x//y', 'tiny', '\u0000', 'CON', 'a\\b'];
  for (const n of badNames) add(`name ${JSON.stringify(n).slice(0, 30)}`, form(n, [['adapter_config.json', JSON.stringify(cfg)], ['adapter_model.safetensors', weights]]));
  add('no name', form(null, [['adapter_config.json', JSON.stringify(cfg)], ['adapter_model.safetensors', weights]]));
  add('no files', form('sweep-d', []));
  add('config only', form('sweep-e', [['adapter_config.json', JSON.stringify(cfg)]]));
  add('a file twice', form('sweep-f', [['adapter_config.json', JSON.stringify(cfg)], ['adapter_config.json', JSON.stringify(cfg)], ['adapter_model.safetensors', weights]]));
  add('an unexpected file', form('sweep-g', [['adapter_config.json', JSON.stringify(cfg)], ['adapter_model.safetensors', weights], ['evil.sh', 'rm -rf /']]));
  add('a pickle', form('sweep-h', [['adapter_config.json', JSON.stringify(cfg)], ['adapter_model.bin', 'pickle']]));
  for (const arch of ['a.zip', 'a.tar.gz', 'a.tgz', 'a.tar']) add(`garbage ${arch}`, form('sweep-i', [[arch, HUGE]]));
  return out;
}

function nameRouteCases(): Case[] {
  const names = ['..%2F..%2Fetc', '%00', 'a'.repeat(129), 'a'.repeat(300), '%E2%80%AE', 'x%20y', 'nope', 'org/nope', 'a/b/c'];
  return names.flatMap((n) => [
    { name: `GET adapter ${n.slice(0, 20)}`, method: 'GET', path: `/admin/adapters/${n}` },
    { name: `DELETE adapter ${n.slice(0, 20)}`, method: 'DELETE', path: `/admin/adapters/${n}` },
    { name: `load adapter ${n.slice(0, 20)}`, method: 'POST', path: `/admin/adapters/${n}/load` },
  ]);
}

const cases: Case[] = [
  ...jsonCases('/v1/chat/completions', chat, [...common, 'messages', 'messages.0', 'max_completion_tokens', 'logprobs', 'top_logprobs', 'tools', 'tool_choice', 'response_format', 'add_generation_prompt']),
  ...jsonCases('/v1/completions', completion, [...common, 'prompt', 'logprobs', 'echo', 'suffix', 'best_of']),
  ...jsonCases('/generate', generate, ['inputs', 'parameters', 'parameters.max_new_tokens', 'parameters.temperature', 'parameters.top_p', 'parameters.top_k', 'parameters.stop', 'parameters.seed', 'parameters.adapter_id', 'parameters.merged_adapters', 'parameters.details']),
  ...jsonCases('/generate_stream', generate, ['inputs', 'parameters.max_new_tokens', 'parameters.repetition_penalty', 'parameters.do_sample']),
  ...jsonCases('/v1/load_lora_adapter', { lora_name: 'x', lora_path: '/nonexistent' }, ['lora_name', 'lora_path']),
  ...jsonCases('/v1/unload_lora_adapter', { lora_name: 'nope' }, ['lora_name']),
  ...['/v1/chat/completions', '/v1/completions', '/generate', '/generate_stream'].flatMap(rawCases),
  ...uploadCases(),
  ...nameRouteCases(),
];

const TGI = new Set(['/generate', '/generate_stream']);

describe('malformed-input sweep', () => {
  it(`${cases.length} hostile requests: no 5xx, none hangs, every error in the route's shape; the server is unchanged after`, async () => {
    expect(cases.length).toBeGreaterThanOrEqual(500);
    const probe = async (): Promise<string> => {
      const r = await fetch(`${base}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'alpha', prompt: [1, 2, 3], max_tokens: 6, temperature: 0 }) });
      return ((await r.json()) as { choices: { text: string }[] }).choices[0].text;
    };
    const before = await probe();
    const problems: string[] = [];
    const statuses = new Map<number, number>();
    // Four at a time: hostile clients come in parallel too.
    for (let i = 0; i < cases.length; i += 4) {
      await Promise.all(
        cases.slice(i, i + 4).map(async (c) => {
          const headers = c.headers ?? (typeof c.body === 'string' ? { 'content-type': 'application/json' } : {});
          let status: number;
          let text: string;
          try {
            const r = await fetch(`${base}${c.path}`, { method: c.method, headers: { authorization: `Bearer ${ADMIN}`, ...headers }, body: c.body, signal: AbortSignal.timeout(180_000) });
            status = r.status;
            text = await r.text();
          } catch (err) {
            problems.push(`${c.name}: ${(err as Error).name} ${(err as Error).message}`);
            return;
          }
          statuses.set(status, (statuses.get(status) ?? 0) + 1);
          if (status >= 500) problems.push(`${c.name}: ${status} ${text.slice(0, 200)}`);
          else if (status >= 400) {
            let body: unknown;
            try {
              body = JSON.parse(text);
            } catch {
              problems.push(`${c.name}: ${status} with a body that is not JSON: ${text.slice(0, 100)}`);
              return;
            }
            const ok = TGI.has(c.path)
              ? typeof (body as { error?: unknown }).error === 'string' && typeof (body as { error_type?: unknown }).error_type === 'string'
              : typeof (body as { error?: { message?: unknown } }).error?.message === 'string' && typeof (body as { error?: { type?: unknown } }).error?.type === 'string';
            if (!ok) problems.push(`${c.name}: ${status} not in the route's error shape: ${text.slice(0, 200)}`);
          }
        }),
      );
    }
    expect(problems).toEqual([]);
    expect([...statuses.keys()].every((s) => s < 500)).toBe(true);
    expect((await fetch(`${base}/health`)).status).toBe(200);
    expect(await probe()).toBe(before);
    const stats = await server.ctx.engine!.stats();
    expect(stats).toMatchObject({ kvReservedTokens: 0 });
  });
});
