/** The scheduler state machine, step by step with tiny capacities. */
import { describe, expect, it } from 'vitest';
import { SchedulerState, type Job, type PlannedRow, type PrefixProbe, type Readiness, type SchedulerConfig } from '../../src/scheduler/state.js';

const CFG: SchedulerConfig = {
  maxBatchSize: 2,
  maxBatchPrefillTokens: 5,
  maxActiveAdapters: 2,
  maxQueued: 4,
  adapterCycleMs: 100,
  kvCapacity: 64,
  kvBlock: 4,
  reserveAhead: Infinity,
};

let nextId = 1;
function job(adapter: string | null, promptLen: number, arrival: number, maxNewTokens = 4, deadline = 1e9): Job {
  return { id: nextId++, adapter, promptLen, maxNewTokens, arrival, deadline, tenant: null };
}
function keyed(tenant: string, adapter: string | null, promptLen: number, arrival: number, maxNewTokens = 4): Job {
  return { ...job(adapter, promptLen, arrival, maxNewTokens), tenant };
}
const ready = (): Readiness => 'ready';

/**
 * The engine loop's bookkeeping around the state: each sampled token counts toward its request's
 * max tokens (across preemptions, by id), and a request that has them all finishes.
 */
class Driver {
  readonly tokens = new Map<number, number>();
  private readonly want = new Map<number, number>();
  readonly preempted: number[] = [];

  constructor(readonly s: SchedulerState) {}

  add(...jobs: Job[]): void {
    for (const j of jobs) {
      expect(this.s.append(j)).toBe(true);
      this.want.set(j.id, j.maxNewTokens);
    }
  }

  /** One step; returns the ids of the rows it ran. */
  step(now: number, probe?: PrefixProbe): number[] {
    const r = this.s.step(now, ready, probe);
    this.preempted.push(...r.preempted.map((p) => p.job.id));
    for (const row of r.rows) if (row.sample) this.tokens.set(row.job.id, (this.tokens.get(row.job.id) ?? 0) + 1);
    for (const row of r.rows) if (this.tokens.get(row.job.id) === this.want.get(row.job.id)) this.s.finish(row.job.id);
    return r.rows.map((row) => row.job.id);
  }

  done(id: number): boolean {
    return this.tokens.get(id) === this.want.get(id) && !this.s.isRunning(id);
  }
}
const summary = (rows: PlannedRow[]): string[] => rows.map((r) => `${r.job.id}:${r.kind}:${r.start}+${r.count}${r.sample ? '*' : ''}`);

