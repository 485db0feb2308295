/**
 * Real replicas behind a real load balancer: three `loraplex serve` processes on one adapter store,
 * HAProxy running deploy/haproxy/haproxy.cfg (ports, socket and servers rewritten). Shows
 *   a. adapter affinity (consistent hashing on the body's "model") keeps adapters in the replicas'
 *      host caches: a higher hit rate than round robin on a zipf mix over 64 adapters;
 *   b. a rolling restart (SIGTERM, one replica at a time) under steady load fails no request;
 *   c. kill -9 of a replica under load fails only requests sent before it died; HAProxy marks it
 *      DOWN and its adapters are served by the others;
 *   d. an adapter uploaded and then replaced through the proxy is served, in its latest version, by
 *      every replica (the propagation delay is printed).
 * Skipped when `haproxy` is not installed (CI installs it: .ci/run).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  AFFINITY_BACKEND,
  freePort,
  haproxyAvailable,
  haproxyVersion,
  killAll,
  measureMix,
  retryCounters,
  serverStatus,
  startHaproxy,
  startReplica,
  steadyLoad,
  stopReplica,
  waitFor,
  waitServer,
  writeAdapters,
  zipfAdapters,
  type Haproxy,
  type MixResult,
  type Outcome,
  type Replica,
  type ReplicaOptions,
} from '../../bench/replicas.js';
import { writeRandomPeftAdapter } from '../../src/adapters/random.js';
import { Checkpoint } from '../../src/runtime/checkpoint/checkpoint.js';
import { ADMIN, tinyQwen } from '../helpers/server.js';
import { tempDir } from '../helpers/tiny-model.js';

const HAVE_HAPROXY = haproxyAvailable();
if (!HAVE_HAPROXY) process.stdout.write('test/deploy/haproxy.test.ts: skipped, `haproxy` is not installed (apt-get install haproxy)\n');

const ADAPTERS = 64;
/** Each replica's host cache holds this many of the 64 adapters. */
const CACHED = 6;
const MIX = { requests: 240, concurrency: 6, body: { prompt: [11, 22, 33], max_tokens: 2, temperature: 0, ignore_eos: true } };
const log = (line: string) => process.stdout.write(`[haproxy] ${line}\n`);

