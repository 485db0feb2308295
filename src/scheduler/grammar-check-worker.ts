/**
 * The grammar checker thread (see grammar-host.ts): compiles each spec the grammar thread has not
 * seen, under a time budget, before the grammar thread may compile it, then computes its first
 * masks along a pseudo-random path through the grammar, each within the per-token budget: a
 * grammar that compiles fast but whose masks grow with every token is refused here rather than
 * found out mid-answer. A spec that takes too long (or crashes XGrammar) ends here — this thread is
 * terminated and replaced — instead of stalling the masks of every constrained row on the grammar
 * thread. It says it is ready only once its compiler is built, so building it never counts against
 * a spec's budget.
 */
import { workerData } from 'node:worker_threads';
import { GrammarCompiler, GrammarError, grammarKey, grammarVocab, type GrammarSpec, type GrammarState } from '../runtime/grammar/compiler.js';
import { WARM_UP_SPECS } from '../runtime/grammar/warm-up.js';
import { xgrammarAborted, xgrammarMemoryBytes } from '../runtime/grammar/xgrammar.js';
import { prng } from '../util/prng.js';
import { currentThreadId, threadCpuMs } from '../util/thread-cpu.js';
import { lowerThreadPriority, serve } from '../util/worker-task.js';
import { DEFAULT_GRAMMAR_MASK_TIMEOUT_MS, GRAMMAR_PROBE_STEPS, specParam, type GrammarCheckTasks, type GrammarWorkerInit } from './grammar-host.js';

const init = workerData as GrammarWorkerInit;
const maskTimeoutMs = init.maskTimeoutMs ?? DEFAULT_GRAMMAR_MASK_TIMEOUT_MS;
const stopIds = new Set(init.stopIds);
const tid = currentThreadId();
const cpuMs = (): number => (tid === null ? null : threadCpuMs(tid)) ?? performance.now();
lowerThreadPriority();
// Checking only: nothing compiled here is kept.
const compiler = await GrammarCompiler.create(grammarVocab(init.tokenizer, init.vocabSize, init.stopIds), 1);
// Warm before taking tasks, so neither the first spec nor the first after a replacement pays for it.
for (const spec of WARM_UP_SPECS) await probe(spec, await compiler.state(spec));

/** A token the mask allows, chosen by `next`; a stop token only when nothing else is allowed; null: none. */
function pick(mask: Int32Array, next: () => number): number | null {
  const allowed: number[] = [];
  let stop: number | null = null;
  const n = Math.min(mask.length * 32, init.vocabSize);
  for (let id = 0; id < n; id++) {
    if (((mask[id >>> 5] >>> (id & 31)) & 1) === 0) continue;
    if (stopIds.has(id)) stop ??= id;
    else allowed.push(id);
  }
  return allowed.length > 0 ? allowed[Math.floor(next() * allowed.length)] : stop;
}

/** Computes the spec's first masks, each within the per-token budget; throws the refusal. */
async function probe(spec: GrammarSpec, state: GrammarState): Promise<void> {
  try {
    const next = prng(Buffer.from(grammarKey(spec), 'base64').readUInt32LE(0));
    for (let step = 0; step < GRAMMAR_PROBE_STEPS && !state.terminated; step++) {
      const t0 = cpuMs();
      const mask = await state.mask();
      const used = cpuMs() - t0;
      if (used > maskTimeoutMs) {
        const param = specParam(spec);
        throw new GrammarError(`${param}: this constraint needed ${Math.round(used)} ms of CPU time to compute the mask of token ${step + 1}, more than ${maskTimeoutMs} ms (--grammar-mask-timeout-ms); simplify it`, param);
      }
      const token = pick(mask, next);
      if (token === null || !state.accept(token)) return;
    }
  } finally {
    state.dispose();
  }
}

serve<GrammarCheckTasks>(
  {
    check: async ({ spec }) => {
      await probe(spec, await compiler.state(spec));
      return true;
    },
  },
  // XGrammar that aborted cannot be used again: reported as unbounded memory, so the pool replaces this thread.
  () => (xgrammarAborted() ? Number.POSITIVE_INFINITY : xgrammarMemoryBytes()),
);
