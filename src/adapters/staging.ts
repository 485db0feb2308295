/**
 * Where uploads are written before they are validated and published: one directory per upload,
 * named after the process that owns it (host, pid, and an id of this start). A process removes only
 * its own leftovers — of an earlier start, or of a process of this host that has died — so a second
 * replica starting on the same store never wipes an upload in progress elsewhere. Abandoned staging
 * of other hosts goes after a day (AdapterStore.collect).
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, rmSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { StorageFullError } from '../errors.js';

const HOST = hostname().replace(/[^A-Za-z0-9.-]/g, '_');
const START = randomBytes(4).toString('hex');

export class StagingArea {
  readonly dir: string;

  constructor(storeRoot: string) {
    this.dir = join(storeRoot, '.loraplex', 'staging');
    mkdirSync(this.dir, { recursive: true });
    this.removeLeftovers();
  }

  /** A fresh, empty directory for one incoming adapter. */
  stage(): string {
    const dir = join(this.dir, `${HOST}-${process.pid}-${START}-${randomBytes(6).toString('hex')}`);
    try {
      mkdirSync(dir, { recursive: true });
    } catch (err) {
      throw StorageFullError.of(err, 'a staging directory') ?? err;
    }
    return dir;
  }

  discard(staged: string): void {
    rmSync(staged, { recursive: true, force: true });
  }

  /** Staging directories of this process (this start excepted) and of dead processes of this host. */
  private removeLeftovers(): void {
    let entries: string[];
    try {
      entries = readdirSync(this.dir);
    } catch {
      return;
    }
    for (const name of entries) {
      const m = /^(.*)-(\d+)-([0-9a-f]{8})-[0-9a-f]+$/.exec(name);
      if (!m || m[1] !== HOST) continue;
      const pid = Number(m[2]);
      if ((pid === process.pid && m[3] !== START) || (pid !== process.pid && !alive(pid))) rmSync(join(this.dir, name), { recursive: true, force: true });
    }
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
