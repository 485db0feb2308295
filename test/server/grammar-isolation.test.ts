/**
 * A grammar that takes XGrammar minutes to compile (a regex of nested bounded repeats, well under
 * the size caps) must not stall other tenants: it is compiled first on the checker thread, refused
 * with a 400 once it overruns --grammar-compile-timeout-ms, and while it compiles a constrained
 * stream already running keeps getting tokens. Afterwards new grammars compile as before.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type RunningServer } from '../../src/server/serve.js';
import { postJson, testConfig, tinyQwen } from '../helpers/server.js';

const tm = tinyQwen(901, 4096);
const HOSTILE = '(([a-z]{1,100}){1,100}){1,100}';

let server: RunningServer;
beforeAll(async () => {
  server = await startServer(testConfig({ model: tm.dir, port: 0, host: '127.0.0.1', servedModelName: 'tiny', grammarCompileTimeoutMs: 3000 }), { logger: false });
  await server.ready;
});
afterAll(async () => {
  await server?.close(0);
});

describe('a grammar that compiles for minutes', () => {
  it('is refused at its budget while a running constrained stream keeps its tokens coming', async () => {
    // A constrained stream that runs for a long while (its grammar cannot complete within max_tokens).
    const abort = new AbortController();
    const running = await fetch(`${server.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'tiny', prompt: 'Words:', max_tokens: 3500, stream: true, guided_regex: '[a-z ]{20000}' }),
      signal: abort.signal,
    });
    expect(running.status).toBe(200);
    let tokens = 0;
    const reader = running.body!.getReader();
    const reading = (async () => {
      try {
        for (;;) {
          const { done, value } = await reader.read();
          if (done) return;
          tokens += (new TextDecoder().decode(value).match(/"text":/g) ?? []).length;
        }
      } catch {
        // aborted below
      }
    })();
    while (tokens < 3) await new Promise((r) => setTimeout(r, 20));

    const before = tokens;
    const hostile = await postJson(server.url, '/v1/completions', { model: 'tiny', prompt: 'x', max_tokens: 4, guided_regex: HOSTILE });
    const during = tokens - before;
    const body = (await hostile.json()) as { error: { code: string; param: string; message: string } };
    expect(hostile.status).toBe(400);
    expect(body.error.code).toBe('invalid_grammar');
    expect(body.error.message).toMatch(/longer than 3000 ms/);
    // The running stream was not held up while the hostile grammar compiled.
    expect(during).toBeGreaterThan(10);

    // The checker was replaced; a new grammar compiles and constrains as before.
    const after = await postJson(server.url, '/v1/completions', { model: 'tiny', prompt: 'Date:', max_tokens: 20, guided_regex: '20[0-9]{2}-[01][0-9]' });
    expect(after.status).toBe(200);
    expect(((await after.json()) as { choices: { text: string }[] }).choices[0].text).toMatch(/^20[0-9]{2}-[01][0-9]$/);
    abort.abort();
    await reading;
  }, 600_000);
});
