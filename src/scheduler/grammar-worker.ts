/**
 * The grammar thread (see grammar-host.ts): owns XGrammar — the compiler with the model's
 * vocabulary, the compiled-grammar cache and every constrained row's matcher — so that compiling a
 * schema and computing token masks never run on the engine thread. Messages are handled one at a
 * time, in order; a row's next mask is computed as soon as its last token arrives, while the engine
 * runs the next forward pass.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { toWireError } from '../errors.js';
import { GrammarCompiler, grammarVocab, type GrammarState } from '../runtime/grammar/compiler.js';
import { WARM_UP_SPECS } from '../runtime/grammar/warm-up.js';
import type { FromGrammarWorker, GrammarWorkerInit, ToGrammarWorker } from './grammar-host.js';

const port = parentPort!;
const init = workerData as GrammarWorkerInit;
const send = (m: FromGrammarWorker, transfer: ArrayBuffer[] = []): void => port.postMessage(m, transfer);
const compiler = GrammarCompiler.create(grammarVocab(init.tokenizer, init.vocabSize, init.stopIds));
const rows = new Map<number, GrammarState>();

async function nextMask(id: number): Promise<void> {
  const state = rows.get(id);
  if (!state) return;
  const mask = await state.mask();
  send({ t: 'mask', id, mask }, [mask.buffer as ArrayBuffer]);
}

async function handle(m: ToGrammarWorker): Promise<void> {
  switch (m.t) {
    case 'compile':
      try {
        await (await compiler).compile(m.spec);
        send({ t: 'compiled', qid: m.qid });
      } catch (err) {
        send({ t: 'compiled', qid: m.qid, error: toWireError(err) });
      }
      return;
    case 'open':
      try {
        rows.set(m.id, await (await compiler).state(m.spec));
        await nextMask(m.id);
      } catch (err) {
        send({ t: 'mask', id: m.id, error: toWireError(err) });
      }
      return;
    case 'accept': {
      const state = rows.get(m.id);
      if (!state) return;
      if (!state.accept(m.token)) {
        send({ t: 'mask', id: m.id, error: { code: 'internal_error', message: `the grammar refused token ${m.token} its own mask allowed`, param: null } });
        return;
      }
      if (state.terminated) send({ t: 'mask', id: m.id, terminated: true });
      else await nextMask(m.id);
      return;
    }
    case 'close':
      rows.get(m.id)?.dispose();
      rows.delete(m.id);
      return;
  }
}

// Ready once the first grammars are compiled (and cached), so no request pays for the first compile.
let chain: Promise<void> = compiler.then(
  async (c) => {
    for (const spec of WARM_UP_SPECS) await c.compile(spec);
    send({ t: 'ready' });
  },
  (err: unknown) => send({ t: 'fatal', error: toWireError(err) }),
);
port.on('message', (m: ToGrammarWorker) => {
  chain = chain.then(() => handle(m)).catch((err: unknown) => send({ t: 'fatal', error: toWireError(err) }));
});
