/**
 * The worker side of worker-pool.ts: answers each {id, task} with {id, result} or {id, error}, and
 * reports its heap size so the pool can recycle a worker that grew.
 */
import { setPriority } from 'node:os';
import { getHeapStatistics } from 'node:v8';
import { parentPort } from 'node:worker_threads';
import { toWireError } from '../errors.js';
import { currentThreadId } from './thread-cpu.js';

export interface TaskResult {
  result: unknown;
  transfer?: ArrayBuffer[];
}

/**
 * Starts answering tasks; the pool sends none until the worker says it is ready (with its thread id:
 * the pool reads its CPU clock). `memoryBytes`: memory the thread holds outside V8's heap (e.g.
 * WebAssembly memory), counted with the heap for recycling.
 */
export function serveTasks(handle: (task: unknown) => TaskResult | Promise<TaskResult>, memoryBytes: () => number = () => 0): void {
  const port = parentPort!;
  port.postMessage({ ready: true, tid: currentThreadId() });
  port.on('message', async (m: { id: number; task: unknown }) => {
    try {
      const { result, transfer } = await handle(m.task);
      port.postMessage({ id: m.id, result, heapBytes: getHeapStatistics().used_heap_size + memoryBytes() }, transfer ?? []);
    } catch (err) {
      port.postMessage({ id: m.id, error: toWireError(err), heapBytes: getHeapStatistics().used_heap_size + memoryBytes() });
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
