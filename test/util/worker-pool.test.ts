/**
 * The worker pool's two limits: a task's work budget is counted in its thread's CPU time (a task
 * that waits — for a core on a busy machine, or here in a sleep — does not use it up; one that
 * computes past it is stopped, as the input's fault), and a wall-clock limit past which the task
 * fails with the retryable `busy` error (503 with Retry-After), never blaming the input. Also under
 * a real CPU hog: a task of known CPU cost finishes within its budget however slow the machine.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { afterEach, describe, expect, it } from 'vitest';
import { LoraplexError } from '../../src/errors.js';
import { currentThreadId, threadCpuMs } from '../../src/util/thread-cpu.js';
import { WorkerPool, type TaskOptions } from '../../src/util/worker-pool.js';

const pools: WorkerPool[] = [];
const pool = (size = 1): WorkerPool => {
  const p = new WorkerPool({ from: import.meta.url, entry: 'pool-test-worker', size });
  pools.push(p);
  return p;
};
afterEach(async () => {
  await Promise.all(pools.splice(0).map((p) => p.close()));
});

const tooExpensive = () => new LoraplexError('prompt_too_expensive', 'over budget');
const opts = (budgetMs: number, wallLimitMs?: number): TaskOptions => ({ budgetMs, wallLimitMs, what: 'the test task', onTimeout: tooExpensive });
const failure = (p: Promise<unknown>): Promise<LoraplexError> => p.then(() => { throw new Error('expected the task to fail'); }, (e: LoraplexError) => e);

describe('thread CPU clock', () => {
  it('counts this thread’s computing, not its waiting', () => {
    const tid = currentThreadId();
    expect(tid).not.toBeNull();
    const a = threadCpuMs(tid!)!;
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 200);
    const b = threadCpuMs(tid!)!;
    let x = 0;
    const until = performance.now() + 200;
    while (performance.now() < until) x += Math.sqrt(x + 1);
    const c = threadCpuMs(tid!)!;
    expect(b - a).toBeLessThan(100);
    expect(c - b).toBeGreaterThan(20);
    expect(x).toBeGreaterThan(0);
    expect(threadCpuMs(2 ** 30)).toBeNull();
  });
});

describe('worker pool budgets', () => {
  it('a task that waits three times its budget still finishes (wall time is not work)', async () => {
    await expect(pool().run({ kind: 'sleep', ms: 900 }, opts(300, 30_000))).resolves.toBe(true);
  });

  it('a task that computes past its budget fails with the caller’s error, and the worker is replaced', async () => {
    const p = pool();
    const err = await failure(p.run({ kind: 'spin', ms: 5000 }, opts(300, 60_000)));
    expect(err.code).toBe('prompt_too_expensive');
    expect(p.overBudget).toBe(1);
    await expect(p.run({ kind: 'spin', ms: 10 }, opts(5000))).resolves.toBe(true);
    expect(p.replaced).toBe(1);
  });

  it('an endless loop is stopped at its budget', async () => {
    const err = await failure(pool().run({ kind: 'forever' }, opts(300, 60_000)));
    expect(err.code).toBe('prompt_too_expensive');
  });

  it('a task not done within the wall-clock limit fails with a retryable busy error', async () => {
    const p = pool();
    const err = await failure(p.run({ kind: 'sleep', ms: 20_000 }, opts(10_000, 500)));
    expect(err.code).toBe('busy');
    expect(err.statusCode).toBe(503);
    expect(err.retryAfterSeconds).toBeGreaterThan(0);
    expect(err.message).toMatch(/too busy to finish the test task/);
    expect(p.tooBusy).toBe(1);
    // The wire form keeps Retry-After (errors cross from the engine thread).
    expect(LoraplexError.fromWire(err.toWire()).retryAfterSeconds).toBe(err.retryAfterSeconds);
  });

  it('a queued task whose wall-clock limit passes while it waits for a worker fails with busy', async () => {
    const p = pool(1);
    const first = p.run({ kind: 'sleep', ms: 1500 }, opts(10_000, 30_000));
    const queued = failure(p.run({ kind: 'spin', ms: 1 }, opts(10_000, 300)));
    expect((await queued).code).toBe('busy');
    await expect(first).resolves.toBe(true);
  });
});

describe('queued tasks', () => {
  it('one queued later with a shorter wall-clock limit fails at its own limit, not the earlier task’s', async () => {
    const p = pool(1);
    let firstDone = false;
    const first = p.run({ kind: 'sleep', ms: 8000 }, opts(10_000, 60_000)).finally(() => (firstDone = true));
    const patient = p.run({ kind: 'spin', ms: 1 }, opts(10_000, 60_000));
    const hasty = failure(p.run({ kind: 'spin', ms: 1 }, opts(10_000, 300)));
    const err = await hasty;
    expect(err.code).toBe('busy');
    // It failed while the first task still held the only worker (not when it reached a worker).
    expect(firstDone).toBe(false);
    expect(p.tooBusy).toBe(1);
    await expect(first).resolves.toBe(true);
    await expect(patient).resolves.toBe(true);
  });
});

describe('on a machine whose cores are saturated', () => {
  let hogs: ChildProcess[] = [];
  afterEach(() => {
    for (const h of hogs) h.kill('SIGKILL');
    hogs = [];
  });

  it('a task of 400 ms of CPU time finishes within a 1500 ms budget, however long it waits for a core', async () => {
    // One hog more than there are cores, at the server's own priority (the pool's threads run at a lower one).
    hogs = Array.from({ length: availableParallelism() + 1 }, () => spawn(process.execPath, ['-e', 'for(;;){}'], { stdio: 'ignore' }));
    await new Promise((r) => setTimeout(r, 300));
    const p = pool();
    const started = performance.now();
    await expect(p.run({ kind: 'spin', ms: 400 }, opts(1500, 120_000))).resolves.toBe(true);
    // (How long it took is reported, not asserted: it depends on the machine.)
    console.log(`400 ms of CPU under ${hogs.length} hogs took ${Math.round(performance.now() - started)} ms of wall time`);
    expect(p.overBudget).toBe(0);
  }, 600_000);
});
