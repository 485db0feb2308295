/**
 * The scheduler's state machine: synchronous, no timers, `now` passed in, so it can be tested step
 * by step with tiny capacities. The loop around it does the awaiting.
 *
 * - Waiting requests sit in per-adapter queues (null = the base model), served oldest head first.
 * - At most `maxActiveAdapters` adapters are active. An adapter stays active while it has running
 *   rows; once it has been active for `adapterCycleMs` and other adapters wait, it drains (admits
 *   nothing new) so its place goes to the next one when its rows finish (LoRAX's adapter cycle).
 * - A step decodes every running row that has finished its prompt, continues chunked prompts, then
 *   admits waiting requests oldest first within the row limit, the prefill token budget and the KV
 *   cache. KV tokens are reserved for the prompt plus `reserveAhead` tokens at admission and grown as
 *   a row decodes; when the cache is full, the youngest running request is preempted: its cache is
 *   freed and it goes back to the front of its queue, to be resumed later by recomputing its prompt
 *   and the tokens it had generated (vLLM's recompute preemption). The oldest request always
 *   progresses.
 * - With prefix caching, `prefix(job)` says how many of a job's prompt tokens are in the cache
 *   already: its prefill starts there, and only the tokens it computes count against the step's
 *   budget. null means "wait": a running request is computing this prompt's next block right now,
 *   so the job is admitted a step later and reuses it (the choices of `n > 1` share their prompt
 *   this way) rather than computing it twice. Reservations stay whole (prompt + look-ahead): a
 *   shared block is counted once per holder, so the cache can always honour them.
 */

export interface SchedulerConfig {
  maxBatchSize: number;
  maxBatchPrefillTokens: number;
  maxActiveAdapters: number;
  maxQueued: number;
  adapterCycleMs: number;
  /** Tokens the KV cache holds. */
  kvCapacity: number;
  /** Reservations are rounded up to whole blocks. */
  kvBlock: number;
  /** Tokens reserved beyond the current context (Infinity: reserve prompt + max tokens up front). */
  reserveAhead: number;
}

export interface Job {
  readonly id: number;
  /** Adapter key (cache/slot key), or null for the base model. */
  readonly adapter: string | null;
  readonly promptLen: number;
  readonly maxNewTokens: number;
  readonly arrival: number;
  /** Absolute time after which the request is dropped. */
  readonly deadline: number;
}

export type Readiness = 'ready' | 'loading' | 'failed';

/** Prompt tokens of a job already in the KV cache (a multiple of the block, below its prompt), or null: wait a step. */
export type PrefixProbe = (job: Job) => number | null;

export interface PlannedRow {
  job: Job;
  /** 'prefill': prompt tokens [start, start+count); 'decode': one token, the last sampled. */
  kind: 'prefill' | 'decode';
  start: number;
  count: number;
  /** The row needs logits (its prompt completes this step, or it decodes). */
  sample: boolean;
}

export type DropReason = 'cancelled' | 'timeout' | 'adapter_failed';

export interface Dropped {
  job: Job;
  reason: DropReason;
  /** The request had started running (its KV was reserved). */
  wasRunning: boolean;
}

/** A request taken out of the batch to free KV cache; it resumes as `resumed` (same id). */
export interface Preempted {
  job: Job;
  resumed: Job;
}

interface Running {
  job: Job;
  prefilled: number;
  reserved: number;
  /** Tokens in the KV cache once the planned work has run. */
  context: number;
  /** Tokens sampled so far (the last one is not in the cache yet). */
  sampled: number;
}

interface Active {
  since: number;
  draining: boolean;
}

export class SchedulerState {
  readonly cfg: SchedulerConfig;
  private readonly queues = new Map<string | null, Job[]>();
  private readonly running = new Map<number, Running>();
  private readonly active = new Map<string, Active>();
  private readonly cancelled = new Set<number>();
  private waitingCount = 0;
  private reserved = 0;

  constructor(cfg: SchedulerConfig) {
    this.cfg = cfg;
  }

  get waiting(): number {
    return this.waitingCount;
  }

  get runningCount(): number {
    return this.running.size;
  }

  get reservedTokens(): number {
    return this.reserved;
  }

  private roundUp(tokens: number): number {
    return Math.ceil(tokens / this.cfg.kvBlock) * this.cfg.kvBlock;
  }

  /** KV tokens a request needs at most over its life (it must fit the cache alone). */
  reservation(job: Pick<Job, 'promptLen' | 'maxNewTokens'>): number {
    return this.roundUp(job.promptLen + job.maxNewTokens);
  }

