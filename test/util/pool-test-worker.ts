/** A worker for the worker-pool tests: spins, sleeps, crashes, fails, grows its heap, on request. */
import { threadId, workerData } from 'node:worker_threads';
import { LoraplexError } from '../../src/errors.js';
import { currentThreadId, threadCpuMs } from '../../src/util/thread-cpu.js';
import { lowerThreadPriority, serve, transferring } from '../../src/util/worker-task.js';
import type { PoolTestInit, PoolTestTasks } from './pool-test-tasks.js';

const init = (workerData ?? {}) as PoolTestInit;
if (init.throwAtStart) throw new Error(init.throwAtStart);
lowerThreadPriority();
const tid = currentThreadId();
/** What `grow` keeps alive. */
const kept: number[][] = [];

serve<PoolTestTasks>({
  spin: ({ ms }) => {
    // Uses `ms` of this thread's CPU time (however long that takes on a busy machine).
    const start = threadCpuMs(tid!)!;
    let x = 0;
    while (threadCpuMs(tid!)! - start < ms) for (let i = 0; i < 10_000; i++) x += Math.sqrt(i);
    return x > 0;
  },
  sleep: ({ ms }) => {
    // Takes `ms` of wall time without using the CPU, as a thread does while it waits for a core.
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
    return true;
  },
  forever: () => {
    for (;;) {
      // an endless loop: only terminating the thread stops it
    }
  },
  exit: ({ code }) => process.exit(code),
  throwUncaught: ({ message }) =>
    new Promise<never>(() => {
      setImmediate(() => {
        throw new Error(message);
      });
    }),
  fail: ({ code, message, param, retryAfterSeconds }) => {
    throw code === null ? new Error(message) : new LoraplexError(code, message, { param, retryAfterSeconds });
  },
  grow: ({ mb }) => {
    // Doubles: 8 bytes each, on the V8 heap.
    kept.push(new Array<number>(mb * 131_072).fill(0.5));
    return threadId;
  },
  whoami: () => threadId,
  double: ({ bytes }) => {
    const out = new Uint8Array(bytes).map((b) => b * 2);
    return transferring(out, [out.buffer]);
  },
});
