/**
 * Several replicas, one store: two (then three) real `loraplex serve` processes on one adapter
 * directory. Each sees the others' uploads, replacements and deletes within the poll interval;
 * a request in flight keeps the version it started with; concurrent uploads of one name end in one
 * consistent state; a replica starting up does not disturb an upload in progress on another.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ADMIN, tinyQwen, until } from '../helpers/server.js';
import { makeTinyAdapter, tempDir } from '../helpers/tiny-model.js';

const CLI = join(import.meta.dirname, '../../src/cli/index.ts');
const tm = tinyQwen(401, 1024);
const v1 = makeTinyAdapter(tm, { seed: 402, r: 4 });
const v2 = makeTinyAdapter(tm, { seed: 403, r: 8 });
const store = tempDir('loraplex-replicas-');
const cacheDir = tempDir();
const POLL_MS = 250;

interface Replica {
  url: string;
  child: ChildProcess;
  out: () => string;
}

async function startReplica(): Promise<Replica> {
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', CLI, 'serve', '--model', tm.dir, '--adapters', store, '--admin-token', ADMIN, '--port', '0', '--host', '127.0.0.1', '--quant', 'fp32', '--threads', '1', '--cache-dir', cacheDir, '--store-poll-ms', String(POLL_MS), '--served-model-name', 'tiny',
      // An upload below pauses while another replica starts, which can take minutes on a saturated machine.
      '--body-timeout-ms', '600000'],
    { env: { ...process.env, LORAPLEX_LOG_LEVEL: 'info' } },
  );
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (out += d));
  await until(() => /"msg":"ready: model tiny/.test(out) || child.exitCode !== null, 120_000);
  const m = /listening on (http:\/\/[^ ]+) /.exec(out);
  if (!m) throw new Error(`replica did not start: ${out}`);
  return { url: m[1], child, out: () => out };
}

const replicas: Replica[] = [];
beforeAll(async () => {
  replicas.push(await startReplica(), await startReplica());
}, 600_000);
afterAll(() => {
  for (const r of replicas) r.child.kill('SIGKILL');
});

function form(name: string | null, dir: string): FormData {
  const f = new FormData();
  if (name) f.append('name', name);
  for (const file of ['adapter_config.json', 'adapter_model.safetensors']) f.append('file', new Blob([readFileSync(join(dir, file))]), file);
  return f;
}

const admin = (r: Replica, path: string, init: RequestInit = {}) => fetch(`${r.url}${path}`, { ...init, headers: { authorization: `Bearer ${ADMIN}`, ...(init.headers as Record<string, string>) } });

async function digestOn(r: Replica, name: string): Promise<string | null> {
  const list = (await (await fetch(`${r.url}/v1/models`)).json()) as { data: { id: string; digest?: string }[] };
  return list.data.find((m) => m.id === name)?.digest ?? null;
}

async function greedy(r: Replica, model: string, n: number): Promise<string> {
  const res = await fetch(`${r.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model, prompt: [11, 22, 33], max_tokens: n, temperature: 0, ignore_eos: true }) });
  return ((await res.json()) as { choices: { text: string }[] }).choices[0].text;
}

/** Waits until `r` serves `name` at `digest` (null: not at all); returns how long that took (ms). */
async function propagation(r: Replica, name: string, digest: string | null): Promise<number> {
  const t0 = Date.now();
  await until(async () => (await digestOn(r, name)) === digest, 120_000);
  return Date.now() - t0;
}

