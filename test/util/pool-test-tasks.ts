/** The task map of the worker-pool tests' worker (pool-test-worker.ts), shared by the tests and the worker. */
import type { ErrorCode } from '../../src/errors.js';

export interface PoolTestTasks {
  /** Uses `ms` of the thread's CPU time. */
  spin: { arg: { ms: number }; result: boolean };
  /** Takes `ms` of wall time without using the CPU. */
  sleep: { arg: { ms: number }; result: boolean };
  /** Never returns: only terminating the thread stops it. */
  forever: { arg: null; result: never };
  /** Ends the worker with process.exit(code) mid-task. */
  exit: { arg: { code: number }; result: never };
  /** Throws `message` at the top level of the worker's event loop (an uncaught error) mid-task. */
  throwUncaught: { arg: { message: string }; result: never };
  /** Throws a LoraplexError with this code (or, code null, a plain Error). */
  fail: { arg: { code: ErrorCode | null; message: string; param?: string; retryAfterSeconds?: number }; result: never };
  /** Keeps `mb` MiB more on the worker's heap for good; answers the worker's threadId. */
  grow: { arg: { mb: number }; result: number };
  /** The worker's threadId (tells one worker from its replacement). */
  whoami: { arg: null; result: number };
  /** Answers the bytes doubled, the buffer transferred back. */
  double: { arg: { bytes: ArrayBuffer }; result: Uint8Array };
}

export interface PoolTestInit {
  /** Throw at the top level before serving: the worker never starts. */
  throwAtStart?: string;
}
