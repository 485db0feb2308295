/**
 * The store thread (see store-client.ts): every read and write of the adapter store — validating
 * adapter files, digesting them, scanning, publishing, removing, collecting old versions — happens
 * here, off the HTTP event loop and at a lower scheduling priority than the engine. One thread, so
 * this process's changes are applied one at a time; the store lock orders them with other replicas'.
 */
import { workerData } from 'node:worker_threads';
import { adapterDigest } from '../../adapters/digest.js';
import { inspectPeftAdapter, validatePeftAdapter, type LoadOptions } from '../../adapters/peft.js';
import { AdapterStore, type StoreOptions } from '../../adapters/store.js';
import { StorageFullError } from '../../errors.js';
import type { ModelSpec } from '../../runtime/checkpoint/spec.js';
import { lowerThreadPriority, serve } from '../../util/worker-task.js';
import type { StoreTasks } from './tasks.js';

const { spec, load, root, store: storeOptions } = workerData as { spec: ModelSpec; load: LoadOptions; root: string | null; store: StoreOptions };
lowerThreadPriority();
const store = root ? new AdapterStore(root, storeOptions) : null;

function need(): AdapterStore {
  if (!store) throw new Error('no adapter store is configured');
  return store;
}

/** Runs a store task; a full disk (while publishing, removing or collecting) is the machine's fault (507), not the request's. */
function writing<R>(what: string, change: () => R): R {
  try {
    return change();
  } catch (err) {
    throw StorageFullError.of(err, what) ?? err;
  }
}

serve<StoreTasks>({
  validate: ({ dir, full }) =>
    writing('the adapter store', () => {
      const info = full ? validatePeftAdapter(dir, spec, load) : inspectPeftAdapter(dir, spec, load);
      return { info, digest: adapterDigest(dir) };
    }),
  scan: () => writing('the adapter store', () => need().scan()),
  publish: (t) => writing(`the adapter ${t.name} into the store`, () => need().publish(t.staged, t.name, t.digest, t.mode)),
  unpublish: (t) => writing('the adapter store', () => need().unpublish(t.name, t.digest)),
  collect: (t) => writing('the adapter store', () => need().collect(new Set(t.inUse))),
});