  /** KV tokens a request reserves when admitted. */
  private admissionReservation(job: Job): number {
    return this.roundUp(job.promptLen + Math.min(job.maxNewTokens, this.cfg.reserveAhead));
  }

  /** Queues a request; false when the queue is full (the caller answers "overloaded"). */
  append(job: Job): boolean {
    if (this.waitingCount >= this.cfg.maxQueued) return false;
    let q = this.queues.get(job.adapter);
    if (!q) this.queues.set(job.adapter, (q = []));
    q.push(job);
    this.waitingCount++;
    return true;
  }

  /** Marks a request cancelled; it leaves at the next step. */
  cancel(id: number): void {
    this.cancelled.add(id);
  }

  isRunning(id: number): boolean {
    return this.running.has(id);
  }

  /** A running request finished (or failed): frees its row and reservation. */
  finish(id: number): void {
    const r = this.running.get(id);
    if (!r) return;
    this.running.delete(id);
    this.reserved -= r.reserved;
    this.cancelled.delete(id);
  }

  /** Adapters whose weights the loop should have ready: the active ones, then those next in line. */
  wantedAdapters(): string[] {
    const out = [...this.active.keys()];
    for (const key of this.waitingAdaptersByAge()) {
      if (out.length >= 2 * this.cfg.maxActiveAdapters) break;
      if (!this.active.has(key)) out.push(key);
    }
    return out;
  }

  /** Active adapters (for metrics): key → draining. */
  activeAdapters(): Map<string, boolean> {
    return new Map([...this.active].map(([k, a]) => [k, a.draining]));
  }

  /** Adapter keys with waiting requests, by the age of their oldest request. */
  private waitingAdaptersByAge(): string[] {
    const heads: [string, number][] = [];
    for (const [key, q] of this.queues) if (key !== null && q.length > 0) heads.push([key, q[0].arrival]);
    return heads.sort((a, b) => a[1] - b[1]).map(([k]) => k);
  }

  private runningOf(key: string): number {
    let n = 0;
    for (const r of this.running.values()) if (r.job.adapter === key) n++;
    return n;
  }

  /** Plans the next step. Mutates the state as if the plan runs (prompt progress, admissions). */
  step(now: number, readiness: (adapter: string) => Readiness, prefix: PrefixProbe = () => 0): { rows: PlannedRow[]; dropped: Dropped[]; preempted: Preempted[] } {
    const dropped = this.dropExpired(now, readiness);
    this.updateActive(now);

    const rows: PlannedRow[] = [];
    const preempted: Preempted[] = [];
    let budget = this.cfg.maxBatchPrefillTokens;
    // 1. decode rows (growing their reservation, preempting the youngest when the cache is full),
    //    then prompts in progress, oldest first
    const ordered = [...this.running.values()].sort((a, b) => a.job.arrival - b.job.arrival || a.job.id - b.job.id);
    // Growth first (it may preempt younger rows), then the plan, so no preempted row is planned.
    for (const r of ordered) {
      if (r.prefilled >= r.job.promptLen && this.running.has(r.job.id)) this.grow(r, r.context + 1, preempted);
    }
    for (const r of ordered) {
      if (r.prefilled < r.job.promptLen || !this.running.has(r.job.id)) continue;
      rows.push({ job: r.job, kind: 'decode', start: 0, count: 1, sample: true });
      r.context += 1;
      r.sampled += 1;
    }
    for (const r of ordered) {
      if (r.prefilled < r.job.promptLen && budget > 0 && this.running.has(r.job.id)) {
        const count = Math.min(budget, r.job.promptLen - r.prefilled);
        const sample = r.prefilled + count === r.job.promptLen;
        rows.push({ job: r.job, kind: 'prefill', start: r.prefilled, count, sample });
        r.prefilled += count;
        r.context += count;
        if (sample) r.sampled += 1;
        budget -= count;
      }
    }
    // 2. admissions, oldest head first among the queues allowed to admit
    const waitingForPrefix = new Set<Job[]>();
    while (budget > 0 && this.running.size < this.cfg.maxBatchSize) {
      let best: Job[] | null = null;
      for (const [key, q] of this.queues) {
        if (q.length === 0 || waitingForPrefix.has(q)) continue;
        if (key !== null) {
          const a = this.active.get(key);
          if (!a || a.draining || readiness(key) !== 'ready') continue;
        }
        if (!best || q[0].arrival < best[0].arrival || (q[0].arrival === best[0].arrival && q[0].id < best[0].id)) best = q;
      }
      if (!best) break;
      const job = best[0];
      const need = this.admissionReservation(job);
      if (this.reserved + need > this.cfg.kvCapacity) break; // wait for rows to finish, oldest first
      const cached = prefix(job);
      if (cached === null) {
        waitingForPrefix.add(best);
        continue;
      }
      if (!(Number.isInteger(cached) && cached >= 0 && cached < job.promptLen && cached % this.cfg.kvBlock === 0)) {
        throw new Error(`prefix probe gave ${cached} cached tokens for a ${job.promptLen}-token prompt`);
      }
      best.shift();
      this.waitingCount--;
      this.reserved += need;
      const count = Math.min(budget, job.promptLen - cached);
      const sample = cached + count === job.promptLen;
      this.running.set(job.id, { job, prefilled: cached + count, reserved: need, context: cached + count, sampled: sample ? 1 : 0 });
      rows.push({ job, kind: 'prefill', start: cached, count, sample });
      budget -= count;
    }
    return { rows, dropped, preempted };
  }

