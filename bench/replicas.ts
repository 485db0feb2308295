/**
 * Replicas behind HAProxy, shared by test/deploy/haproxy.test.ts and the `lb` bench section: real
 * `loraplex serve` processes on one adapter store, HAProxy run from deploy/haproxy/haproxy.cfg (its
 * "@lb-..." lines rewritten for the ports and socket at hand), HAProxy's runtime API, a zipf mix
 * of requests sent through the proxy, and the replicas' host-cache counters.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { createConnection, createServer } from 'node:net';
import { join, resolve } from 'node:path';
import { writeRandomPeftAdapter } from '../src/adapters/random.js';
import { Checkpoint } from '../src/runtime/checkpoint/checkpoint.js';
import { prng } from '../src/util/prng.js';
import { zipfPicker } from './lib.js';

const CLI = join(import.meta.dirname, '../src/cli/index.ts');
export const SHIPPED_CONFIG = join(import.meta.dirname, '../deploy/haproxy/haproxy.cfg');
export const AFFINITY_BACKEND = 'loraplex_affinity';
export const ROUND_ROBIN_BACKEND = 'loraplex_roundrobin';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls `cond` every 50 ms until true; throws after `ms` with `what`. */
export async function waitFor(what: string, cond: () => boolean | Promise<boolean>, ms = 300_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

/** True when an `haproxy` binary is on PATH. */
export function haproxyAvailable(): boolean {
  return spawnSync('haproxy', ['-v'], { encoding: 'utf8' }).status === 0;
}

export function haproxyVersion(): string {
  return /HAProxy version (\S+)/.exec(spawnSync('haproxy', ['-v'], { encoding: 'utf8' }).stdout ?? '')?.[1] ?? 'unknown';
}

/** A TCP port free right now on 127.0.0.1. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

/** `n` random rank-`rank` PEFT adapters a0..a{n-1} for the model in `modelDir`, written into `store` (once). Returns one adapter's file size. */
export function writeAdapters(store: string, modelDir: string, n: number, opts: { rank: number; seed: number }): number {
  const ckpt = Checkpoint.open(modelDir);
  try {
    for (let i = 0; i < n; i++) {
      const dir = join(store, `a${i}`);
      try {
        statSync(join(dir, 'adapter_model.safetensors'));
      } catch {
        writeRandomPeftAdapter(dir, ckpt.spec, { rank: opts.rank, seed: opts.seed + i });
      }
    }
  } finally {
    ckpt.close();
  }
  return statSync(join(store, 'a0', 'adapter_model.safetensors')).size;
}

export interface ReplicaOptions {
  modelDir: string;
  store: string;
  cacheDir: string;
  adminToken: string;
  adapterCacheBytes: number;
  storePollMs: number;
  servedModelName: string;
  /** More `serve` flags (e.g. --quant fp32 --threads 1). */
  extra?: string[];
}

export interface Replica {
  name: string;
  port: number;
  url: string;
  child: ChildProcess;
  out: () => string;
}

/** Starts `loraplex serve` on 127.0.0.1:`port` and waits until its /health answers 200. */
export async function startReplica(name: string, port: number, o: ReplicaOptions): Promise<Replica> {
  const args = [
    '--import', 'tsx', CLI, 'serve',
    '--model', o.modelDir, '--adapters', o.store, '--cache-dir', o.cacheDir, '--admin-token', o.adminToken,
    '--host', '127.0.0.1', '--port', String(port), '--served-model-name', o.servedModelName,
    '--store-poll-ms', String(o.storePollMs), '--adapter-cache-bytes', String(o.adapterCacheBytes),
    // Starting takes minutes on a saturated machine; an upload may wait on it.
    '--body-timeout-ms', '600000',
    ...(o.extra ?? []),
  ];
  const child = spawn(process.execPath, args, { env: { ...process.env, LORAPLEX_LOG_LEVEL: 'warn' }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const keep = (d: Buffer) => (out = (out + d.toString()).slice(-20_000));
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  const url = `http://127.0.0.1:${port}`;
  try {
    await waitFor(`replica ${name} on port ${port} to get ready`, async () => {
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`replica ${name} exited (${child.exitCode ?? child.signalCode}): ${out.slice(-3000)}`);
      return (await fetch(`${url}/health`).catch(() => null))?.status === 200;
    }, 600_000);
  } catch (err) {
    child.kill('SIGKILL');
    throw err;
  }
  return { name, port, url, child, out: () => out };
}

/** Signals the replica and waits until the process is gone. */
export async function stopReplica(r: Replica, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (r.child.exitCode !== null || r.child.signalCode !== null) return;
  const gone = new Promise<void>((resolve) => r.child.once('exit', () => resolve()));
  r.child.kill(signal);
  await gone;
}

/**
 * The shipped deploy/haproxy/haproxy.cfg with its "@lb-..." lines rewritten: the two frontends'
 * ports, the runtime API socket, and each backend's server list.
 */
export function haproxyConfig(o: { affinityPort: number; roundRobinPort: number; socket: string; servers: { name: string; port: number }[] }): string {
  const lines = readFileSync(SHIPPED_CONFIG, 'utf8').split('\n');
  const out: string[] = [];
  let skipping = false;
  for (const line of lines) {
    const indent = /^\s*/.exec(line)![0];
    if (line.includes('@lb-servers-end')) {
      skipping = false;
      out.push(...o.servers.map((s) => `${indent}server ${s.name} 127.0.0.1:${s.port}`));
    } else if (skipping) continue;
    else if (line.includes('@lb-servers-begin')) skipping = true;
    else if (line.includes('@lb-bind-affinity')) out.push(`${indent}bind 127.0.0.1:${o.affinityPort}`);
    else if (line.includes('@lb-bind-roundrobin')) out.push(`${indent}bind 127.0.0.1:${o.roundRobinPort}`);
    else if (line.includes('@lb-socket')) out.push(`${indent}stats socket ${o.socket} mode 600 level admin`);
    else if (/^\s*log stdout/.test(line)) continue;
    else out.push(line);
  }
  return out.join('\n');
}

export interface Haproxy {
  child: ChildProcess;
  socket: string;
  affinityUrl: string;
  roundRobinUrl: string;
  out: () => string;
}

/** Writes the config into `dir`, checks it (`haproxy -c`) and runs HAProxy in the foreground until its runtime API answers. */
export async function startHaproxy(dir: string, servers: { name: string; port: number }[]): Promise<Haproxy> {
  mkdirSync(dir, { recursive: true });
  const [affinityPort, roundRobinPort] = [await freePort(), await freePort()];
  // Absolute: HAProxy reads a relative path as a host name.
  const socket = resolve(dir, 'haproxy.sock');
  const cfg = join(dir, 'haproxy.cfg');
  writeFileSync(cfg, haproxyConfig({ affinityPort, roundRobinPort, socket, servers }));
  const check = spawnSync('haproxy', ['-c', '-f', cfg], { encoding: 'utf8' });
  if (check.status !== 0) throw new Error(`haproxy -c refused the config: ${check.stdout}${check.stderr}`);
  const child = spawn('haproxy', ['-db', '-f', cfg], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const keep = (d: Buffer) => (out = (out + d.toString()).slice(-20_000));
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  await waitFor('haproxy to answer on its socket', async () => {
    if (child.exitCode !== null) throw new Error(`haproxy exited: ${out}`);
    return (await haproxyCommand(socket, 'show info').catch(() => '')).includes('Name: HAProxy');
  }, 60_000);
  return { child, socket, affinityUrl: `http://127.0.0.1:${affinityPort}`, roundRobinUrl: `http://127.0.0.1:${roundRobinPort}`, out: () => out };
}

/** One command on HAProxy's runtime API; its whole answer. */
export function haproxyCommand(socket: string, command: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = createConnection(socket);
    let out = '';
    c.on('connect', () => c.end(`${command}\n`));
    c.on('data', (d) => (out += d.toString()));
    c.on('end', () => resolve(out));
    c.on('error', reject);
  });
}

/** HAProxy's `show stat`: one record per proxy and server, keyed by the CSV's column names (pxname, svname, status, wretr, wredis, ...). */
export async function haproxyStats(socket: string): Promise<Record<string, string>[]> {
  const csv = (await haproxyCommand(socket, 'show stat')).trim().split('\n');
  const header = csv[0].replace(/^# /, '').split(',');
  return csv.slice(1).map((l) => Object.fromEntries(l.split(',').map((v, i) => [header[i], v])));
}

/** Each server's status in `backend` as HAProxy's stats say it ("UP", "DOWN", "UP 1/2", "DOWN 1/2", "MAINT", ...). */
export async function serverStatus(socket: string, backend: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const row of await haproxyStats(socket)) if (row.pxname === backend && row.svname !== 'BACKEND' && row.svname !== 'FRONTEND') out[row.svname] = row.status;
  return out;
}

/** Requests `backend` has retried and redispatched so far (HAProxy's wretr and wredis). */
export async function retryCounters(socket: string, backend: string): Promise<{ retries: number; redispatches: number }> {
  const row = (await haproxyStats(socket)).find((r) => r.pxname === backend && r.svname === 'BACKEND');
  return { retries: Number(row?.wretr ?? 0), redispatches: Number(row?.wredis ?? 0) };
}

/** Waits until HAProxy reports `server` exactly `status` ("UP" or "DOWN") in every backend. */
export async function waitServer(socket: string, server: string, status: 'UP' | 'DOWN', ms = 300_000): Promise<void> {
  await waitFor(`haproxy to see ${server} ${status}`, async () => {
    for (const b of [AFFINITY_BACKEND, ROUND_ROBIN_BACKEND]) if ((await serverStatus(socket, b))[server] !== status) return false;
    return true;
  }, ms);
}

/** The replica's host adapter cache counters (hits, misses) from its /metrics. */
export async function cacheCounters(url: string): Promise<{ hits: number; misses: number }> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const value = (name: string) => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1] ?? 0);
  return { hits: value('loraplex_adapter_cache_hits_total'), misses: value('loraplex_adapter_cache_misses_total') };
}

