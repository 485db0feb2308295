/**
 * The grammar checker thread (see grammar-host.ts): compiles each spec the grammar thread has not
 * seen, under a time budget, before the grammar thread may compile it. A spec that takes too long
 * (or crashes XGrammar) ends here — this thread is terminated and replaced — instead of stalling the
 * masks of every constrained row on the grammar thread. It says it is ready only once its compiler
 * is built, so building it never counts against a spec's budget.
 */
import { workerData } from 'node:worker_threads';
import { GrammarCompiler, grammarVocab, type GrammarSpec } from '../runtime/grammar/compiler.js';
import { WARM_UP_SPECS } from '../runtime/grammar/warm-up.js';
import { lowerThreadPriority, serveTasks } from '../util/worker-task.js';
import type { GrammarWorkerInit } from './grammar-host.js';

const init = workerData as GrammarWorkerInit;
lowerThreadPriority();
// Checking only: nothing compiled here is kept.
const compiler = await GrammarCompiler.create(grammarVocab(init.tokenizer, init.vocabSize, init.stopIds), 1);
// Warm before taking tasks, so neither the first spec nor the first after a replacement pays for it.
for (const spec of WARM_UP_SPECS) await compiler.compile(spec);
serveTasks(async (task) => {
  await compiler.compile((task as { spec: GrammarSpec }).spec);
  return { result: true };
});
