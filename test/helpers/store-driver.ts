/**
 * A child process for the store crash test: performs one store operation and is killed with
 * SIGKILL at the named step (`node --import tsx store-driver.ts <root> <op> <name> <from> <step>`).
 */
import { cpSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { adapterDigest } from '../../src/adapters/digest.js';
import { StagingArea } from '../../src/adapters/staging.js';
import { AdapterStore } from '../../src/adapters/store.js';

const [root, op, name, from, crashAt] = process.argv.slice(2);
const die = (step: string): void => {
  if (step === crashAt) process.kill(process.pid, 'SIGKILL');
};
const store = new AdapterStore(root, { onStep: die });
if (op === 'delete') {
  const entry = store.scan().entries.find((e) => e.name === name)!;
  store.unpublish(name, entry.digest);
} else {
  const staged = new StagingArea(root).stage();
  // File by file, so a kill can land between two of them.
  const files = readdirSync(from);
  files.forEach((f, i) => {
    cpSync(join(from, f), join(staged, f));
    if (i === 0) die('staging-partial');
  });
  store.publish(staged, name, adapterDigest(staged), op === 'replace' ? 'replace' : 'create');
}
process.stdout.write('completed\n');