/** The summed host-cache counters of `replicas`. */
export async function totalCacheCounters(replicas: Replica[]): Promise<{ hits: number; misses: number }> {
  const all = await Promise.all(replicas.map((r) => cacheCounters(r.url)));
  return all.reduce((a, b) => ({ hits: a.hits + b.hits, misses: a.misses + b.misses }), { hits: 0, misses: 0 });
}

/** A sampler of adapter names a0..a{n-1}, zipf-distributed (a0 the most requested), deterministic for `seed`. */
export function zipfAdapters(n: number, seed: number): () => string {
  const pick = zipfPicker(n, prng(seed));
  return () => `a${pick()}`;
}

export interface Outcome {
  model: string;
  /** performance.now() when sent and when answered (ms). */
  start: number;
  end: number;
  status: number;
  /** The replica that answered (HAProxy's X-Loraplex-Replica), if any. */
  replica: string | null;
  tokens: number;
  error?: string;
}

/** One non-streamed completion through `url`; never throws (a network error is status 0). */
export async function complete(url: string, model: string, body: Record<string, unknown>): Promise<Outcome> {
  const start = performance.now();
  try {
    const res = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model, ...body }) });
    const text = await res.text();
    const tokens = res.ok ? ((JSON.parse(text) as { usage?: { completion_tokens?: number } }).usage?.completion_tokens ?? 0) : 0;
    return { model, start, end: performance.now(), status: res.status, replica: res.headers.get('x-loraplex-replica'), tokens, ...(res.ok ? {} : { error: text.slice(0, 300) }) };
  } catch (err) {
    return { model, start, end: performance.now(), status: 0, replica: null, tokens: 0, error: String((err as Error).cause ?? err) };
  }
}

