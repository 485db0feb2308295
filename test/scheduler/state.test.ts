/** The scheduler state machine, step by step with tiny capacities. */
import { describe, expect, it } from 'vitest';
import { SchedulerState, type Job, type PlannedRow, type Readiness, type SchedulerConfig } from '../../src/scheduler/state.js';

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
  return { id: nextId++, adapter, promptLen, maxNewTokens, arrival, deadline };
}
const ready = (): Readiness => 'ready';
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
});
