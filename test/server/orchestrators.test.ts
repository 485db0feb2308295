/**
 * Orchestrators that load adapters into model servers, against a real server. AIBrix's adapter
 * controller (pkg/controller/modeladapter/lora_client.go) talks to each pod as to vLLM:
 *   GET  /v1/models                                     -> 200, {"data":[{"id"}]}; a listed id counts as loaded
 *   POST /v1/load_lora_adapter   {"lora_name","lora_path"} -> success is 200 or 201
 *   POST /v1/unload_lora_adapter {"lora_name"}             -> 200 or 201, anything else is logged and ignored
 * all with the ModelAdapter's `additionalConfig["api-key"]`, when set, as `Authorization: Bearer`, and
 * JSON bodies with `Content-Type: application/json`. `huggingface://org/name` reaches us as `org/name`;
 * other artifact URLs (s3://, gcs://, ...) are passed on unchanged.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type RunningServer } from '../../src/server/serve.js';
import { ADMIN, testConfig, tinyQwen } from '../helpers/server.js';
import { makeTinyAdapter, tempDir } from '../helpers/tiny-model.js';

const TENANT = 'tenant-key';
const tm = tinyQwen(901);
const root = tempDir('loraplex-orchestrators-');
const dirOf = (name: string): string => join(root, name);
for (const [name, seed] of [['sql', 902], ['other', 903]] as const) {
  mkdirSync(dirOf(name));
  makeTinyAdapter(tm, { seed }, dirOf(name));
}
mkdirSync(dirOf('empty'));
writeFileSync(join(root, 'a-file'), 'not an adapter');

let server: RunningServer;

beforeAll(async () => {
  // The token AIBrix sends is the admin token, listed among the API keys too: AIBrix sends one
  // `api-key` on /v1/models (an inference route) and on load/unload (admin routes).
  server = await startServer(testConfig({ model: tm.dir, port: 0, host: '127.0.0.1', adminToken: ADMIN, apiKeys: `${ADMIN},${TENANT}`, loraRoots: root }), { logger: false });
  await server.ready;
});
afterAll(async () => {
  await server?.close();
});

/** What AIBrix's lora client sends: its headers exactly, its body as Go's json.Marshal writes it. */
const aibrix = {
  models: (token: string | null = ADMIN) => fetch(`${server.url}/v1/models`, { headers: token ? { authorization: `Bearer ${token}` } : {} }),
  post: (path: string, payload: Record<string, string>, token: string | null = ADMIN) =>
    fetch(`${server.url}${path}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', ...(token ? { Authorization: `Bearer ${token}` } : {}) },
      body: JSON.stringify(payload),
    }),
  load: (name: string, path: string, token: string | null = ADMIN) => aibrix.post('/v1/load_lora_adapter', { lora_name: name, lora_path: path }, token),
  unload: (name: string, token: string | null = ADMIN) => aibrix.post('/v1/unload_lora_adapter', { lora_name: name }, token),
  /** LoadAdapter: list the models, load only when the name is not listed. */
  async ensureLoaded(name: string, path: string): Promise<'exists' | 'loaded'> {
    const r = await aibrix.models();
    expect(r.status).toBe(200);
    const ids = ((await r.json()) as { data: { id: string }[] }).data.map((m) => m.id);
    if (ids.includes(name)) return 'exists';
    const l = await aibrix.load(name, path);
    expect([200, 201]).toContain(l.status);
    return 'loaded';
  },
};

const modelIds = async (): Promise<string[]> => ((await (await aibrix.models()).json()) as { data: { id: string }[] }).data.map((m) => m.id);

const chat = (model: string) =>
  fetch(`${server.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${TENANT}` },
    body: JSON.stringify({ model, messages: [{ role: 'user', content: 'hi' }], max_tokens: 3 }),
  });

const errorOf = async (r: Response): Promise<{ code: string; param: string | null; message: string }> => ((await r.json()) as { error: { code: string; param: string | null; message: string } }).error;

describe('AIBrix adapter controller', () => {
  it('loads with its request, then the adapter is listed and serves chat completions; unload removes it', async () => {
    expect(await aibrix.ensureLoaded('sql', dirOf('sql'))).toBe('loaded');
    expect(await modelIds()).toContain('sql');
    // The next reconcile finds it listed and does not load again.
    expect(await aibrix.ensureLoaded('sql', dirOf('sql'))).toBe('exists');

    const c = await chat('sql');
    expect(c.status).toBe(200);
    const body = (await c.json()) as { model: string; choices: { message: { content: string } }[] };
    expect(body.model).toBe('sql');
    expect(body.choices).toHaveLength(1);

    const u = await aibrix.unload('sql');
    expect(u.status).toBe(200);
    expect(await modelIds()).not.toContain('sql');
    expect((await chat('sql')).status).toBe(404);
    // Loaded again after an unload (a ModelAdapter re-created, or rescheduled to this pod).
    expect(await aibrix.ensureLoaded('sql', dirOf('sql'))).toBe('loaded');
    expect((await chat('sql')).status).toBe(200);
    expect((await aibrix.unload('sql')).status).toBe(200);
  });

  it('loading a name again from the same directory succeeds (a retry); from another directory is a conflict', async () => {
    expect((await aibrix.load('twice', dirOf('sql'))).status).toBe(200);
    const again = await aibrix.load('twice', dirOf('sql'));
    expect(again.status).toBe(200);
    const other = await aibrix.load('twice', dirOf('other'));
    expect(other.status).toBe(409);
    expect(await errorOf(other)).toMatchObject({ code: 'conflict', param: 'lora_name' });
    expect((await chat('twice')).status).toBe(200);
    expect((await aibrix.unload('twice')).status).toBe(200);
  });

  it('unloading an unknown name is a 404 (AIBrix logs it and carries on)', async () => {
    const r = await aibrix.unload('never-loaded');
    expect(r.status).toBe(404);
    expect(await errorOf(r)).toMatchObject({ code: 'model_not_found', param: 'lora_name' });
  });

  it('refuses remote URIs and Hub ids clearly: adapters are read from directories on disk only', async () => {
    for (const uri of ['s3://bucket/adapters/sql', 'gcs://bucket/sql', 'https://example.com/sql.tar.gz']) {
      const r = await aibrix.load('remote', uri);
      expect(r.status).toBe(400);
      const e = await errorOf(r);
      expect(e).toMatchObject({ code: 'invalid_parameter', param: 'lora_path' });
      expect(e.message).toContain('remote URI');
      expect(e.message).toContain(`${uri.split(':')[0]}://`);
    }
    // What AIBrix sends for huggingface://yard1/llama-2-7b-sql-lora-test.
    const hub = await aibrix.load('remote', 'yard1/llama-2-7b-sql-lora-test');
    expect(hub.status).toBe(400);
    const e = await errorOf(hub);
    expect(e).toMatchObject({ code: 'invalid_parameter', param: 'lora_path' });
    expect(e.message).toContain('Hub ids are not downloaded');
    expect(await modelIds()).not.toContain('remote');
  });

  it('refuses a directory that holds no adapter, a file, and a path outside --lora-roots', async () => {
    const seen: unknown[] = [];
    for (const path of [dirOf('empty'), join(root, 'a-file'), tm.dir, '/nonexistent/adapter']) {
      const r = await aibrix.load('bad', path);
      const { code, param } = await errorOf(r);
      seen.push({ status: r.status, code, param });
    }
    const invalid = { status: 422, code: 'adapter_invalid', param: 'adapter_config' };
    const refused = { status: 400, code: 'invalid_parameter', param: 'lora_path' };
    expect(seen).toEqual([invalid, invalid, refused, refused]);
    expect(await modelIds()).not.toContain('bad');
  });

  it('needs the admin token: an API key alone lists models but cannot load or unload', async () => {
    expect((await aibrix.models(TENANT)).status).toBe(200);
    expect((await aibrix.load('tenant', dirOf('sql'), TENANT)).status).toBe(401);
    expect((await aibrix.load('tenant', dirOf('sql'), null)).status).toBe(401);
    expect((await aibrix.models(null)).status).toBe(401);
    expect((await aibrix.unload('sql', TENANT)).status).toBe(401);
    expect(await modelIds()).not.toContain('tenant');
  });
});
