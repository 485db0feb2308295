/**
 * POST /tokenize and POST /detokenize in vLLM's shape (`{model, prompt | messages}` →
 * `{tokens, count, max_model_len}`; adapter-aware: an adapter's own chat template applies), and
 * TGI's /tokenize (`{inputs}` → `[{id, text, start, stop}]`), told apart by their fields. Errors
 * take TGI's shape for the TGI form.
 */
import type { FastifyInstance } from 'fastify';
import { checkPrompt } from '../../scheduler/limits.js';
import type { ServerContext } from '../context.js';
import { checkShape } from '../prompt/limits.js';
import { chatMessages, promptIds } from '../requests.js';
import { resolveAdapter } from '../resolve.js';
import { DetokenizeRequest, ErrorBody, TokenizeRequest } from '../schemas.js';
import { ValidationError } from '../../errors.js';

export function tokenizeRoutes(app: FastifyInstance, ctx: ServerContext): void {
  app.post<{ Body: TokenizeRequest }>(
    '/tokenize',
    {
      schema: { tags: ['openai'], summary: "Tokenize a prompt or chat messages (vLLM's shape), or TGI's {inputs}", body: TokenizeRequest, response: { 400: ErrorBody, 404: ErrorBody } },
      // TGI's form answers errors in TGI's shape (decided before the body is validated).
      preValidation: async (request) => {
        const b = request.body as { inputs?: unknown } | null;
        if (b && typeof b === 'object' && 'inputs' in b) request.errorFlavor = 'tgi';
      },
    },
    async (request) => {
      const body = request.body;
      const engine = ctx.requireEngine();
      const tokenizers = ctx.requireTokenizers();
      if (body.inputs !== undefined) {
        const resolved = resolveAdapter(ctx.registry, ctx.baseId, { model: ctx.baseId, adapter_id: body.parameters?.adapter_id });
        request.adapterLabel = resolved.label;
        const ids = await promptIds(ctx, { kind: 'text', text: body.inputs, param: 'inputs' }, resolved);
        return tokenizers.pieces([...ids]);
      }
      const resolved = resolveAdapter(ctx.registry, ctx.baseId, { model: body.model ?? ctx.baseId });
      request.adapterLabel = resolved.label;
      if ((body.prompt === undefined) === (body.messages === undefined)) throw new ValidationError('give exactly one of prompt or messages (or TGI\'s inputs)', 'prompt');
      let ids: Int32Array;
      if (body.messages) {
        if (body.tools != null) checkShape(body.tools, 'tools');
        if (body.chat_template_kwargs != null) checkShape(body.chat_template_kwargs, 'chat_template_kwargs');
        const messages = chatMessages(body.messages as Parameters<typeof chatMessages>[0]);
        ids = await promptIds(ctx, { kind: 'chat', messages, tools: (body.tools as unknown[] | null | undefined) ?? null, addGenerationPrompt: body.add_generation_prompt ?? true, templateKwargs: body.chat_template_kwargs ?? null }, resolved);
      } else if (body.add_special_tokens === false) {
        ids = await tokenizers.encodeText(body.prompt!, false);
        checkPrompt(ids, engine.info.vocabSize);
      } else {
        ids = await promptIds(ctx, { kind: 'text', text: body.prompt!, param: 'prompt' }, resolved);
      }
      const tokens = [...ids];
      return {
        count: tokens.length,
        max_model_len: engine.info.maxPositions,
        tokens,
        ...(body.return_token_strs ? { token_strs: (await tokenizers.pieces(tokens)).map((p) => p.text) } : {}),
      };
    },
  );

  app.post<{ Body: { model: string; tokens: number[] } }>(
    '/detokenize',
    { schema: { tags: ['openai'], summary: "Token ids → text (vLLM's shape)", body: DetokenizeRequest, response: { 400: ErrorBody, 404: ErrorBody } } },
    async (request) => {
      const engine = ctx.requireEngine();
      const resolved = resolveAdapter(ctx.registry, ctx.baseId, { model: request.body.model });
      request.adapterLabel = resolved.label;
      checkPrompt(request.body.tokens, engine.info.vocabSize);
      return { prompt: await ctx.requireTokenizers().decode(request.body.tokens, false) };
    },
  );
}
