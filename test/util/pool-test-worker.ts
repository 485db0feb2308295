/** A worker for the worker-pool tests: spins the CPU, or sleeps without using it, for a given time. */
import { serveTasks, lowerThreadPriority } from '../../src/util/worker-task.js';
import { currentThreadId, threadCpuMs } from '../../src/util/thread-cpu.js';

lowerThreadPriority();
const tid = currentThreadId();

serveTasks((task) => {
  const t = task as { kind: 'spin' | 'sleep' | 'forever'; ms?: number };
  switch (t.kind) {
    case 'spin': {
      // Uses `ms` of this thread's CPU time (however long that takes on a busy machine).
      const start = threadCpuMs(tid!)!;
      let x = 0;
      while (threadCpuMs(tid!)! - start < t.ms!) for (let i = 0; i < 10_000; i++) x += Math.sqrt(i);
      return { result: x > 0 };
    }
    case 'sleep':
      // Takes `ms` of wall time without using the CPU, as a thread does while it waits for a core.
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, t.ms!);
      return { result: true };
    case 'forever':
      for (;;) {
        // an endless loop: only terminating the thread stops it
      }
  }
});
