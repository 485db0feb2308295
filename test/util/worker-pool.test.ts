/**
 * The worker pool's two limits: a task's work budget is counted in its thread's CPU time (a task
 * that waits — for a core on a busy machine, or here in a sleep — does not use it up; one that
 * computes past it is stopped, as the input's fault), and a wall-clock limit past which the task
 * fails with the retryable `busy` error (503 with Retry-After), never blaming the input. Also under
 * a real CPU hog: a task of known CPU cost finishes within its budget however slow the machine.
 * And the pool's other duties, with a real worker thread (pool-test-worker.ts): a worker that dies
 * mid-task (process.exit, an uncaught error) fails that task alone and the tasks queued behind it run
 * on its replacement; a worker whose heap grew is recycled; errors cross with their codes.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { afterEach, describe, expect, expectTypeOf, it } from 'vitest';
import { LoraplexError } from '../../src/errors.js';
import { currentThreadId, threadCpuMs } from '../../src/util/thread-cpu.js';
import { WorkerPool, type TaskOptions, type WorkerPoolOptions } from '../../src/util/worker-pool.js';
import type { PoolTestInit, PoolTestTasks } from './pool-test-tasks.js';

type TestPool = WorkerPool<PoolTestTasks>;
const pools: TestPool[] = [];
const pool = (size = 1, more: Partial<WorkerPoolOptions> & { workerData?: PoolTestInit } = {}): TestPool => {
  const p = new WorkerPool<PoolTestTasks>({ from: import.meta.url, entry: 'pool-test-worker', size, ...more });
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
    await expect(pool().run('sleep', { ms: 900 }, opts(300, 30_000))).resolves.toBe(true);
  });

  it('a task that computes past its budget fails with the caller’s error, and the worker is replaced', async () => {
    const p = pool();
    const err = await failure(p.run('spin', { ms: 5000 }, opts(300, 60_000)));
    expect(err.code).toBe('prompt_too_expensive');
    expect(p.overBudget).toBe(1);
    await expect(p.run('spin', { ms: 10 }, opts(5000))).resolves.toBe(true);
    expect(p.replaced).toBe(1);
  });

  it('an endless loop is stopped at its budget', async () => {
    const err = await failure(pool().run('forever', null, opts(300, 60_000)));
    expect(err.code).toBe('prompt_too_expensive');
  });

  it('a task not done within the wall-clock limit fails with a retryable busy error', async () => {
    const p = pool();
    const err = await failure(p.run('sleep', { ms: 20_000 }, opts(10_000, 500)));
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
    const first = p.run('sleep', { ms: 1500 }, opts(10_000, 30_000));
    const queued = failure(p.run('spin', { ms: 1 }, opts(10_000, 300)));
    expect((await queued).code).toBe('busy');
    await expect(first).resolves.toBe(true);
  });
});

describe('queued tasks', () => {
  it('one queued later with a shorter wall-clock limit fails at its own limit, not the earlier task’s', async () => {
    const p = pool(1);
    let firstDone = false;
    const first = p.run('sleep', { ms: 8000 }, opts(10_000, 60_000)).finally(() => (firstDone = true));
    const patient = p.run('spin', { ms: 1 }, opts(10_000, 60_000));
    const hasty = failure(p.run('spin', { ms: 1 }, opts(10_000, 300)));
    const err = await hasty;
    expect(err.code).toBe('busy');
    // It failed while the first task still held the only worker (not when it reached a worker).
    expect(firstDone).toBe(false);
    expect(p.tooBusy).toBe(1);
    await expect(first).resolves.toBe(true);
    await expect(patient).resolves.toBe(true);
  });
});

/** Limits no test here reaches; no `what`, so the default crash error names the task kind. */
const roomy: TaskOptions = { budgetMs: 30_000, wallLimitMs: 120_000, onTimeout: tooExpensive };

