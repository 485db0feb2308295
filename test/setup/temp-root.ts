// One temporary root per run of the suite: TMPDIR points into it for the test workers and every
// process they start, and the root is removed when the run ends — so temporary files made outside
// tempDir() (by a spawned server, a tool, a crashed child) do not outlive the run either.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export default function setup(): () => void {
  const root = mkdtempSync(join(tmpdir(), 'loraplex-suite-'));
  process.env.TMPDIR = root;
  return () => rmSync(root, { recursive: true, force: true, maxRetries: 3 });
}
