/**
 * Admission control on the HTTP thread: overload is decided when a request arrives, before any
 * work (no tokenizing, no hop into the engine), and answered 429 with Retry-After. A request
 * waits from admission until its first batch row (the engine's 'running' event); the number
 * waiting — being validated or queued in the engine — is capped by --max-queued-requests, counted
 * per choice (each of `n` choices is one engine request).
 *
 * Each choice is also a batch row once it runs, so a request may ask for at most
 * --max-rows-per-request of them (checkRows); how rows are shared between API keys at run time is
 * the scheduler's fair share (src/scheduler/state.ts).
 */
import { LoraplexError, ValidationError } from '../errors.js';

/**
 * A request's batch rows — one per choice: `n`, or `best_of`, times the prompts — within
 * --max-rows-per-request, else 400 naming `param`; `given` says how the count came about.
 */
export function checkRows(rows: number, max: number, param: string, given: string): void {
  if (rows > max) throw new ValidationError(`${given} asks for ${rows} sequences; a request may ask for at most ${max} (--max-rows-per-request)`, param);
}

export class Ticket {
  private waitingCount: number;
  private readonly admission: Admission;
  /** Whose request this is: its API key's digest (null: the server has no keys). */
  readonly tenant: string | null;

  constructor(admission: Admission, choices: number, tenant: string | null) {
    this.admission = admission;
    this.waitingCount = choices;
    this.tenant = tenant;
  }

  /** One choice started running, or ended before it ran (error, cancel). Idempotent per choice. */
  leaveQueue(): void {
    if (this.waitingCount === 0) return;
    this.waitingCount--;
    this.admission.release(1);
  }

  /** The request is over: whatever still counted as waiting stops counting. */
  close(): void {
    if (this.waitingCount === 0) return;
    this.admission.release(this.waitingCount);
    this.waitingCount = 0;
  }
}

export class Admission {
  readonly limit: number;
  private waitingCount = 0;
  /** Seconds a request takes from admission to its first row, smoothed (for Retry-After). */
  private queueSeconds = 1;
  refused = 0;

  constructor(limit: number) {
    this.limit = limit;
  }

  get waiting(): number {
    return this.waitingCount;
  }

  /** Admits a request of `choices` engine requests from `tenant`, or throws `overloaded` with Retry-After. */
  enter(choices: number, tenant: string | null): Ticket {
    if (this.waitingCount + choices > this.limit) {
      this.refused++;
      const retry = Math.min(60, Math.max(1, Math.ceil(this.queueSeconds)));
      throw new LoraplexError('overloaded', `the server is overloaded: ${this.waitingCount} requests are waiting (--max-queued-requests ${this.limit}); retry in ${retry} s`, {
        retryAfterSeconds: retry,
      });
    }
    this.waitingCount += choices;
    return new Ticket(this, choices, tenant);
  }

  /** Records how long a request waited for its first row. */
  observeWait(seconds: number): void {
    this.queueSeconds = 0.8 * this.queueSeconds + 0.2 * seconds;
  }

  release(n: number): void {
    this.waitingCount -= n;
  }
}
