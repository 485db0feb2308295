/**
 * The adapter validation thread (see adapter-checker.ts): reads adapter directories off the HTTP
 * event loop, at a lower scheduling priority than the engine.
 */
import { workerData } from 'node:worker_threads';
import { inspectPeftAdapter, validatePeftAdapter, type LoadOptions } from '../../adapters/peft.js';
import type { ModelSpec } from '../../runtime/checkpoint/spec.js';
import { lowerThreadPriority, serveTasks } from '../../util/worker-task.js';
import type { CheckTask } from './adapter-checker.js';

const { spec, load } = workerData as { spec: ModelSpec; load: LoadOptions };
lowerThreadPriority();

serveTasks((task) => {
  const t = task as CheckTask;
  return { result: t.full ? validatePeftAdapter(t.dir, spec, load) : inspectPeftAdapter(t.dir, spec, load) };
});
