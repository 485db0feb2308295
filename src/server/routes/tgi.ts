/**
 * LoRAX/TGI-style routes: POST /generate, POST /generate_stream (`parameters.adapter_id`,
 * `merged_adapters`), GET /info. Response, token-event and error shapes follow TGI (errors are
 * `{error, error_type}` with TGI's status codes, see server/errors.ts).
 */
import { responseFormatGrammar, tgiGrammar } from '../grammar-fields.js';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { ERROR_CATALOG, LoraplexError, UnsupportedError, ValidationError } from '../../errors.js';
import type { FinishReason } from '../../runtime/generation.js';
import type { TokenEngineEvent } from '../../scheduler/request.js';
import { VERSION } from '../../version.js';
import type { ServerContext } from '../context.js';
import { clientGone, type GenerationResult } from '../engine-bridge.js';
import { checkFields, declaredFields } from '../fields.js';
import { cachePartition } from '../cache-partition.js';
import { checkRows } from '../admission.js';
import { promptIds, sampling, stopStrings, truncatePrompt, validRequest } from '../requests.js';
import { resolveAdapter } from '../resolve.js';
import { GenerateRequest, GenerateResponse, TgiErrorBody, TgiParameters } from '../schemas.js';
import type { SseStream } from '../sse.js';
import { admitted, runGeneration, type Protocol } from '../streaming.js';

function tgiFinish(reason: FinishReason, last: TokenEngineEvent | undefined): string {
  if (reason === 'length') return 'length';
  return last?.special ? 'eos_token' : 'stop_sequence';
}

const tgiToken = (t: TokenEngineEvent): { id: number; text: string; logprob: number | null; special: boolean } => ({
  id: t.token,
  text: t.tokenText ?? t.text,
  logprob: t.logprob ?? null,
  special: t.special,
});

/** top_n_tokens: the most likely tokens at a step, in TGI's token shape. */
const topTokens = (t: TokenEngineEvent, eos: ReadonlySet<number>) => (t.top ?? []).map((a) => ({ id: a.id, text: a.text, logprob: a.logprob, special: eos.has(a.id) }));

const GENERATE_FIELDS = new Set(['inputs', 'parameters', 'stream']);
const PARAMETER_FIELDS = declaredFields(TgiParameters);

/** The sum of a sequence's token logprobs (best_of ranks by it). */
const score = (r: GenerationResult): number => r.tokens.reduce((s, t) => s + (t.logprob ?? 0), 0);

const tgiErrors = { 404: TgiErrorBody, 422: TgiErrorBody, 424: TgiErrorBody, 429: TgiErrorBody, 503: TgiErrorBody };

/** A request's answer options, as prepare() found them. */
interface Answer {
  details: boolean;
  prefill: boolean;
  topN: number;
  fullText: boolean;
  seed: number | null;
}

/** TGI's answer (best_of: the most likely sequence, the others in details) and its token event stream. */
function tgiProtocol(inputs: string, o: Answer, eos: ReadonlySet<number>): Protocol {
  const prefix = o.fullText ? inputs : '';
  const detailsOf = (r: GenerationResult, i: number) => ({
    finish_reason: tgiFinish(r.finishReason, r.tokens.at(-1)),
    generated_tokens: r.completionTokens,
    seed: o.seed === null ? null : o.seed + i,
    prefill: o.prefill ? r.prompt.map((t) => ({ id: t.token, text: t.text, logprob: t.logprob })) : [],
    tokens: r.tokens.map(tgiToken),
    ...(o.topN > 0 ? { top_tokens: r.tokens.map((t) => topTokens(t, eos)) } : {}),
  });
  // Streamed, each token event goes out when the next token arrives, or at the end with the details.
  let text = '';
  let pending: TokenEngineEvent | null = null;
  const flush = (sse: SseStream, end?: { finish: string; count: number }): void => {
    if (!pending) return;
    sse.send({
      index: 0,
      token: tgiToken(pending),
      top_tokens: o.topN > 0 ? topTokens(pending, eos) : null,
      generated_text: end ? prefix + text : null,
      details: end && o.details ? { finish_reason: end.finish, generated_tokens: end.count, seed: o.seed } : null,
    });
    pending = null;
  };
  return {
    whole: (all) => {
      const order = all.map((_, i) => i).sort((a, b) => score(all[b]) - score(all[a]) || a - b);
      const best = all[order[0]];
      return {
        generated_text: prefix + best.text,
        ...(o.details || o.prefill
          ? {
              details: {
                ...detailsOf(best, order[0]),
                ...(all.length > 1 ? { best_of_sequences: order.slice(1).map((i) => ({ generated_text: prefix + all[i].text, ...detailsOf(all[i], i) })) } : {}),
              },
            }
          : {}),
      };
    },
    token: (sse, _choice, e) => {
      flush(sse);
      text += e.text;
      pending = e;
    },
    end: (sse, _choice, e) => flush(sse, { finish: tgiFinish(e.finishReason, pending ?? undefined), count: e.completionTokens }),
    error: (sse, err) => sse.send({ error: err.message, error_type: ERROR_CATALOG[err.code].tgiType }),
    doneMarker: false,
  };
}