describe('a worker that dies mid-task', () => {
  it('process.exit fails the task in flight with an error naming it and why; tasks queued behind it run on a replacement', async () => {
    const p = pool(1);
    const first = await p.run('whoami', null, roomy);
    const crash = failure(p.run('exit', { code: 3 }, roomy));
    const queued = [p.run('whoami', null, roomy), p.run('spin', { ms: 1 }, roomy), p.run('whoami', null, roomy)];
    const err = await crash;
    expect(err).toBeInstanceOf(LoraplexError);
    expect(err.code).toBe('internal_error');
    expect(err.message).toBe('a helper thread died while running task "exit": the worker exited (code 3)');
    const [a, spun, b] = await Promise.all(queued);
    expect(spun).toBe(true);
    expect(a).not.toBe(first);
    expect(b).toBe(a);
    expect(p.replaced).toBe(1);
  });

  it('an uncaught error thrown at the top level fails the task in flight with its message; queued tasks complete on a replacement', async () => {
    const p = pool(1);
    const first = await p.run('whoami', null, roomy);
    const crash = failure(p.run('throwUncaught', { message: 'the worker blew up' }, roomy));
    const queued = p.run('whoami', null, roomy);
    const err = await crash;
    expect(err.code).toBe('internal_error');
    expect(err.message).toBe('a helper thread died while running task "throwUncaught": the worker blew up');
    expect(await queued).not.toBe(first);
    expect(p.replaced).toBe(1);
  });

  it('the caller’s onCrash chooses the error a crash fails with', async () => {
    const p = pool(1);
    const err = await failure(p.run('exit', { code: 7 }, { ...roomy, onCrash: (why) => new LoraplexError('prompt_too_expensive', `the task died (${why})`, { param: 'prompt' }) }));
    expect(err.code).toBe('prompt_too_expensive');
    expect(err.param).toBe('prompt');
    expect(err.message).toBe('the task died (the worker exited (code 7))');
  });

  it('a worker that throws before it is ready: ready() rejects and every task fails naming why, without a restart loop', async () => {
    const p = pool(2, { workerData: { throwAtStart: 'no tokenizer here' } });
    await expect(p.ready()).rejects.toMatchObject({ code: 'internal_error', message: expect.stringMatching(/a helper thread cannot start: no tokenizer here/) });
    const err = await failure(p.run('whoami', null, roomy));
    expect(err.code).toBe('internal_error');
    expect(err.message).toMatch(/cannot start: no tokenizer here/);
    expect(p.replaced).toBe(0);
  });
});

describe('recycling', () => {
  it('a worker whose heap grew past recycleHeapBytes after a task is replaced; one that did not is kept', async () => {
    const p = pool(1, { recycleHeapBytes: 128 * 2 ** 20 });
    const first = await p.run('grow', { mb: 1 }, roomy);
    expect(await p.run('whoami', null, roomy)).toBe(first);
    expect(p.replaced).toBe(0);
    // The task that grew it still gets its answer, from the worker that grew.
    expect(await p.run('grow', { mb: 160 }, roomy)).toBe(first);
    expect(p.replaced).toBe(1);
    expect(await p.run('whoami', null, roomy)).not.toBe(first);
  });
});

describe('across the thread boundary', () => {
  it('a LoraplexError thrown in the worker comes back with its code, message, param and Retry-After; the worker is kept', async () => {
    const p = pool(1);
    const first = await p.run('whoami', null, roomy);
    const invalid = await failure(p.run('fail', { code: 'adapter_invalid', message: 'adapter_model.safetensors: not a tensor file', param: 'adapter_model' }, roomy));
    expect(invalid).toBeInstanceOf(LoraplexError);
    expect(invalid.toWire()).toEqual({ code: 'adapter_invalid', message: 'adapter_model.safetensors: not a tensor file', param: 'adapter_model' });
    expect(invalid.statusCode).toBe(422);
    const busy = await failure(p.run('fail', { code: 'busy', message: 'later', retryAfterSeconds: 7 }, roomy));
    expect(busy.code).toBe('busy');
    expect(busy.retryAfterSeconds).toBe(7);
    expect(await p.run('whoami', null, roomy)).toBe(first);
    expect(p.replaced).toBe(0);
  });

  it('any other error becomes internal_error, its message kept', async () => {
    const err = await failure(pool().run('fail', { code: null, message: 'kaput' }, roomy));
    expect(err.code).toBe('internal_error');
    expect(err.message).toBe('internal error: kaput');
  });

  it('buffers move both ways when transferred', async () => {
    const bytes = new Uint8Array([1, 2, 3]).buffer;
    const out = await pool().run('double', { bytes }, { ...roomy, transfer: [bytes] });
    expect([...out]).toEqual([2, 4, 6]);
    expect(bytes.byteLength).toBe(0);
  });

  it('tasks are typed by the task map', () => {
    const p = null as unknown as TestPool;
    expectTypeOf<ReturnType<typeof p.run<'whoami'>>>().toEqualTypeOf<Promise<number>>();
    expectTypeOf<ReturnType<typeof p.run<'double'>>>().toEqualTypeOf<Promise<Uint8Array>>();
    // Checked by `npm run typecheck` (never called):
    const wrong = (): void => {
      // @ts-expect-error: no such task
      void p.run('nope', null, roomy);
      // @ts-expect-error: spin takes { ms: number }
      void p.run('spin', { ms: '5' }, roomy);
    };
    expect(wrong).toBeTypeOf('function');
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
    await expect(p.run('spin', { ms: 400 }, opts(1500, 120_000))).resolves.toBe(true);
    // (How long it took is reported, not asserted: it depends on the machine.)
    console.log(`400 ms of CPU under ${hogs.length} hogs took ${Math.round(performance.now() - started)} ms of wall time`);
    expect(p.overBudget).toBe(0);
  }, 600_000);
});
