/**
 * The one protocol between a WorkerPool (worker-pool.ts) and its workers (worker-task.ts), typed by a
 * task map: each task kind names the argument it takes and the result it gives, e.g.
 *
 *   type StoreTasks = { scan: { arg: null; result: StoreScan }; unpublish: { arg: {...}; result: true } };
 *
 * The map lives next to the caller, in a module both the caller and the worker import (type-only
 * imports are enough), so neither side casts.
 *
 * Messages: the worker says {ready, tid} once it takes tasks; the pool posts {id, kind, arg}; the
 * worker answers {id, result} or {id, error: WireError}, plus its memory (heap and outside it).
 */
import type { WireError } from '../errors.js';

export interface TaskSpec {
  arg: unknown;
  result: unknown;
}

/** A task map: task kind → its argument and result. Interfaces and type aliases both fit. */
export type TaskMap<Tasks> = { [K in keyof Tasks]: TaskSpec };

export type TaskKind<Tasks> = keyof Tasks & string;

/** Pool → worker. */
export interface TaskMessage {
  id: number;
  kind: string;
  arg: unknown;
}

/** Worker → pool. */
export type WorkerMessage =
  /** Sent once, when the worker has loaded what it needs and takes tasks (with its kernel thread id, null where it has none). */
  | { ready: true; tid: number | null }
  | { id: number; result: unknown; memoryBytes: number }
  | { id: number; error: WireError; memoryBytes: number };
