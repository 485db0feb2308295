/**
 * The worker side of worker-pool.ts: `serve` answers each task with its kind's handler, typed by the
 * same task map the pool uses (worker-protocol.ts), and reports the thread's memory so the pool can
 * recycle a worker that grew. Whatever a handler throws crosses as a WireError: a LoraplexError keeps
 * its code, anything else becomes `internal_error`.
 */
import { setPriority } from 'node:os';
import { getHeapStatistics } from 'node:v8';
import { parentPort } from 'node:worker_threads';
import { LoraplexError, toWireError } from '../errors.js';
import { currentThreadId } from './thread-cpu.js';
import type { TaskMap, TaskMessage, WorkerMessage } from './worker-protocol.js';

/** A result whose buffers are moved to the pool's thread instead of copied (see `transferring`). */
export class Transferring<R> {
  constructor(
    readonly result: R,
    readonly transfer: readonly ArrayBuffer[],
  ) {}
}

/** Returns `result` with `transfer` moved, not copied: they become unusable in this thread. */
export const transferring = <R>(result: R, transfer: readonly ArrayBuffer[]): Transferring<R> => new Transferring(result, transfer);

type Answer<R> = R | Transferring<R>;

/** One handler per task kind: takes the kind's argument, returns (or resolves to) its result. */
export type Handlers<Tasks extends TaskMap<Tasks>> = {
  [K in keyof Tasks]: (arg: Tasks[K]['arg']) => Answer<Tasks[K]['result']> | Promise<Answer<Tasks[K]['result']>>;
};

/**
 * Starts answering tasks; the pool sends none until the worker says it is ready (with its thread id:
 * the pool reads its CPU clock), so call it once the worker has loaded what it needs. `memoryBytes`:
 * memory the thread holds outside V8's heap (e.g. WebAssembly memory), counted with the heap for
 * recycling.
 */
export function serve<Tasks extends TaskMap<Tasks>>(handlers: Handlers<Tasks>, memoryBytes: () => number = () => 0): void {
  const port = parentPort!;
  const send = (m: WorkerMessage, transfer: readonly ArrayBuffer[] = []): void => port.postMessage(m, transfer as ArrayBuffer[]);
  const memory = (): number => getHeapStatistics().used_heap_size + memoryBytes();
  send({ ready: true, tid: currentThreadId() });
  port.on('message', async (m: TaskMessage) => {
    try {
      if (!Object.hasOwn(handlers, m.kind)) throw new LoraplexError('internal_error', `this worker has no task "${m.kind}"`);
      const answer: unknown = await (handlers[m.kind as keyof Tasks] as (arg: unknown) => unknown)(m.arg);
      if (answer instanceof Transferring) send({ id: m.id, result: answer.result, memoryBytes: memory() }, answer.transfer);
      else send({ id: m.id, result: answer, memoryBytes: memory() });
    } catch (err) {
      send({ id: m.id, error: toWireError(err), memoryBytes: memory() });
    }
  });
}

/**
 * Lowers this thread's scheduling priority (Linux: a thread's id works as a pid for setpriority),
 * so that when the cores are busy the engine's steps win over helper work. Best effort: where the
 * thread id cannot be found, nothing changes.
 */
export function lowerThreadPriority(nice = 10): boolean {
  const tid = currentThreadId();
  if (tid === null) return false;
  try {
    setPriority(tid, nice);
    return true;
  } catch {
    return false;
  }
}