/** `requests` completions from `concurrency` workers, models from `pick()` in order. */
export async function runMix(url: string, o: { requests: number; concurrency: number; pick: () => string; body: Record<string, unknown> }): Promise<{ outcomes: Outcome[]; seconds: number }> {
  const models = Array.from({ length: o.requests }, () => o.pick());
  const outcomes: Outcome[] = [];
  let next = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: o.concurrency }, async () => {
      while (next < models.length) outcomes.push(await complete(url, models[next++], o.body));
    }),
  );
  return { outcomes, seconds: (performance.now() - t0) / 1000 };
}

/** Requests sent back to back (or `pauseMs` apart) by `concurrency` workers until stop() is called; stop() resolves with every outcome. */
export function steadyLoad(url: string, o: { concurrency: number; pick: () => string; body: Record<string, unknown>; pauseMs?: number }): { outcomes: Outcome[]; stop: () => Promise<Outcome[]> } {
  const outcomes: Outcome[] = [];
  let stopped = false;
  const workers = Array.from({ length: o.concurrency }, async () => {
    while (!stopped) {
      outcomes.push(await complete(url, o.pick(), o.body));
      if (o.pauseMs) await sleep(o.pauseMs);
    }
  });
  return {
    outcomes,
    stop: async () => {
      stopped = true;
      await Promise.all(workers);
      return outcomes;
    },
  };
}

/** Affinity vs round robin on one mix: hit rate and throughput of each, from fresh replicas. */
export interface MixResult {
  requests: number;
  failed: number;
  hits: number;
  misses: number;
  hitRate: number;
  tokens: number;
  seconds: number;
  tokensPerSecond: number;
  /** Replicas that served each model. */
  replicasPerModel: Map<string, Set<string>>;
}

/** Runs the mix through `url` and reads the replicas' host-cache counters before and after. */
export async function measureMix(url: string, replicas: Replica[], o: { requests: number; concurrency: number; pick: () => string; body: Record<string, unknown> }): Promise<MixResult> {
  const before = await totalCacheCounters(replicas);
  const { outcomes, seconds } = await runMix(url, o);
  const after = await totalCacheCounters(replicas);
  const hits = after.hits - before.hits;
  const misses = after.misses - before.misses;
  const tokens = outcomes.reduce((n, x) => n + x.tokens, 0);
  const replicasPerModel = new Map<string, Set<string>>();
  for (const x of outcomes) if (x.replica) replicasPerModel.set(x.model, (replicasPerModel.get(x.model) ?? new Set()).add(x.replica));
  return { requests: outcomes.length, failed: outcomes.filter((x) => x.status !== 200).length, hits, misses, hitRate: hits / Math.max(1, hits + misses), tokens, seconds, tokensPerSecond: tokens / seconds, replicasPerModel };
}

/** Kills every process given (SIGKILL), ignoring ones already gone. */
export function killAll(children: (ChildProcess | undefined)[]): void {
  for (const c of children) if (c && c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
}
