/**
 * Writes that survive a power loss: data is fsynced before the rename that publishes it, and the
 * directory that holds a renamed entry is fsynced after (so the new name itself is on disk).
 */
import { closeSync, fsyncSync, openSync, readdirSync, writeSync } from 'node:fs';
import { join } from 'node:path';

export function fsyncPath(path: string): void {
  const fd = openSync(path, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** fsyncs every file in `dir`, then `dir` itself. */
export function fsyncTree(dir: string): void {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    if (e.isFile()) fsyncPath(join(dir, e.name));
  }
  fsyncPath(dir);
}

/** Writes `data` to `path` and fsyncs it. */
export function writeFileDurable(path: string, data: string): void {
  const fd = openSync(path, 'w');
  try {
    const buf = Buffer.from(data);
    let done = 0;
    while (done < buf.length) done += writeSync(fd, buf, done);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}
