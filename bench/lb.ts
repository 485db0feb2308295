/**
 * Adapter affinity behind HAProxy: three `loraplex serve` replicas (the demo model, one store of 64
 * rank-8 adapters, host caches of 6 adapters each) behind deploy/haproxy/haproxy.cfg; one zipf mix
 * sent through the affinity frontend (consistent hashing on "model") and, on fresh replicas, through
 * the round-robin one. Reported: the replicas' host-cache hit rate and tokens/s of each, and the
 * ratios. Skipped when `haproxy` is not installed.
 */
import { join } from 'node:path';
import { ensureDemo } from '../src/cli/demo.js';
import { fmt, table } from './lib.js';
import {
  freePort,
  haproxyAvailable,
  haproxyVersion,
  killAll,
  measureMix,
  startHaproxy,
  startReplica,
  stopReplica,
  waitServer,
  writeAdapters,
  zipfAdapters,
  type MixResult,
  type Replica,
  type ReplicaOptions,
} from './replicas.js';
import type { BenchContext } from './runtime.js';

export interface LbResult {
  haproxy: string;
  requests: number;
  affinity: { hitRate: number; tokensPerSecond: number; failed: number };
  roundRobin: { hitRate: number; tokensPerSecond: number; failed: number };
}

const TITLE = '### Adapter affinity behind HAProxy (3 replicas, zipf over 64 adapters)';

export async function lbBench(ctx: BenchContext): Promise<{ result: LbResult | null; markdown: string }> {
  if (!haproxyAvailable()) {
    ctx.log('lb: skipped, `haproxy` is not installed');
    return { result: null, markdown: `${TITLE}\n\nSkipped: \`haproxy\` is not installed (apt-get install haproxy).` };
  }
  const { model } = ensureDemo(join(ctx.dir, 'demo'), ctx.log, join(ctx.dir, 'demo', 'adapters'));
  const store = join(ctx.dir, 'lb-store');
  const adapterBytes = writeAdapters(store, model, 64, { rank: 8, seed: 5000 });
  const cached = 6;
  const options: ReplicaOptions = {
    modelDir: model,
    store,
    cacheDir: join(ctx.dir, 'builds'),
    adminToken: 'bench-admin',
    adapterCacheBytes: cached * adapterBytes,
    storePollMs: 0,
    servedModelName: 'demo',
    extra: ['--quant', 'int4', '--threads', '1'],
  };
  const mix = { requests: ctx.quick ? 96 : 600, concurrency: 6, body: { prompt: Array.from({ length: 32 }, (_, i) => 1000 + i), max_tokens: ctx.quick ? 4 : 16, temperature: 0, ignore_eos: true } };
  const started: Replica[] = [];
  const ports = [await freePort(), await freePort(), await freePort()];
  const names = ['r1', 'r2', 'r3'];
  /** Three fresh replicas (empty host caches), UP in HAProxy once it runs. */
  const fresh = async (): Promise<Replica[]> => {
    const first = await startReplica(names[0], ports[0], options);
    started.push(first);
    const rest = await Promise.all([1, 2].map((i) => startReplica(names[i], ports[i], options)));
    started.push(...rest);
    return [first, ...rest];
  };
  let lb: Awaited<ReturnType<typeof startHaproxy>> | null = null;
  try {
    ctx.log('lb: starting 3 replicas and HAProxy');
    let replicas = await fresh();
    lb = await startHaproxy(join(ctx.dir, 'lb-haproxy'), names.map((name, i) => ({ name, port: ports[i] })));
    for (const n of names) await waitServer(lb.socket, n, 'UP');
    ctx.log(`lb: affinity, ${mix.requests} requests`);
    const affinity = await measureMix(lb.affinityUrl, replicas, { ...mix, pick: zipfAdapters(64, 7) });
    ctx.log('lb: restarting the replicas (empty caches)');
    await Promise.all(replicas.map((r) => stopReplica(r)));
    replicas = await fresh();
    for (const n of names) await waitServer(lb.socket, n, 'UP');
    ctx.log(`lb: round robin, ${mix.requests} requests`);
    const roundRobin = await measureMix(lb.roundRobinUrl, replicas, { ...mix, pick: zipfAdapters(64, 7) });
    const row = (label: string, m: MixResult) => [label, m.requests, m.failed, `${fmt(100 * m.hitRate, 1)}%`, fmt(m.tokensPerSecond, 1)];
    const result: LbResult = {
      haproxy: haproxyVersion(),
      requests: mix.requests,
      affinity: { hitRate: affinity.hitRate, tokensPerSecond: affinity.tokensPerSecond, failed: affinity.failed },
      roundRobin: { hitRate: roundRobin.hitRate, tokensPerSecond: roundRobin.tokensPerSecond, failed: roundRobin.failed },
    };
    const markdown = [
      TITLE,
      '',
      `HAProxy ${result.haproxy}; the demo model, int4, one thread per replica; host cache of ${cached} adapters per replica; ${mix.concurrency} concurrent non-streamed requests, ${mix.body.max_tokens} tokens each; fresh replicas for each routing.`,
      '',
      table(['routing', 'requests', 'failed', 'host-cache hit rate', 'tokens/s'], [row('affinity (hash on model)', affinity), row('round robin', roundRobin)]),
      '',
      `Affinity / round robin: hit rate ${fmt(affinity.hitRate / Math.max(1e-9, roundRobin.hitRate), 2)}×, tokens/s ${fmt(affinity.tokensPerSecond / roundRobin.tokensPerSecond, 2)}×.`,
    ].join('\n');
    return { result, markdown };
  } finally {
    killAll([...started.map((r) => r.child), lb?.child]);
  }
}