describe.skipIf(!HAVE_HAPROXY)('replicas behind HAProxy', () => {
  const replicas: Replica[] = [];
  const started: Replica[] = [];
  let lb: Haproxy;
  let options: ReplicaOptions;
  let affinity: MixResult;

  const start = async (name: string, port: number): Promise<Replica> => {
    const r = await startReplica(name, port, options);
    started.push(r);
    return r;
  };

  beforeAll(async () => {
    log(`HAProxy ${haproxyVersion()}`);
    const tm = tinyQwen(501, 1024);
    const store = tempDir('loraplex-lb-store-');
    const adapterBytes = writeAdapters(store, tm.dir, ADAPTERS, { rank: 4, seed: 600 });
    options = {
      modelDir: tm.dir,
      store,
      cacheDir: tempDir('loraplex-lb-cache-'),
      adminToken: ADMIN,
      adapterCacheBytes: CACHED * adapterBytes,
      storePollMs: 250,
      servedModelName: 'tiny',
      extra: ['--quant', 'fp32', '--threads', '1', '--shutdown-grace-ms', '60000', '--max-upload-bytes', '10000000'],
    };
    const ports = [await freePort(), await freePort(), await freePort()];
    // The first builds the graph into the shared cache; the others find it there.
    replicas.push(await start('r1', ports[0]));
    replicas.push(...(await Promise.all([start('r2', ports[1]), start('r3', ports[2])])));
    lb = await startHaproxy(tempDir('loraplex-lb-'), replicas.map((r) => ({ name: r.name, port: r.port })));
    for (const r of replicas) await waitServer(lb.socket, r.name, 'UP');
  }, 900_000);

  afterAll(() => {
    killAll([...started.map((r) => r.child), lb?.child]);
  });

  const report = (label: string, m: MixResult) =>
    log(`${label}: ${m.requests} requests (${m.failed} failed), host cache hits ${m.hits} misses ${m.misses} = ${(100 * m.hitRate).toFixed(1)}% hit rate, ${m.tokens} tokens in ${m.seconds.toFixed(1)} s = ${m.tokensPerSecond.toFixed(1)} tokens/s`);

  it('a (1/2): with affinity each adapter is served by one replica (zipf mix over 64 adapters, fresh caches)', async () => {
    affinity = await measureMix(lb.affinityUrl, replicas, { ...MIX, pick: zipfAdapters(ADAPTERS, 7) });
    report('affinity', affinity);
    expect(affinity.failed).toBe(0);
    expect(affinity.hits + affinity.misses).toBe(MIX.requests);
    for (const [model, by] of affinity.replicasPerModel) expect([...by], model).toHaveLength(1);
    // The hash spreads the adapters over all three.
    expect(new Set([...affinity.replicasPerModel.values()].flatMap((s) => [...s])).size).toBe(3);
  });

  it('b: a rolling restart (SIGTERM one replica at a time) under steady load fails no request', async () => {
    // Steady, not saturating: the replacements start on the same two busy cores.
    const load = steadyLoad(lb.affinityUrl, { concurrency: 3, pauseMs: 100, pick: zipfAdapters(8, 11), body: { prompt: [5, 6, 7], max_tokens: 8, temperature: 0, ignore_eos: true } });
    await waitFor('some load', () => load.outcomes.length >= 10);
    for (let i = 0; i < replicas.length; i++) {
      const old = replicas[i];
      const t0 = performance.now();
      const before = load.outcomes.length;
      await stopReplica(old, 'SIGTERM');
      await waitServer(lb.socket, old.name, 'DOWN');
      const gone = performance.now();
      replicas[i] = await start(old.name, old.port);
      await waitServer(lb.socket, old.name, 'UP');
      log(`rolling restart of ${old.name}: gone (exited, DOWN in HAProxy) after ${((gone - t0) / 1000).toFixed(1)} s, replacement UP after ${((performance.now() - t0) / 1000).toFixed(1)} s; ${load.outcomes.length - before} requests answered meanwhile`);
    }
    const outcomes = await load.stop();
    const failed = outcomes.filter((x) => x.status !== 200);
    const retried = await retryCounters(lb.socket, AFFINITY_BACKEND);
    log(`rolling restart: ${outcomes.length} requests, ${failed.length} failed${failed.length ? `: ${failed.slice(0, 5).map((f) => `${f.status} ${f.error}`).join('; ')}` : ''}; HAProxy retried ${retried.retries}, redispatched ${retried.redispatches} so far`);
    expect(failed).toEqual([]);
    expect(outcomes.length).toBeGreaterThan(10);
  });

  it('a (2/2): round robin on the same mix (fresh caches again) hits the host caches less often than affinity', async () => {
    const rr = await measureMix(lb.roundRobinUrl, replicas, { ...MIX, pick: zipfAdapters(ADAPTERS, 7) });
    report('round robin', rr);
    log(`affinity / round robin: hit rate ${(affinity.hitRate / rr.hitRate).toFixed(2)}x, tokens/s ${(affinity.tokensPerSecond / rr.tokensPerSecond).toFixed(2)}x`);
    expect(rr.failed).toBe(0);
    expect(rr.hits + rr.misses).toBe(MIX.requests);
    expect(affinity.hitRate).toBeGreaterThan(rr.hitRate);
  });

  it('c: kill -9 of a replica under load fails only requests sent before it died; the others take its adapters over', async () => {
    const load = steadyLoad(lb.affinityUrl, { concurrency: 6, pick: zipfAdapters(ADAPTERS, 13), body: { prompt: [8, 9, 10], max_tokens: 24, temperature: 0, ignore_eos: true } });
    const victim = replicas[1];
    // Until the victim has answered a few requests (so some of the mix's adapters are its own).
    await waitFor('the victim to serve some requests', () => load.outcomes.filter((x) => x.replica === victim.name).length >= 3);
    const victimModels = new Set(load.outcomes.filter((x) => x.replica === victim.name).map((x) => x.model));
    const dead = new Promise((r) => victim.child.once('exit', r));
    const killedAt = performance.now();
    victim.child.kill('SIGKILL');
    await dead;
    // From here no connection can reach it (the kernel has closed its sockets).
    const deadAt = performance.now();
    await waitServer(lb.socket, victim.name, 'DOWN', 120_000);
    const downAt = performance.now();
    // Until one of the victim's adapters has been answered by another replica, and some more requests.
    const tookOver = (x: Outcome) => x.start > killedAt && x.status === 200 && victimModels.has(x.model);
    await waitFor("the victim's adapters to be served elsewhere", () => load.outcomes.some(tookOver), 120_000);
    const takenOver = load.outcomes.find(tookOver)!;
    const count = load.outcomes.length;
    await waitFor('more requests after the kill', () => load.outcomes.length >= count + 20);
    const outcomes = await load.stop();
    const failed = outcomes.filter((x) => x.status !== 200);
    const after = outcomes.filter((x) => x.start > deadAt);
    const recovery = takenOver.end - killedAt;
    const rel = (t: number) => `${((t - killedAt) / 1000).toFixed(2)} s`;
    log(
      `kill -9 of ${victim.name}: ${outcomes.length} requests, ${failed.length} failed, all sent before it died (${rel(deadAt)} after the signal): ${failed.every((x) => x.start < deadAt)} ` +
        `[${failed.map((f) => `sent ${rel(f.start)}, answered ${rel(f.end)}: ${f.status} ${f.error ?? ''}`).join('; ')}]; ` +
        `${after.length} sent after it died, all answered: ${after.every((x) => x.status === 200)}; DOWN in HAProxy ${rel(downAt)} after the kill; ` +
        `first of its adapters (${takenOver.model}) answered by ${takenOver.replica} ${(recovery / 1000).toFixed(2)} s after the kill`,
    );
    expect(failed.every((x) => x.start < deadAt)).toBe(true);
    expect(failed.length).toBeLessThanOrEqual(6);
    expect(after.every((x) => x.status === 200)).toBe(true);
    expect(takenOver.replica).not.toBe(victim.name);
    expect(recovery).toBeLessThan(60_000);
    expect((await serverStatus(lb.socket, AFFINITY_BACKEND))[victim.name]).toBe('DOWN');
  });

  it('d: an adapter uploaded, then replaced, through the proxy is served in its latest version by every replica', async () => {
    // Three again (after c, whatever its outcome).
    for (let i = 0; i < replicas.length; i++) {
      const r = replicas[i];
      if (r.child.exitCode === null && r.child.signalCode === null) continue;
      replicas[i] = await start(r.name, r.port);
      await waitServer(lb.socket, r.name, 'UP');
    }
    const ckpt = Checkpoint.open(options.modelDir);
    const [v1, v2] = [tempDir('loraplex-lb-v1-'), tempDir('loraplex-lb-v2-')];
    writeRandomPeftAdapter(v1, ckpt.spec, { rank: 4, seed: 901, bStd: 0.5 });
    writeRandomPeftAdapter(v2, ckpt.spec, { rank: 8, seed: 902, bStd: 0.5 });
    ckpt.close();
    const form = (name: string | null, dir: string) => {
      const f = new FormData();
      if (name) f.append('name', name);
      for (const file of ['adapter_config.json', 'adapter_model.safetensors']) f.append('file', new Blob([readFileSync(join(dir, file))]), file);
      return f;
    };
    const admin = (path: string, init: RequestInit) => fetch(`${lb.affinityUrl}${path}`, { ...init, headers: { authorization: `Bearer ${ADMIN}` } });
    const digestOn = async (r: Replica) => ((await (await fetch(`${r.url}/v1/models`)).json()) as { data: { id: string; digest?: string }[] }).data.find((m) => m.id === 'uploaded')?.digest ?? null;
    const textOn = async (r: Replica) => {
      const res = await fetch(`${r.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'uploaded', prompt: [11, 22, 33], max_tokens: 8, temperature: 0, ignore_eos: true }) });
      expect(res.status, r.name).toBe(200);
      return ((await res.json()) as { choices: { text: string }[] }).choices[0].text;
    };
    /** Until every replica serves `digest`: the slowest replica's delay (ms) from `t0`. */
    const propagation = async (digest: string, t0: number) => {
      const delays = await Promise.all(
        replicas.map(async (r) => {
          await waitFor(`${r.name} to serve ${digest}`, async () => (await digestOn(r)) === digest, 120_000);
          return performance.now() - t0;
        }),
      );
      return Math.max(...delays);
    };

    const up = await admin('/admin/adapters', { method: 'POST', body: form('uploaded', v1) });
    expect(up.status, await up.clone().text()).toBe(201);
    const first = ((await up.json()) as { digest: string }).digest;
    const uploadDelay = await propagation(first, performance.now());
    const texts1 = await Promise.all(replicas.map(textOn));
    expect(new Set(texts1).size).toBe(1);

    const sent = performance.now();
    const put = await admin('/admin/adapters/uploaded', { method: 'PUT', body: form(null, v2) });
    expect(put.status, await put.clone().text()).toBe(200);
    const answered = performance.now();
    const second = ((await put.json()) as { digest: string }).digest;
    expect(second).not.toBe(first);
    const replaceDelay = await propagation(second, answered);
    const texts2 = await Promise.all(replicas.map(textOn));
    expect(new Set(texts2).size).toBe(1);
    expect(texts2[0]).not.toBe(texts1[0]);
    log(`upload through the proxy: on every replica within ${uploadDelay.toFixed(0)} ms of the 201; replace: the PUT took ${(answered - sent).toFixed(0)} ms, no replica served the old version ${replaceDelay.toFixed(0)} ms after its 200 (store poll 250 ms)`);
  });
});
