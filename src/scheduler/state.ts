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
 * - Rows are shared fairly between tenants (a job's API key; without keys, its adapter; see
 *   `groupOf`). The fair share is the batch's rows divided by the tenants that hold rows or have a
 *   request ready to run (at least 1). A tenant below its share is admitted first (its oldest ready
 *   request, wherever it sits in its adapter's queue), and rows are kept free for it: others are
 *   admitted only into rows beyond those it can use. When no row is free for it, the youngest row of
 *   the tenant holding the most rows above its share is preempted as above. So a new tenant's
 *   request starts in the next step that has prefill budget for it, however many rows one tenant
 *   held; the preempted request resumes when rows free up. Preemption only takes rows from a tenant
 *   above its share and gives them to one below it, so no two tenants take rows back and forth.
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
  /** Who the request belongs to, for the fair share of rows: an opaque digest of its API key, or null (no keys). */
  readonly tenant: string | null;
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

/** Rows held and waiting per tenant, for the fair share (see `groupOf`). */
interface Fairness {
  /** Rows a tenant may hold before it counts as above its share. */
  share: number;
  held: Map<string, number>;
  /** Requests ready to run now (their adapter is active and loaded), per tenant. */
  ready: Map<string, number>;
}

/**
 * The tenant a job's rows count against: its API key, or, on a server without keys, its adapter
 * (the base model is one tenant), so that one busy adapter cannot hold every row either.
 */
function groupOf(job: Job): string {
  return job.tenant !== null ? `key:${job.tenant}` : `adapter:${job.adapter ?? ''}`;
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
  /** Running rows that sit out the plan until the engine has sampled their last token (its grammar mask was late). */
  private readonly holds = new Set<number>();
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

  /**
   * The row's last planned token is not sampled yet (its grammar mask is late): it is left out of
   * the plan, and never preempted, until `unhold` (preempting it would resume it with a token it
   * does not have).
   */
  hold(id: number): void {
    if (this.running.has(id)) this.holds.add(id);
  }

  unhold(id: number): void {
    this.holds.delete(id);
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
    this.holds.delete(id);
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

  /** Requests in the queue of `key` (null: the base model) may be admitted now. */
  private admissible(key: string | null, readiness: (adapter: string) => Readiness): boolean {
    if (key === null) return true;
    const a = this.active.get(key);
    return a !== undefined && !a.draining && readiness(key) === 'ready';
  }

  private fairness(readiness: (adapter: string) => Readiness): Fairness {
    const held = new Map<string, number>();
    const ready = new Map<string, number>();
    for (const r of this.running.values()) bump(held, groupOf(r.job), 1);
    for (const [key, q] of this.queues) if (this.admissible(key, readiness)) for (const job of q) bump(ready, groupOf(job), 1);
    const tenants = new Set([...held.keys(), ...ready.keys()]).size;
    return { share: Math.max(1, Math.floor(this.cfg.maxBatchSize / Math.max(1, tenants))), held, ready };
  }

  /**
   * Preempts the youngest rows of the tenants most above their share until a row is free for every
   * ready request of a tenant below its share (or no tenant is above its share).
   */
  private preemptForShare(f: Fairness, preempted: Preempted[]): void {
    let short = owedRows(f) - (this.cfg.maxBatchSize - this.running.size);
    while (short > 0) {
      let richest: string | null = null;
      let most = f.share;
      for (const [g, n] of f.held) {
        if (n > most) {
          most = n;
          richest = g;
        }
      }
      if (richest === null) return;
      let victim: Running | null = null;
      for (const v of this.running.values()) if (groupOf(v.job) === richest && !this.holds.has(v.job.id) && (!victim || younger(v.job, victim.job))) victim = v;
      if (!victim) return;
      preempted.push(this.preempt(victim));
      f.held.set(richest, most - 1);
      short--;
    }
  }

  /**
   * Plans the next step. Mutates the state as if the plan runs (prompt progress, admissions).
   * `prefillBudget` may lower the step's prompt tokens below maxBatchPrefillTokens, given the step's
   * decode rows (steps sized by time; see step-time.ts).
   */
  step(
    now: number,
    readiness: (adapter: string) => Readiness,
    prefix: PrefixProbe = () => 0,
    prefillBudget: (decodeRows: number) => number = () => Infinity,
  ): { rows: PlannedRow[]; dropped: Dropped[]; preempted: Preempted[] } {
    const dropped = this.dropExpired(now, readiness);
    this.updateActive(now);

    const rows: PlannedRow[] = [];
    const preempted: Preempted[] = [];
    let budget = this.cfg.maxBatchPrefillTokens;
    // 0. rows for tenants below their fair share (before planning, so no preempted row is planned)
    this.preemptForShare(this.fairness(readiness), preempted);
    // 1. decode rows (growing their reservation, preempting the youngest when the cache is full),
    //    then prompts in progress, oldest first
    const ordered = [...this.running.values()].filter((r) => !this.holds.has(r.job.id)).sort((a, b) => a.job.arrival - b.job.arrival || a.job.id - b.job.id);
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
    budget = Math.max(1, Math.min(budget, Math.floor(prefillBudget(rows.length))));
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
    // 2. admissions: the oldest ready request of a tenant below its share first; otherwise the
    //    oldest head among the queues allowed to admit, into rows no tenant below its share can use
    const fair = this.fairness(readiness);
    const waitingForPrefix = new Set<Job[]>();
    while (budget > 0 && this.running.size < this.cfg.maxBatchSize) {
      let best: Job[] | null = null;
      let at = 0;
      for (const [key, q] of this.queues) {
        if (q.length === 0 || waitingForPrefix.has(q) || !this.admissible(key, readiness)) continue;
        const i = q.findIndex((j) => (fair.held.get(groupOf(j)) ?? 0) < fair.share);
        if (i >= 0 && (!best || older(q[i], best[at]))) {
          best = q;
          at = i;
        }
      }
      if (!best) {
        if (this.cfg.maxBatchSize - this.running.size <= owedRows(fair)) break;
        for (const [key, q] of this.queues) {
          if (q.length === 0 || waitingForPrefix.has(q) || !this.admissible(key, readiness)) continue;
          if (!best || older(q[0], best[0])) best = q;
        }
        at = 0;
      }
      if (!best) break;
      const job = best[at];
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
      best.splice(at, 1);
      this.waitingCount--;
      bump(fair.held, groupOf(job), 1);
      bump(fair.ready, groupOf(job), -1);
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
      for (const v of this.running.values()) if ((v === r || !this.holds.has(v.job.id)) && (!victim || younger(v.job, victim.job))) victim = v;
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

function bump(m: Map<string, number>, key: string, by: number): void {
  m.set(key, (m.get(key) ?? 0) + by);
}

/** Rows owed to tenants below their share: as many as they have ready requests, up to the share. */
function owedRows(f: Fairness): number {
  let n = 0;
  for (const [g, waiting] of f.ready) n += Math.min(waiting, Math.max(0, f.share - (f.held.get(g) ?? 0)));
  return n;
}

/** Arrived earlier (ids break ties: they are handed out in submission order). */
function older(a: Job, b: Job): boolean {
  return a.arrival < b.arrival || (a.arrival === b.arrival && a.id < b.id);
}

function younger(a: Job, b: Job): boolean {
  return older(b, a);
}