describe('two replicas on one store', () => {
  const delays: number[] = [];

  it('an upload on one replica is served by the other within the poll interval', async () => {
    const [a, b] = replicas;
    const up = await admin(a, '/admin/adapters', { method: 'POST', body: form('shared', v1.dir) });
    expect(up.status).toBe(201);
    const { digest } = (await up.json()) as { digest: string };
    delays.push(await propagation(b, 'shared', digest));
    expect(await greedy(b, 'shared', 8)).toBe(await greedy(a, 'shared', 8));
  });

  it('a replacement on one replica reaches the other, and a request in flight keeps its version', async () => {
    const [a, b] = replicas;
    const before = await greedy(b, 'shared', 300);
    // A long stream on B, started on the old version...
    const res = await fetch(`${b.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'shared', prompt: [11, 22, 33], max_tokens: 300, temperature: 0, ignore_eos: true, stream: true }) });
    const reader = res.body!.getReader();
    const first = await reader.read();
    // ...while A replaces it and B picks the replacement up.
    const put = await admin(a, '/admin/adapters/shared', { method: 'PUT', body: form(null, v2.dir) });
    expect(put.status).toBe(200);
    const { digest } = (await put.json()) as { digest: string };
    delays.push(await propagation(b, 'shared', digest));
    let text = new TextDecoder().decode(first.value);
    for (;;) {
      const r = await reader.read();
      if (r.done) break;
      text += new TextDecoder().decode(r.value);
    }
    const streamed = text
      .split('\n\n')
      .filter((l) => l.startsWith('data: {'))
      .map((l) => (JSON.parse(l.slice(6)) as { choices: { text: string }[] }).choices[0]?.text ?? '')
      .join('');
    expect(streamed).toBe(before);
    const after = await greedy(b, 'shared', 300);
    expect(after).not.toBe(before);
    expect(await greedy(a, 'shared', 300)).toBe(after);
  });

  it('a delete on one replica reaches the other; the name can be created again as a new version', async () => {
    const [a, b] = replicas;
    const del = await admin(b, '/admin/adapters/shared', { method: 'DELETE' });
    expect(del.status).toBe(202);
    delays.push(await propagation(a, 'shared', null));
    expect((await fetch(`${a.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'shared', prompt: 'x', max_tokens: 1 }) })).status).toBe(404);
    const again = await admin(a, '/admin/adapters', { method: 'POST', body: form('shared', v1.dir) });
    expect(again.status).toBe(201);
    delays.push(await propagation(b, 'shared', ((await again.json()) as { digest: string }).digest));
  });

  it('concurrent uploads of one name on both replicas: exactly one wins, both agree', async () => {
    const [a, b] = replicas;
    const [ra, rb] = await Promise.all([admin(a, '/admin/adapters', { method: 'POST', body: form('race', v1.dir) }), admin(b, '/admin/adapters', { method: 'POST', body: form('race', v2.dir) })]);
    expect([ra.status, rb.status].sort()).toEqual([201, 409]);
    const winner = ((await (ra.status === 201 ? ra : rb).json()) as { digest: string }).digest;
    await propagation(a, 'race', winner);
    await propagation(b, 'race', winner);
  });

  it('a replica starting up leaves an upload in progress on another alone', async () => {
    const [a] = replicas;
    const parts = form('slow', v2.dir);
    const encoded = new Response(parts);
    const type = encoded.headers.get('content-type')!;
    const body = await encoded.arrayBuffer();
    const bytes = new Uint8Array(body);
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const stream = new ReadableStream<Uint8Array>({
      async start(c) {
        c.enqueue(bytes.subarray(0, bytes.length >> 1));
        await gate;
        c.enqueue(bytes.subarray(bytes.length >> 1));
        c.close();
      },
    });
    const upload = fetch(`${a.url}/admin/adapters`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN}`, 'content-type': type }, body: stream, duplex: 'half' } as RequestInit);
    await new Promise((r) => setTimeout(r, 300));
    replicas.push(await startReplica());
    release();
    const r = await upload;
    expect(r.status, await r.clone().text()).toBe(201);
    await propagation(replicas[2], 'slow', ((await r.json()) as { digest: string }).digest);
  });

  afterAll(() => {
    // The propagation delays seen (poll interval 250 ms): reported in the test output.
    process.stdout.write(`replica propagation delays (ms): ${delays.join(', ')}\n`);
  });
});
