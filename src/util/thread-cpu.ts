/**
 * Per-thread CPU time, for budgets that must measure the work a request causes rather than the
 * wall-clock time it took on a busy machine (a thread that waits for a core accrues no CPU time).
 * Node 20 has no per-thread clock, so on Linux it is read from procfs: `schedstat` gives the
 * nanoseconds a thread has run; `stat` (utime + stime, in clock ticks) is the fallback. Any thread of
 * this process can be read from any other, so the thread that enforces a budget reads the clock of
 * the thread doing the work. Elsewhere both functions answer null and callers fall back to wall time.
 */
import { readFileSync, readlinkSync } from 'node:fs';

/** Clock ticks per second of `stat`'s utime/stime (USER_HZ, 100 on every Linux architecture Node runs on). */
const USER_HZ = 100;

/** The calling thread's kernel thread id (Linux), or null. */
export function currentThreadId(): number | null {
  try {
    const tid = Number(readlinkSync('/proc/thread-self').split('/').pop());
    return Number.isSafeInteger(tid) && tid > 0 ? tid : null;
  } catch {
    return null;
  }
}

/** Milliseconds of CPU time thread `tid` of this process has used, or null when it cannot be read (gone, or not Linux). */
export function threadCpuMs(tid: number): number | null {
  try {
    const ns = Number(readFileSync(`/proc/self/task/${tid}/schedstat`, 'latin1').split(' ', 1)[0]);
    if (Number.isFinite(ns)) return ns / 1e6;
  } catch {
    // no schedstat (kernel without CONFIG_SCHED_INFO): try stat
  }
  try {
    const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'latin1');
    // Fields after the command name (which may hold spaces and parentheses): state is field 3, utime 14, stime 15.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const ticks = Number(rest[11]) + Number(rest[12]);
    return Number.isFinite(ticks) ? (ticks * 1000) / USER_HZ : null;
  } catch {
    return null;
  }
}
