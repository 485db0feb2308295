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
import { lowerThreadPriority, serveTasks } from '../../util/worker-task.js';
import type { StoreTask, Validated } from './tasks.js';

const { spec, load, root, store: storeOptions } = workerData as { spec: ModelSpec; load: LoadOptions; root: string | null; store: StoreOptions };
lowerThreadPriority();
const store = root ? new AdapterStore(root, storeOptions) : null;

function need(): AdapterStore {
  if (!store) throw new Error('no adapter store is configured');
  return store;
}

serveTasks((task) => {
  const t = task as StoreTask;
  try {
    return run(t);
  } catch (err) {
    // A full disk while publishing, removing or collecting is the machine's fault (507), not the request's.
    throw StorageFullError.of(err, t.kind === 'publish' ? `the adapter ${t.name} into the store` : 'the adapter store') ?? err;
  }
});

function run(t: StoreTask): { result: unknown } {
  switch (t.kind) {
    case 'validate': {
      const info = t.full ? validatePeftAdapter(t.dir, spec, load) : inspectPeftAdapter(t.dir, spec, load);
      return { result: { info, digest: adapterDigest(t.dir) } satisfies Validated };
    }
    case 'scan':
      return { result: need().scan() };
    case 'publish':
      return { result: need().publish(t.staged, t.name, t.digest, t.mode) };
    case 'unpublish':
      need().unpublish(t.name, t.digest);
      return { result: true };
    case 'collect':
      return { result: need().collect(new Set(t.inUse)) };
  }
}
