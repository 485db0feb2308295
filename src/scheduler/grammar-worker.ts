/**
 * The grammar thread (see grammar-host.ts): owns XGrammar — the compiler with the model's
 * vocabulary, the compiled-grammar cache and every constrained row's matcher — so that compiling a
 * schema and computing token masks never run on the engine thread. Messages are handled one at a
 * time, in order, and each one but `close` gets exactly one reply, so the host knows which message
 * the thread is working on; a row's next mask is computed as soon as its last token arrives, while
 * the engine runs the next forward pass. Every reply carries the size of XGrammar's memory, so the
 * host can replace a thread that grew.
 *
 * XGrammar aborting (its WebAssembly runtime is dead from then on) is reported as `fatal`: the host
 * replaces the thread.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { toWireError } from '../errors.js';
import { GrammarCompiler, grammarVocab, messageOf, type GrammarState } from '../runtime/grammar/compiler.js';
import { WARM_UP_SPECS } from '../runtime/grammar/warm-up.js';
import { xgrammarAborted, xgrammarMemoryBytes } from '../runtime/grammar/xgrammar.js';
import { currentThreadId } from '../util/thread-cpu.js';
import type { FromGrammarWorker, GrammarWorkerInit, ToGrammarWorker } from './grammar-host.js';

const port = parentPort!;
const init = workerData as GrammarWorkerInit;
const send = (m: FromGrammarWorker, transfer: ArrayBuffer[] = []): void => port.postMessage(m, transfer);
const compiler = GrammarCompiler.create(grammarVocab(init.tokenizer, init.vocabSize, init.stopIds));
const rows = new Map<number, GrammarState>();

/** The reply for a row whose last token was accepted: its next mask, or that it is complete. */
async function maskReply(id: number, state: GrammarState): Promise<void> {
  if (state.terminated) {
    send({ t: 'mask', id, terminated: true, memoryBytes: xgrammarMemoryBytes() });
    return;
  }
  const mask = await state.mask();
  send({ t: 'mask', id, mask, memoryBytes: xgrammarMemoryBytes() }, [mask.buffer as ArrayBuffer]);
}

const rowError = (id: number, message: string): void =>
  send({ t: 'mask', id, error: { code: 'internal_error', message, param: null }, memoryBytes: xgrammarMemoryBytes() });

async function handle(m: ToGrammarWorker): Promise<void> {
  switch (m.t) {
    case 'compile':
      await (await compiler).compile(m.spec);
      send({ t: 'compiled', qid: m.qid, memoryBytes: xgrammarMemoryBytes() });
      return;
    case 'open': {
      rows.get(m.id)?.dispose();
      rows.delete(m.id);
      const state = await (await compiler).state(m.spec);
      rows.set(m.id, state);
      // A row moved here from a replaced thread catches up with the tokens it had accepted there.
      for (const token of m.tokens ?? []) {
        if (!state.accept(token)) return rowError(m.id, `the grammar refused token ${token} it had accepted before`);
      }
      return maskReply(m.id, state);
    }
    case 'accept': {
      const state = rows.get(m.id);
      if (!state) return rowError(m.id, `grammar row ${m.id} is not open`);
      if (!state.accept(m.token)) return rowError(m.id, `the grammar refused token ${m.token} its own mask allowed`);
      return maskReply(m.id, state);
    }
    case 'close':
      rows.get(m.id)?.dispose();
      rows.delete(m.id);
      return;
  }
}

/** Answers a message that failed: the compile or row it was for fails; an abort ends the thread. */
function failed(m: ToGrammarWorker, err: unknown): void {
  if (xgrammarAborted()) {
    send({ t: 'fatal', error: { code: 'internal_error', message: `Aborted(): ${messageOf(err)}`, param: null } });
    return;
  }
  if (m.t === 'compile') send({ t: 'compiled', qid: m.qid, error: toWireError(err), memoryBytes: xgrammarMemoryBytes() });
  else if (m.t !== 'close') send({ t: 'mask', id: m.id, error: toWireError(err), memoryBytes: xgrammarMemoryBytes() });
}

// Ready once the first grammars are compiled (and cached), so no request pays for the first compile.
let chain: Promise<void> = compiler.then(
  async (c) => {
    for (const spec of WARM_UP_SPECS) await c.compile(spec);
    send({ t: 'ready', tid: currentThreadId(), memoryBytes: xgrammarMemoryBytes() });
  },
  (err: unknown) => send({ t: 'fatal', error: toWireError(err) }),
);
port.on('message', (m: ToGrammarWorker) => {
  chain = chain.then(() => handle(m)).catch((err: unknown) => failed(m, err));
});
