/**
 * Temporary directories for tests. Every directory made here is removed when its test file ends
 * (test/setup/remove-temp-dirs.ts), so a run of the suite leaves nothing behind and a long CI job
 * does not fill the disk with models, stores and caches.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const made: string[] = [];

export function tempDir(prefix = 'loraplex-test-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  made.push(dir);
  return dir;
}

/** Removes every directory tempDir() made in this test file. */
export function removeTempDirs(): void {
  for (const dir of made.splice(0)) rmSync(dir, { recursive: true, force: true, maxRetries: 3 });
}
