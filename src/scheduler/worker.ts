/**
 * The engine worker: owns the runtime (onnxruntime's run() blocks the thread it is called on), the
 * adapter cache and slots, and the serving loop. The main thread talks to it through messages
 * (see engine.ts); token events come back batched, one message per step.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { ThreadLoader } from '../adapters/loader.js';
import { toWireError, type WireError } from '../errors.js';
import type { ModelSpec } from '../runtime/checkpoint/spec.js';
import type { SlotDtype } from '../runtime/lora-stacks.js';
import type { GrammarSpec } from '../runtime/grammar/compiler.js';
import { openRuntime, type RuntimeSettings } from '../runtime/open.js';
import { readTokenizerFiles } from '../runtime/tokenizer.js';
import { GrammarHost } from './grammar-host.js';
import { EngineCore, type EngineConfig } from './core.js';
import type { AdapterSpec, EngineEvent, ValidRequest } from './request.js';

export interface WorkerInit {
  settings: RuntimeSettings;
  engine: EngineConfig;
  strictBase: string | null;
}

export type ToWorker =
  | { t: 'submit'; req: ValidRequest }
  | { t: 'cancel'; id: number }
  | { t: 'stats'; qid: number }
  | { t: 'preload'; qid: number; spec: AdapterSpec }
  | { t: 'grammar'; qid: number; spec: GrammarSpec; owner: string | null }
  | { t: 'unload'; qid: number; key: string }
  | { t: 'shutdown' };

export interface EngineInfo {
  spec: ModelSpec;
  device: string;
  maxPositions: number;
  vocabSize: number;
  architecture: string;
  weights: string;
  hasTokenizer: boolean;
  hasChatTemplate: boolean;
  maxLoraRank: number;
  maxActiveAdapters: number;
  kvCapacity: number;
  eosIds: number[];
  /** Element type of the adapter slots: uploads are validated against it. */
  slotDtype: SlotDtype;
}

export type FromWorker =
  | { t: 'progress'; done: number; total: number; label: string }
  | { t: 'log'; msg: string }
  | { t: 'ready'; info: EngineInfo }
  | { t: 'events'; events: EngineEvent[] }
  | { t: 'reply'; qid: number; result?: unknown; error?: WireError }
  | { t: 'fatal'; error: WireError };

const port = parentPort!;
const init = workerData as WorkerInit;
const send = (m: FromWorker): void => port.postMessage(m);
const log = (msg: string): void => send({ t: 'log', msg });

async function main(): Promise<void> {
  const rt = await openRuntime(init.settings, (done, total, label) => send({ t: 'progress', done, total, label: label ?? '' }), log);
  const loader = new ThreadLoader({ spec: rt.model.spec, maxRank: rt.model.lora.maxRank, strictBase: init.strictBase, slotDtype: rt.model.lora.dtype, checkpointDir: init.settings.model });
  const tokenizerFiles = rt.tokenizer ? readTokenizerFiles(init.settings.model) : null;
  let grammarHost: GrammarHost | null = null;
  const core: EngineCore = new EngineCore({
    model: rt.model,
    tokenizer: rt.tokenizer,
    config: init.engine,
    load: loader.load,
    emit: (events) => send({ t: 'events', events }),
    log,
    // Started below, before the engine says it is ready (so before any request).
    grammar: tokenizerFiles ? (): GrammarHost => grammarHost! : undefined,
  });
  // The grammar threads start with the engine and are warm before it says it is ready.
  if (tokenizerFiles) {
    log('starting the grammar threads (constrained decoding)');
    grammarHost = new GrammarHost({ tokenizer: tokenizerFiles.tokenizer, vocabSize: rt.model.spec.vocabSize, stopIds: [...core.eosIds] }, {
      compileTimeoutMs: init.engine.grammarCompileTimeoutMs,
      wallLimitMs: init.engine.grammarCompileWallLimitMs,
      maskTimeoutMs: init.engine.grammarMaskTimeoutMs,
      memoryLimitBytes: init.engine.grammarMemoryMb === undefined ? undefined : init.engine.grammarMemoryMb * 2 ** 20,
      onReplace: (why) => log(`grammar thread replaced: ${why}`),
    });
    try {
      await grammarHost.ready();
    } catch (err) {
      // The model is still served; constrained requests get this error.
      log(`constrained decoding is unavailable: ${(err as Error).message}`);
    }
  }
  let shuttingDown = false;
  port.on('message', (m: ToWorker) => {
    switch (m.t) {
      case 'submit':
        core.submit(m.req);
        break;
      case 'cancel':
        core.cancel(m.id);
        break;
      case 'stats':
        send({ t: 'reply', qid: m.qid, result: core.stats() });
        break;
      case 'preload':
        core.preload(m.spec).then(
          () => send({ t: 'reply', qid: m.qid, result: true }),
          (err: unknown) => send({ t: 'reply', qid: m.qid, error: toWireError(err) }),
        );
        break;
      case 'grammar':
        core.compileGrammar(m.spec, m.owner).then(
          () => send({ t: 'reply', qid: m.qid, result: true }),
          (err: unknown) => send({ t: 'reply', qid: m.qid, error: toWireError(err) }),
        );
        break;
      case 'unload':
        send({ t: 'reply', qid: m.qid, result: core.unload(m.key) });
        break;
      case 'shutdown':
        shuttingDown = true;
        core.stop();
        break;
    }
  });
  const info: EngineInfo = {
    spec: rt.model.spec,
    device: rt.model.device,
    maxPositions: rt.model.maxPositions,
    vocabSize: rt.model.spec.vocabSize,
    architecture: rt.model.spec.architecture,
    weights: rt.built.options.weights,
    hasTokenizer: rt.tokenizer !== null,
    hasChatTemplate: rt.tokenizer?.chatTemplate != null,
    maxLoraRank: rt.model.lora.maxRank,
    maxActiveAdapters: rt.model.lora.capacity,
    kvCapacity: rt.model.kv.capacity,
    eosIds: [...core.eosIds],
    slotDtype: rt.model.lora.dtype,
  };
  send({ t: 'ready', info });
  await core.run();
  if (shuttingDown) {
    await loader.close();
    await rt.model.close();
    port.close();
  }
}

main().catch((err: unknown) => {
  send({ t: 'fatal', error: toWireError(err) });
});
