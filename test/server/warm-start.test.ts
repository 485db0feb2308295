/**
 * Warm start: what a first request would pay for is paid before /health says ready. The grammar
 * thread and its checker have compiled the warm-up specs by then, so even with a compile budget of
 * 1 ms of CPU time a `json_object` request — the first constrained request this server sees — is
 * served, while a schema it has never seen is refused at that budget (400, naming it).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type RunningServer } from '../../src/server/serve.js';
import { postJson, testConfig, tinyQwen } from '../helpers/server.js';

const tm = tinyQwen(907);
let server: RunningServer;
beforeAll(async () => {
  server = await startServer(testConfig({ model: tm.dir, port: 0, host: '127.0.0.1', servedModelName: 'tiny', grammarCompileTimeoutMs: 1 }), { logger: false });
  await server.ready;
});
afterAll(async () => {
  await server?.close(0);
});

describe('warm start', () => {
  it('the first constrained request finds the grammar threads warm', async () => {
    expect((await fetch(`${server.url}/health`)).status).toBe(200);
    const first = await postJson(server.url, '/v1/chat/completions', { model: 'tiny', messages: [{ role: 'user', content: 'Hi' }], max_tokens: 5, response_format: { type: 'json_object' } });
    expect(first.status).toBe(200);
    const fresh = await postJson(server.url, '/v1/chat/completions', {
      model: 'tiny',
      messages: [{ role: 'user', content: 'Hi' }],
      max_tokens: 5,
      response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'object', properties: { never_seen: { type: 'array', items: { type: 'string', pattern: '^[a-z]{1,9}$' } } } } } },
    });
    expect(fresh.status).toBe(400);
    const body = (await fresh.json()) as { error: { code: string; message: string } };
    expect(body.error.code).toBe('invalid_grammar');
    expect(body.error.message).toMatch(/longer than 1 ms of CPU time/);
  });
});
