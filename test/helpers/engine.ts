/**
 * An in-process serving loop over a tiny model for scheduler tests: the engine core with its
 * events collected per request, greedy requests, and the reference each answer is checked against
 * (the request run alone, straight on a model, with no scheduler and no cache).
 */
import { loadAdapterHere } from '../../src/adapters/loader.js';
import type { DecoderModel } from '../../src/runtime/model.js';
import type { TextTokenizer } from '../../src/runtime/tokenizer.js';
import type { GrammarHost } from '../../src/scheduler/grammar-host.js';
import { GREEDY } from '../../src/runtime/sampling.js';
import { EngineCore, type EngineConfig } from '../../src/scheduler/core.js';
import type { AdapterSpec, EngineEvent, ValidRequest } from '../../src/scheduler/request.js';
import { argmax, logitsOf } from './runtime.js';
import { until } from './server.js';

export { until };

export interface EngineHarness {
  core: EngineCore;
  events: Map<number, EngineEvent[]>;
  done: Promise<void>;
  /** Resolves once every id has ended (an `end` or an `error`). */
  ended(ids: Iterable<number>, ms?: number): Promise<void>;
}

export function startEngine(
  model: DecoderModel,
  config: EngineConfig,
  opts: { maxRank?: number; failDirs?: Set<string>; loadDelayMs?: number; tokenizer?: TextTokenizer; grammar?: () => GrammarHost } = {},
): EngineHarness {
  const events = new Map<number, EngineEvent[]>();
  const maxRank = opts.maxRank ?? 64;
  const core = new EngineCore({
    model,
    tokenizer: opts.tokenizer ?? null,
    grammar: opts.grammar,
    config,
    load: async (s) => {
      await new Promise((r) => setTimeout(r, opts.loadDelayMs ?? 1));
      if (s.kind === 'single' && opts.failDirs?.has(s.dir)) throw new Error('disk on fire');
      return loadAdapterHere(s, { spec: model.spec, maxRank, strictBase: null, slotDtype: 'float32' });
    },
    emit: (es) => {
      for (const e of es) {
        const list = events.get(e.id) ?? [];
        list.push(e);
        events.set(e.id, list);
      }
    },
  });
  const done = core.run();
  const ended = (ids: Iterable<number>, ms?: number): Promise<void> => {
    const list = [...ids];
    return until(() => list.every((id) => events.get(id)?.some((e) => e.t === 'end' || e.t === 'error')), ms);
  };
  return { core, events, done, ended };
}

export function greedyRequest(id: number, prompt: ArrayLike<number>, adapter: AdapterSpec | null, maxNewTokens: number, extra: Partial<ValidRequest> = {}): ValidRequest {
  return {
    id,
    promptIds: Int32Array.from(prompt),
    adapter,
    sampling: GREEDY,
    stop: { maxNewTokens, stopStrings: [], stopTokenIds: [], ignoreEos: true, minTokens: 0 },
    promptLogprobs: null,
    timeoutMs: 60000,
    grammar: null,
    cachePartition: '',
    ...extra,
  };
}

export const tokensOf = (events: readonly EngineEvent[]): number[] => events.filter((e): e is Extract<EngineEvent, { t: 'token' }> => e.t === 'token').map((e) => e.token);

/** The request's `end` event. */
export function endOf(events: readonly EngineEvent[] | undefined): Extract<EngineEvent, { t: 'end' }> {
  const e = events?.find((x) => x.t === 'end');
  if (!e || e.t !== 'end') throw new Error(`no end event: ${JSON.stringify(events?.at(-1))}`);
  return e;
}

/** Greedy tokens of one request run alone, straight on a model (no scheduler, no cache). */
export async function aloneGreedy(model: DecoderModel, prompt: readonly number[], adapter: Extract<AdapterSpec, { kind: 'single' }> | null, n: number, maxRank = 64): Promise<number[]> {
  while (model.lora.count > 0) model.lora.unload(0);
  const slot = adapter ? model.lora.load(await loadAdapterHere(adapter, { spec: model.spec, maxRank, strictBase: null, slotDtype: 'float32' })) : -1;
  const seq = model.newSequence();
  const out: number[] = [];
  let next: readonly number[] = prompt;
  for (let i = 0; i < n; i++) {
    const r = await model.step([{ seq, tokens: next, slot, logits: 'last' }]);
    out.push(argmax(logitsOf(r, 0)));
    next = [out[out.length - 1]];
  }
  model.freeSequence(seq);
  return out;
}