  /**
   * Makes sure `r` has KV room for `tokens` (plus the look-ahead), preempting the youngest running
   * requests if the cache is full. False when `r` itself had to be preempted.
   */
  private grow(r: Running, tokens: number, preempted: Preempted[]): boolean {
    if (tokens <= r.reserved) return true;
    const target = this.roundUp(Math.min(r.job.promptLen + r.job.maxNewTokens, tokens + this.cfg.reserveAhead));
    const delta = target - r.reserved;
    while (this.reserved + delta > this.cfg.kvCapacity) {
      let victim: Running | null = null;
      for (const v of this.running.values()) {
        if (!victim || v.job.arrival > victim.job.arrival || (v.job.arrival === victim.job.arrival && v.job.id > victim.job.id)) victim = v;
      }
      preempted.push(this.preempt(victim!));
      if (victim === r) return false;
    }
    r.reserved = target;
    this.reserved += delta;
    return true;
  }

  /** Takes a running request out, frees its reservation, and queues its resumption first in line. */
  private preempt(r: Running): Preempted {
    this.running.delete(r.job.id);
    this.reserved -= r.reserved;
    const resumed: Job = { ...r.job, promptLen: r.job.promptLen + r.sampled, maxNewTokens: r.job.maxNewTokens - r.sampled };
    let q = this.queues.get(r.job.adapter);
    if (!q) this.queues.set(r.job.adapter, (q = []));
    q.unshift(resumed);
    this.waitingCount++;
    return { job: r.job, resumed };
  }

  private dropExpired(now: number, readiness: (adapter: string) => Readiness): Dropped[] {
    const dropped: Dropped[] = [];
    for (const [id, r] of this.running) {
      const reason = this.cancelled.has(id) ? 'cancelled' : now >= r.job.deadline ? 'timeout' : null;
      if (reason) {
        dropped.push({ job: r.job, reason, wasRunning: true });
        this.finish(id);
      }
    }
    for (const [key, q] of this.queues) {
      const failed = key !== null && readiness(key) === 'failed';
      const keep: Job[] = [];
      for (const job of q) {
        const reason = this.cancelled.has(job.id) ? 'cancelled' : now >= job.deadline ? 'timeout' : failed ? 'adapter_failed' : null;
        if (reason) {
          dropped.push({ job, reason, wasRunning: false });
          this.cancelled.delete(job.id);
          this.waitingCount--;
        } else {
          keep.push(job);
        }
      }
      if (keep.length > 0) this.queues.set(key, keep);
      else this.queues.delete(key);
    }
    // Cancellations of unknown or finished requests are forgotten.
    for (const id of this.cancelled) if (!this.running.has(id)) this.cancelled.delete(id);
    return dropped;
  }

  private updateActive(now: number): void {
    const idle = (key: string, a: Active): boolean => this.runningOf(key) === 0 && (a.draining || !(this.queues.get(key)?.length ?? 0));
    for (const [key, a] of this.active) if (idle(key, a)) this.active.delete(key);
    const candidates = this.waitingAdaptersByAge().filter((k) => !this.active.has(k));
    if (candidates.length > 0 && this.active.size >= this.cfg.maxActiveAdapters) {
      // Rotate: the longest-active adapters past their time slice stop admitting, one per candidate.
      const due = [...this.active].filter(([, a]) => !a.draining && now - a.since >= this.cfg.adapterCycleMs).sort((x, y) => x[1].since - y[1].since);
      for (const [key, a] of due.slice(0, candidates.length)) {
        a.draining = true;
        if (this.runningOf(key) === 0) this.active.delete(key);
      }
    }
    for (const key of candidates) {
      if (this.active.size >= this.cfg.maxActiveAdapters) break;
      this.active.set(key, { since: now, draining: false });
    }
  }
}
