/**
 * A lock shared by every process on one adapter store (replicas on one volume): a file created with
 * O_EXCL, which is atomic on local filesystems and NFS. Held for the milliseconds a namespace change
 * takes; a lock older than `staleMs` belongs to a process that died holding it and is broken (by a
 * rename, so two processes cannot both break it).
 */
import { closeSync, openSync, readFileSync, renameSync, statSync, unlinkSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { LoraplexError } from '../errors.js';

const ME = `${process.pid}@${hostname()}#${randomBytes(4).toString('hex')}`;

/** A lock left by a process of this host that no longer runs (other threads of this process count as alive). */
function heldByTheDead(path: string): boolean {
  try {
    const m = /^(\d+)@(.*)#([0-9a-f]+) /.exec(readFileSync(path, 'utf8'));
    if (!m || m[2] !== hostname()) return false;
    const pid = Number(m[1]);
    if (pid === process.pid) return false;
    process.kill(pid, 0);
    return false;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ESRCH';
  }
}

const sleep = (ms: number): void => {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
};

export function withStoreLock<T>(path: string, fn: () => T, opts: { staleMs?: number; waitMs?: number } = {}): T {
  const staleMs = opts.staleMs ?? 10_000;
  const until = Date.now() + (opts.waitMs ?? 30_000);
  for (;;) {
    try {
      const fd = openSync(path, 'wx');
      writeSync(fd, `${ME} ${new Date().toISOString()}\n`);
      closeSync(fd);
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      try {
        if (Date.now() - statSync(path).mtimeMs > staleMs || heldByTheDead(path)) {
          const broken = `${path}.broken-${process.pid}-${Date.now()}`;
          renameSync(path, broken);
          unlinkSync(broken);
          continue;
        }
      } catch {
        continue; // it went away meanwhile
      }
      if (Date.now() > until) {
        let holder = '?';
        try {
          holder = readFileSync(path, 'utf8').trim();
        } catch {
          /* gone */
        }
        // Another process holds the lock (a busy replica, a slow disk): retryable, not the request's fault.
        throw new LoraplexError('busy', `the adapter store is locked by ${holder}; retry shortly`, { retryAfterSeconds: 2 });
      }
      sleep(5);
    }
  }
  try {
    return fn();
  } finally {
    try {
      unlinkSync(path);
    } catch {
      /* broken by another process after staleMs: nothing to release */
    }
  }
}