describe('SchedulerState', () => {
  it('admits oldest first within the row limit and chunks prompts to the prefill budget', () => {
    nextId = 1;
    const s = new SchedulerState(CFG);
    const a = job(null, 3, 0);
    const b = job(null, 4, 1);
    const c = job(null, 1, 2);
    [a, b, c].forEach((j) => expect(s.append(j)).toBe(true));
    // step 1: a (3 tokens, done*) then b gets the remaining budget 2 of 4
    expect(summary(s.step(0, ready).rows)).toEqual(['1:prefill:0+3*', '2:prefill:0+2']);
    expect(s.waiting).toBe(1);
    expect(s.runningCount).toBe(2);
    // step 2: a decodes, b finishes its prompt; c waits (2 rows max)
    expect(summary(s.step(1, ready).rows)).toEqual(['1:decode:0+1*', '2:prefill:2+2*']);
    // a finishes: c is admitted next step
    s.finish(a.id);
    expect(summary(s.step(2, ready).rows)).toEqual(['2:decode:0+1*', '3:prefill:0+1*']);
    expect(s.waiting).toBe(0);
  });

  it('takes no more prompt tokens than the step-time budget allows for its decode rows (at least 1)', () => {
    nextId = 1;
    const s = new SchedulerState({ ...CFG, maxBatchSize: 3 });
    const a = job(null, 2, 0);
    const b = job(null, 9, 1);
    [a, b].forEach((j) => expect(s.append(j)).toBe(true));
    const asked: number[] = [];
    // 4 tokens with no decode rows, 2 per decode row fewer.
    const budget = (decodeRows: number): number => {
      asked.push(decodeRows);
      return 4 - 2 * decodeRows;
    };
    expect(summary(s.step(0, ready, undefined, budget).rows)).toEqual(['1:prefill:0+2*', '2:prefill:0+2']);
    expect(summary(s.step(1, ready, undefined, budget).rows)).toEqual(['1:decode:0+1*', '2:prefill:2+2']);
    // Two decode rows leave 0: a prompt still progresses by one token.
    s.append(job(null, 1, 2));
    expect(summary(s.step(2, ready, undefined, () => 0).rows)).toEqual(['1:decode:0+1*', '2:prefill:4+1']);
    // Above maxBatchPrefillTokens, the configured budget wins.
    expect(summary(s.step(3, ready, undefined, () => 100).rows)).toEqual(['1:decode:0+1*', '2:prefill:5+4*', '3:prefill:0+1*']);
    expect(asked).toEqual([0, 1]);
  });

  it('refuses beyond the waiting limit', () => {
    const s = new SchedulerState({ ...CFG, maxQueued: 2 });
    expect(s.append(job(null, 1, 0))).toBe(true);
    expect(s.append(job(null, 1, 0))).toBe(true);
    expect(s.append(job(null, 1, 0))).toBe(false);
    expect(s.waiting).toBe(2);
  });

  it('reserves KV for prompt + max tokens and waits rather than overflow, keeping FIFO order', () => {
    const s = new SchedulerState({ ...CFG, kvCapacity: 16, maxBatchSize: 4, maxBatchPrefillTokens: 100 });
    const big = job(null, 8, 0, 4); // reserves 12
    const big2 = job(null, 6, 1, 4); // reserves 12: does not fit next to big
    const small = job(null, 1, 2, 1); // would fit, but waits behind big2
    [big, big2, small].forEach((j) => s.append(j));
    expect(summary(s.step(0, ready).rows)).toEqual([`${big.id}:prefill:0+8*`]);
    expect(s.reservedTokens).toBe(12);
    s.finish(big.id);
    expect(s.reservedTokens).toBe(0);
    expect(summary(s.step(1, ready).rows)).toEqual([`${big2.id}:prefill:0+6*`, `${small.id}:prefill:0+1*`]);
  });

  it('holds requests for an adapter until it is ready, and fails them when its load fails', () => {
    const s = new SchedulerState(CFG);
    const x = job('x', 2, 0);
    const y = job(null, 2, 1);
    s.append(x);
    s.append(y);
    let state: Readiness = 'loading';
    expect(s.wantedAdapters()).toEqual(['x']);
    expect(summary(s.step(0, () => state).rows)).toEqual([`${y.id}:prefill:0+2*`]);
    state = 'failed';
    const r = s.step(1, () => state);
    expect(r.dropped).toEqual([{ job: x, reason: 'adapter_failed', wasRunning: false }]);
    expect(s.waiting).toBe(0);
  });

  it('caps distinct adapters and rotates them after the cycle time', () => {
    const s = new SchedulerState({ ...CFG, maxBatchSize: 8, maxActiveAdapters: 2, maxQueued: 20, maxBatchPrefillTokens: 100 });
    const a1 = job('a', 1, 0, 8);
    const b1 = job('b', 1, 1, 8);
    const c1 = job('c', 1, 2, 8);
    const a2 = job('a', 1, 3, 8);
    [a1, b1, c1, a2].forEach((j) => s.append(j));
    // a and b are active; c waits
    expect(summary(s.step(0, ready).rows)).toEqual([`${a1.id}:prefill:0+1*`, `${b1.id}:prefill:0+1*`, `${a2.id}:prefill:0+1*`]);
    expect([...s.activeAdapters().keys()]).toEqual(['a', 'b']);
    // before the cycle time: nothing changes, c still waits
    expect(s.step(50, ready).rows.map((r) => r.kind)).toEqual(['decode', 'decode', 'decode']);
    // after it: a (oldest) drains; new 'a' requests are not admitted while draining
    const a3 = job('a', 1, 120, 8);
    s.append(a3);
    s.step(150, ready);
    expect(s.activeAdapters().get('a')).toBe(true);
    // when a's rows finish, c takes its place
    s.finish(a1.id);
    s.finish(a2.id);
    const rows = s.step(160, ready).rows;
    expect(s.activeAdapters().has('c')).toBe(true);
    expect(summary(rows)).toContain(`${c1.id}:prefill:0+1*`);
    expect(rows.map((r) => r.job.id)).not.toContain(a3.id);
  });

  it('drops cancelled and timed-out requests, waiting or running, and frees their reservation', () => {
    const s = new SchedulerState(CFG);
    const a = job(null, 2, 0, 4, 1000);
    const b = job(null, 2, 0, 4, 50);
    const c = job(null, 2, 0, 4);
    [a, b, c].forEach((j) => s.append(j));
    s.step(0, ready); // a and b run
    s.cancel(a.id);
    s.cancel(c.id);
    const r = s.step(60, ready);
    expect(r.dropped.map((d) => [d.job.id, d.reason, d.wasRunning])).toEqual([
      [a.id, 'cancelled', true],
      [b.id, 'timeout', true],
      [c.id, 'cancelled', false],
    ]);
    expect(s.runningCount).toBe(0);
    expect(s.reservedTokens).toBe(0);
    expect(s.waiting).toBe(0);
  });

  it('grows reservations as rows decode and preempts the youngest when the cache is full', () => {
    const s = new SchedulerState({ ...CFG, kvCapacity: 48, kvBlock: 4, reserveAhead: 4, maxBatchPrefillTokens: 100 });
    const old = job(null, 4, 0, 40); // admitted with 4 + 4 = 8
    const young = job(null, 4, 1, 40);
    s.append(old);
    s.append(young);
    expect(summary(s.step(0, ready).rows)).toEqual([`${old.id}:prefill:0+4*`, `${young.id}:prefill:0+4*`]);
    expect(s.reservedTokens).toBe(16);
    let preempted: { job: Job; resumed: Job }[] = [];
    for (let t = 1; t < 40 && preempted.length === 0; t++) preempted = s.step(t, ready).preempted;
    // The cache (48) filled: the young request left with what it had sampled, resumable.
    expect(preempted).toHaveLength(1);
    expect(preempted[0].job.id).toBe(young.id);
    const { resumed } = preempted[0];
    expect(resumed.promptLen + resumed.maxNewTokens).toBe(4 + 40);
    expect(resumed.promptLen).toBeGreaterThan(4);
    expect(s.runningCount).toBe(1);
    expect(s.waiting).toBe(1);
    // The old one keeps decoding; when it finishes, the young one resumes by re-reading its tokens.
    const rows = s.step(100, ready).rows;
    expect(summary(rows)).toEqual([`${old.id}:decode:0+1*`]);
    s.finish(old.id);
    expect(summary(s.step(101, ready).rows)).toEqual([`${young.id}:prefill:0+${resumed.promptLen}*`]);
  });

  describe('fair share of rows', () => {
    const FAIR: SchedulerConfig = { ...CFG, maxBatchSize: 4, maxBatchPrefillTokens: 100, maxQueued: 20, kvCapacity: 1024 };

    it("a new tenant's request takes a row from the tenant holding them all; the preempted request resumes and completes", () => {
      const d = new Driver(new SchedulerState(FAIR));
      // Tenant a: two requests of n = 2 (four rows, the whole batch), 20 tokens each.
      const a = [0, 0, 1, 1].map((t) => keyed('a', null, 3, t, 20));
      d.add(...a);
      expect(d.step(0)).toEqual(a.map((j) => j.id));
      d.step(1);
      // Tenant b arrives with a short request: at the next step a's youngest row makes room for it.
      const b = keyed('b', null, 2, 2, 3);
      d.add(b);
      const rows = d.step(2);
      expect(d.preempted).toEqual([a[3].id]);
      expect(rows).toContain(b.id);
      expect(rows).not.toContain(a[3].id);
      // b runs to its end while a holds the other three rows, and a takes nothing back meanwhile.
      for (let t = 3; !d.done(b.id); t++) {
        expect(d.step(t)).not.toContain(a[3].id);
        expect(t).toBeLessThan(10);
      }
      expect(d.tokens.get(a[3].id)).toBe(2);
      expect(a.slice(0, 3).some((j) => d.done(j.id))).toBe(false);
      // Then a's preempted request resumes (recomputing its prompt and the 2 tokens it had) and
      // every one of a's requests ends with exactly its 20 tokens.
      for (let t = 10; !a.every((j) => d.done(j.id)); t++) {
        d.step(t);
        expect(t).toBeLessThan(100);
      }
      for (const j of a) expect(d.tokens.get(j.id)).toBe(20);
      expect(d.preempted).toEqual([a[3].id]);
    });

    it('without API keys each adapter is a tenant: a busy adapter yields a row to another', () => {
      const d = new Driver(new SchedulerState(FAIR));
      const x = [0, 0, 0, 0].map(() => job('x', 2, 0, 20));
      d.add(...x);
      d.step(0);
      const base = job(null, 2, 1, 2);
      d.add(base);
      expect(d.step(1)).toContain(base.id);
      expect(d.preempted).toEqual([x[3].id]);
    });

    it('takes rows only from tenants above their share, and keeps the rows owed to a tenant below it', () => {
      const d = new Driver(new SchedulerState(FAIR));
      const a = [0, 0, 0, 0].map(() => keyed('a', null, 2, 0, 30));
      d.add(...a);
      d.step(0);
      // b asks for three rows; its share is two (4 rows / 2 tenants): two of a's rows go, no more.
      const b = [1, 1, 1].map(() => keyed('b', null, 2, 1, 30));
      d.add(...b);
      // b's second choice waits a step for the first one's prompt (as choices of n > 1 do): the
      // row freed for it stays free rather than going back to a.
      const probe: PrefixProbe = (j) => (j.id === b[1].id && !d.s.isRunning(b[0].id) ? 0 : j.id === b[1].id && (d.tokens.get(b[0].id) ?? 0) === 0 ? null : 0);
      const rows = d.step(1, probe);
      expect(d.preempted).toEqual([a[3].id, a[2].id]);
      expect(rows).toContain(b[0].id);
      expect(rows).not.toContain(b[1].id);
      expect(rows).not.toContain(a[2].id);
      expect(rows).not.toContain(a[3].id);
      expect(d.s.runningCount).toBe(3);
      // Next step b's second choice takes the kept row; b's third waits (b is at its share), and
      // nothing more is preempted: a and b hold two rows each.
      expect(d.step(2, probe)).toContain(b[1].id);
      for (let t = 3; t < 10; t++) d.step(t, probe);
      expect(d.preempted).toEqual([a[3].id, a[2].id]);
      expect(d.s.runningCount).toBe(4);
      expect(d.s.waiting).toBe(3);
    });

    it('a tenant above its share keeps its rows while others want no more, and takes free rows nobody below its share can use', () => {
      const d = new Driver(new SchedulerState(FAIR));
      const a = [0, 0, 0, 0, 0, 0, 0].map(() => keyed('a', null, 2, 0, 6));
      d.add(...a);
      expect(d.step(0)).toHaveLength(4);
      // b takes one row and wants no more: a keeps three, one above its share of two.
      const b = keyed('b', null, 2, 1, 30);
      d.add(b);
      expect(d.step(1)).toContain(b.id);
      expect(d.preempted).toEqual([a[3].id]);
      for (let t = 2; t < 5; t++) d.step(t);
      expect(d.s.runningCount).toBe(4);
      // a's three rows end at step 5; at step 6 a's waiting requests take all three free rows.
      d.step(5);
      expect(d.s.runningCount).toBe(1);
      d.step(6);
      expect(d.s.runningCount).toBe(4);
      expect(d.preempted).toEqual([a[3].id]);
    });
  });
});
