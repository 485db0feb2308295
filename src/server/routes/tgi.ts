/**
 * LoRAX/TGI-style routes: POST /generate, POST /generate_stream (`parameters.adapter_id`,
 * `merged_adapters`), GET /info. Response and token-event shapes follow TGI.
 */
import type { FastifyInstance } from 'fastify';
import type { FinishReason } from '../../runtime/generation.js';
import { clientGone, generate, startGeneration, type ServerContext, type TokenEvent } from '../context.js';
import { resolveAdapter } from '../resolve.js';
import { engineRequest, sampling } from '../requests.js';
import { ErrorBody, GenerateRequest, GenerateResponse } from '../schemas.js';
import { SseStream } from '../sse.js';
import { errorBody } from '../errors.js';
import { VERSION } from '../../version.js';

function tgiFinish(reason: FinishReason, last: TokenEvent | undefined): string {
  if (reason === 'length') return 'length';
  return last?.special ? 'eos_token' : 'stop_sequence';
}

const tgiToken = (t: TokenEvent): { id: number; text: string; logprob: number | null; special: boolean } => ({
  id: t.token,
  text: t.tokenText ?? t.text,
  logprob: t.logprob ?? null,
  special: t.special,
});

export function tgiRoutes(app: FastifyInstance, ctx: ServerContext): void {
  const prepare = (body: GenerateRequest) => {
    const engine = ctx.requireEngine();
    const p = body.parameters ?? {};
    const resolved = resolveAdapter(ctx.registry, ctx.baseId, { model: ctx.baseId, adapter_id: p.adapter_id, merged_adapters: p.merged_adapters });
    // TGI samples when do_sample is set or any sampling knob is given; otherwise greedy.
    const sample = p.do_sample === true || (p.do_sample == null && (p.temperature != null || p.top_p != null || p.top_k != null));
    const s = sampling(
      { temperature: sample ? (p.temperature ?? 1) : 0, top_p: p.top_p, top_k: p.top_k, repetition_penalty: p.repetition_penalty, seed: p.seed },
      engine.info.vocabSize,
      p.details || p.decoder_input_details ? (p.top_n_tokens ?? 0) : null,
    );
    const req = engineRequest({ max_tokens: p.max_new_tokens ?? 20, stop: p.stop ?? null }, { kind: 'text', text: body.inputs }, resolved, s, ctx.settings.requestTimeoutMs);
    return { req, resolved, details: p.details === true, fullText: p.return_full_text === true, seed: p.seed ?? null };
  };

  app.post<{ Body: GenerateRequest }>(
    '/generate',
    { schema: { tags: ['tgi'], summary: 'Generate (LoRAX/TGI); parameters.adapter_id selects the adapter', body: GenerateRequest, response: { 200: GenerateResponse, 400: ErrorBody, 404: ErrorBody, 422: ErrorBody } } },
    async (request, reply) => {
      const { req, resolved, details, fullText, seed } = prepare(request.body);
      const r = await generate(ctx, req, resolved.names, clientGone(reply));
      return {
        generated_text: (fullText ? request.body.inputs : '') + r.text,
        ...(details
          ? { details: { finish_reason: tgiFinish(r.finishReason, r.tokens.at(-1)), generated_tokens: r.completionTokens, seed, prefill: [], tokens: r.tokens.map(tgiToken) } }
          : {}),
      };
    },
  );

  app.post<{ Body: GenerateRequest }>(
    '/generate_stream',
    { schema: { tags: ['tgi'], summary: 'Generate with server-sent token events (LoRAX/TGI)', body: GenerateRequest, response: { 400: ErrorBody, 404: ErrorBody, 422: ErrorBody } } },
    (request, reply) => {
      const { req, resolved, details, fullText, seed } = prepare(request.body);
      return new Promise<void>((resolve) => {
        let sse: SseStream | null = null;
        let text = '';
        // Each token event goes out when the next token arrives, or at the end with the details.
        let pending: TokenEvent | null = null;
        const flush = (end?: { finish: string; count: number }): void => {
          if (!pending || !sse) return;
          sse.send({
            index: 0,
            token: tgiToken(pending),
            top_tokens: null,
            generated_text: end ? (fullText ? request.body.inputs : '') + text : null,
            details: end && details ? { finish_reason: end.finish, generated_tokens: end.count, seed } : null,
          });
          pending = null;
        };
        const cancel = startGeneration(ctx, req, resolved.names, {
          onStart: () => {
            sse = new SseStream(reply, () => cancel());
          },
          onToken: (e) => {
            flush();
            text += e.text;
            pending = e;
          },
          onEnd: (e) => {
            const last = pending;
            flush({ finish: tgiFinish(e.finishReason, last ?? undefined), count: e.completionTokens });
            sse?.end(false);
            resolve();
          },
          onError: (err) => {
            if (!sse) reply.code(err.statusCode).send(errorBody(err));
            else {
              sse.send({ error: err.message, error_type: err.code });
              sse.end(false);
            }
            resolve();
          },
        });
      });
    },
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