export function tgiRoutes(app: FastifyInstance, ctx: ServerContext): void {
  /**
   * Cheap checks, admission, tokenization, then the generation lifecycle (JSON, or token events
   * when `stream`); errors in TGI's shape.
   */
  const generation = async (request: FastifyRequest<{ Body: GenerateRequest }>, reply: FastifyReply, stream: boolean): Promise<unknown> => {
    const gone = clientGone(request, reply);
    const body = request.body;
    const engine = ctx.requireEngine();
    checkFields(body, GENERATE_FIELDS, request.log);
    const p = body.parameters ?? {};
    checkFields(p, PARAMETER_FIELDS, request.log, 'parameters.');
    const refuse = (field: string, why: string): never => {
      throw new UnsupportedError(`parameters.${field} is not supported: ${why}`, `parameters.${field}`);
    };
    if (p.adapter_source != null) refuse('adapter_source', 'adapters come from this server\'s registry (upload them, or list them with GET /v1/models)');
    const grammars = [tgiGrammar(p.grammar), responseFormatGrammar(p.response_format)];
    if (grammars[0] && grammars[1]) throw new LoraplexError('invalid_grammar', 'parameters.grammar and parameters.response_format cannot both be given', { param: 'parameters.response_format' });
    const grammar = grammars[0] ?? grammars[1];
    const grammarParam = grammars[0] ? 'parameters.grammar' : 'parameters.response_format';
    if (p.watermark === true) refuse('watermark', 'watermarking is not supported');
    if (p.typical_p != null && p.typical_p !== 1) refuse('typical_p', 'typical sampling is not supported');
    if (p.merged_adapters != null && p.adapter_parameters != null) throw new ValidationError('parameters.merged_adapters and parameters.adapter_parameters name the same thing; send one', 'parameters.adapter_parameters');
    const resolved = resolveAdapter(ctx.registry, ctx.baseId, { model: ctx.baseId, adapter_id: p.adapter_id, merged_adapters: p.merged_adapters ?? p.adapter_parameters, lora_scale: p.lora_scale });
    request.adapterLabel = resolved.label;
    // TGI samples when do_sample is set or any sampling knob is given; otherwise greedy.
    const sample = p.do_sample === true || (p.do_sample == null && (p.temperature != null || p.top_p != null || p.top_k != null));
    const bestOf = p.best_of ?? 1;
    if (bestOf > 1 && !sample) throw new ValidationError('parameters.best_of > 1 needs sampling (do_sample or a sampling parameter)', 'parameters.best_of');
    if (bestOf > 1 && (body.stream || request.url.startsWith('/generate_stream'))) throw new ValidationError('parameters.best_of cannot be used with streaming', 'parameters.best_of');
    const topN = p.top_n_tokens ?? 0;
    // Logprobs are computed when details, top tokens or best_of want them.
    const withLogprobs = p.details || p.decoder_input_details || topN > 0 || bestOf > 1;
    const s = sampling(
      { temperature: sample ? (p.temperature ?? 1) : 0, top_p: p.top_p, top_k: p.top_k, repetition_penalty: p.repetition_penalty, frequency_penalty: p.frequency_penalty, seed: p.seed },
      engine.info.vocabSize,
      withLogprobs ? topN : null,
    );
    stopStrings(p.stop ?? null, 'parameters.stop');
    checkRows(bestOf, ctx.settings.maxRowsPerRequest, 'parameters.best_of', `parameters.best_of=${bestOf}`);
    return admitted(ctx, request, bestOf, gone, async (ticket) => {
      const ids = truncatePrompt(await promptIds(ctx, { kind: 'text', text: body.inputs, param: 'inputs' }, resolved), p.truncate);
      const prefill = p.decoder_input_details === true;
      const partition = cachePartition(request.cacheTenant, p.cache_salt);
      const choices = Array.from({ length: bestOf }, (_, i) => ({
        req: validRequest(ctx, ids, { max_tokens: p.max_new_tokens ?? 20, stop: p.stop ?? null }, resolved, s, i, { cachePartition: partition, promptLogprobs: prefill ? topN : null, grammar, grammarParam }),
        promptTokens: i === 0 ? ids.length : 0,
      }));
      const protocol = tgiProtocol(body.inputs, { details: p.details === true, prefill, topN, fullText: p.return_full_text === true, seed: p.seed ?? null }, new Set(engine.info.eosIds));
      return runGeneration({ ctx, request, reply, gone, ticket, resolved, choices, stream, protocol, logPrompt: () => body.inputs });
    });
  };
  const generateOnce = (request: FastifyRequest<{ Body: GenerateRequest }>, reply: FastifyReply) => generation(request, reply, false);
  const generateStream = (request: FastifyRequest<{ Body: GenerateRequest }>, reply: FastifyReply) => generation(request, reply, true);

  app.post<{ Body: GenerateRequest }>(
    '/generate',
    { schema: { tags: ['tgi'], summary: 'Generate (LoRAX/TGI); parameters.adapter_id selects the adapter', body: GenerateRequest, response: { 200: GenerateResponse, ...tgiErrors } } },
    (request, reply) => (request.body.stream === true ? generateStream(request, reply) : generateOnce(request, reply)),
  );

  app.post<{ Body: GenerateRequest }>(
    '/generate_stream',
    { schema: { tags: ['tgi'], summary: 'Generate with server-sent token events (LoRAX/TGI)', body: GenerateRequest, response: { ...tgiErrors } } },
    (request, reply) => (request.body.stream === false ? generateOnce(request, reply) : generateStream(request, reply)),
  );

  // TGI's compat route: POST / generates, or streams when the body says stream: true (TGI clients
  // given only the server's URL post here). /generate and /generate_stream follow `stream` too when
  // it is given.
  app.post<{ Body: GenerateRequest }>(
    '/',
    { schema: { tags: ['tgi'], summary: 'Generate, or stream with `stream: true` (TGI compat route)', body: GenerateRequest, response: { 200: GenerateResponse, ...tgiErrors } } },
    (request, reply) => (request.body.stream ? generateStream(request, reply) : generateOnce(request, reply)),
  );

  app.get('/info', { schema: { tags: ['tgi'], summary: 'Server and model information (TGI/LoRAX)' } }, async () => {
    const info = ctx.engine?.info;
    return {
      model_id: ctx.baseId,
      model_sha: null,
      model_dtype: info ? info.weights : null,
      model_device_type: info?.device ?? null,
      model_pipeline_tag: 'text-generation',
      architecture: info?.architecture ?? null,
      max_concurrent_requests: ctx.settings.maxQueuedRequests,
      max_best_of: 1,
      max_stop_sequences: 16,
      max_input_length: info ? info.maxPositions - 1 : null,
      max_total_tokens: info?.maxPositions ?? null,
      max_batch_total_tokens: info?.kvCapacity ?? null,
      max_batch_prefill_tokens: ctx.settings.maxBatchPrefillTokens,
      max_batch_size: ctx.settings.maxBatchSize,
      max_active_adapters: info?.maxActiveAdapters ?? null,
      adapter_cycle_time_s: ctx.settings.adapterCycleMs / 1000,
      max_lora_rank: info?.maxLoraRank ?? null,
      adapters: ctx.registry.size,
      router: 'loraplex',
      version: VERSION,
      ready: ctx.engine !== null,
    };
  });
}
