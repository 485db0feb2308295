/**
 * Admin routes (Bearer --admin-token; without a token they are not registered at all): upload,
 * replace, list, inspect, delete, preload and unload adapters; vLLM's load/unload_lora_adapter.
 */
import multipart from '@fastify/multipart';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { Type } from 'typebox';
import { checkAdapterName } from '../../adapters/names.js';
import { adapterKey } from '../../adapters/registry.js';
import type { AdapterSpec } from '../../adapters/spec.js';
import { AuthError, LoraplexError, ModelNotFoundError, ValidationError } from '../../errors.js';
import { adapterInfo, type AdapterService } from '../adapter-service.js';
import { bearerMatches } from '../auth.js';
import type { ServerContext } from '../context.js';
import { rawErrorResponse } from '../errors.js';
import { AdapterInfo, ErrorBody, LoadLoraRequest, UnloadLoraRequest } from '../schemas.js';
import { clientTimer } from '../client-timer.js';
import { archiveKind, extractArchive, newBudget, savePart, UploadTooLargeError } from '../upload.js';

interface NameParams {
  org?: string;
  name: string;
}

const nameOf = (p: NameParams): string => checkAdapterName(p.org ? `${p.org}/${p.name}` : p.name, 'name');

export async function adminRoutes(app: FastifyInstance, ctx: ServerContext): Promise<void> {
  const token = ctx.settings.adminToken!;
  const service = (): AdapterService => {
    ctx.requireEngine();
    return ctx.service;
  };
  await app.register(multipart, {
    limits: { fileSize: ctx.settings.maxUploadBytes, files: 8, fields: 4, parts: 12, fieldSize: 1024 },
  });
  app.addHook('onRequest', async (request) => {
    if (!bearerMatches(request.headers.authorization, [token])) throw new AuthError('admin routes need Authorization: Bearer <admin token>');
  });
  const errors = { 400: ErrorBody, 401: ErrorBody, 404: ErrorBody, 409: ErrorBody, 413: ErrorBody, 422: ErrorBody, 503: ErrorBody, 507: ErrorBody };

  /** Streams a multipart upload into a fresh staging directory; returns it and the `name` field. */
  async function receive(request: FastifyRequest): Promise<{ staged: string; name: string | null }> {
    const store = ctx.staging;
    if (!store) throw new LoraplexError('no_store', 'no adapter store is configured (--adapters)');
    if (!request.isMultipart()) throw new ValidationError('send multipart/form-data: a name field and the PEFT files (or one .tar.gz/.zip)', 'file');
    const staged = store.stage();
    const budget = newBudget(ctx.settings.maxUploadBytes);
    const seen = new Set<string>();
    let name: string | null = null;
    let archives = 0;
    // A client that stops sending for --body-timeout-ms loses the upload (408).
    const socket = request.raw.socket;
    const idle = (): void => {
      socket.end(rawErrorResponse(request.url, 'request_timeout', `the upload made no progress for ${ctx.settings.bodyTimeoutMs} ms (--body-timeout-ms)`));
      socket.destroy();
    };
    const timer = clientTimer(idle, ctx.settings.bodyTimeoutMs);
    const progress = (): void => {
      timer.refresh();
    };
    try {
      for await (const part of request.parts()) {
        progress();
        if (part.type === 'field') {
          if (part.fieldname === 'name') name = String(part.value);
          continue;
        }
        const filename = part.filename ?? '';
        if (archiveKind(filename)) {
          if (++archives > 1 || seen.size > 0) throw new ValidationError('send either the PEFT files or one archive, not both', 'file');
          await extractArchive(part.file, filename, staged, budget, seen, progress);
        } else {
          if (archives > 0) throw new ValidationError('send either the PEFT files or one archive, not both', 'file');
          await savePart(part.file, filename, staged, budget, seen, progress);
        }
        if (part.file.truncated) throw new UploadTooLargeError(ctx.settings.maxUploadBytes);
      }
    } catch (err) {
      store.discard(staged);
      const code = (err as { code?: string }).code;
      if (code === 'FST_REQ_FILE_TOO_LARGE' || code === 'FST_FILES_LIMIT' || code === 'FST_PARTS_LIMIT') throw new UploadTooLargeError(ctx.settings.maxUploadBytes);
      if (err instanceof LoraplexError) throw err;
      // Anything else the multipart parser throws is a malformed body: a missing or wrong
      // boundary, a truncated part, bad part headers.
      throw new ValidationError(`malformed multipart body: ${(err as Error).message}`, 'file');
    } finally {
      timer.cancel();
    }
    if (!seen.has('adapter_config.json') || !seen.has('adapter_model.safetensors')) {
      store.discard(staged);
      throw new ValidationError(`the upload must contain adapter_config.json and adapter_model.safetensors; got ${[...seen].join(', ') || 'no files'}`, 'file');
    }
    return { staged, name };
  }

  const upload = async (request: FastifyRequest, urlName: string | null): Promise<Record<string, unknown>> => {
    ctx.requireEngine();
    const { staged, name } = await receive(request);
    let finalName: string;
    try {
      finalName = checkAdapterName(urlName ?? name, 'name');
    } catch (err) {
      ctx.staging!.discard(staged);
      throw err;
    }
    const rec = await service().install(finalName, staged, urlName !== null);
    request.log.info({ adapter: rec.name, digest: rec.digest, rank: rec.info.maxRank }, 'adapter installed');
    return adapterInfo(rec);
  };

  app.post('/admin/adapters', { schema: { tags: ['admin'], summary: 'Upload a new adapter (multipart: name + PEFT files, or one .tar.gz/.zip)', consumes: ['multipart/form-data'], response: { 201: AdapterInfo, ...errors } } }, async (request, reply) => {
    reply.code(201);
    return upload(request, null);
  });

  for (const path of ['/admin/adapters/:name', '/admin/adapters/:org/:name']) {
    const params = path.includes(':org') ? Type.Object({ org: Type.String(), name: Type.String() }) : Type.Object({ name: Type.String() });
    app.put<{ Params: NameParams }>(path, { schema: { tags: ['admin'], summary: 'Replace an adapter (running requests finish on the old weights)', params, consumes: ['multipart/form-data'], response: { 200: AdapterInfo, ...errors } } }, async (request) =>
      upload(request, nameOf(request.params)),
    );
    app.get<{ Params: NameParams }>(path, { schema: { tags: ['admin'], summary: 'Inspect an adapter', params, response: { 200: AdapterInfo, ...errors } } }, async (request) => {
      const name = nameOf(request.params);
      const rec = ctx.registry.get(name);
      if (!rec) throw new ModelNotFoundError(`adapter ${name} does not exist`, 'name');
      const stats = await ctx.engine?.stats();
      return adapterInfo(rec, service().status(name, new Set(stats?.runningAdapters), new Set(stats?.waitingAdapters)));
    });
    app.delete<{ Params: NameParams }>(
      path,
      {
        schema: {
          tags: ['admin'],
          summary: 'Delete an adapter: new requests stop finding it at once (202); requests running on its version finish on it, then its weights are unloaded',
          params,
          response: { 202: Type.Object({ name: Type.String(), digest: Type.String(), deleted: Type.Boolean() }), ...errors },
        },
      },
      async (request, reply) => {
        const name = nameOf(request.params);
        const rec = await service().remove(name);
        request.log.info({ adapter: name, digest: rec.digest, inflight: ctx.inflight.of(rec.digest) }, 'adapter deleted');
        reply.code(202);
        return { name, digest: rec.digest, deleted: true };
      },
    );
    app.post<{ Params: NameParams }>(`${path}/load`, { schema: { tags: ['admin'], summary: 'Load an adapter into the host cache ahead of use', params, response: { ...errors } } }, async (request) => {
      const name = nameOf(request.params);
      const rec = ctx.registry.get(name);
      if (!rec) throw new ModelNotFoundError(`adapter ${name} does not exist`, 'name');
      const spec: AdapterSpec = { kind: 'single', key: adapterKey(rec), name: rec.name, dir: rec.dir, verify: rec.source !== 'upload' };
      await ctx.requireEngine().preload(spec);
      return { name, loaded: true };
    });
    app.post<{ Params: NameParams }>(`${path}/unload`, { schema: { tags: ['admin'], summary: 'Drop an adapter from memory (it stays registered)', params, response: { ...errors } } }, async (request) => {
      const name = nameOf(request.params);
      const rec = ctx.registry.get(name);
      if (!rec) throw new ModelNotFoundError(`adapter ${name} does not exist`, 'name');
      return { name, unloaded: await ctx.requireEngine().unload(adapterKey(rec)) };
    });
  }

  app.get('/admin/adapters', { schema: { tags: ['admin'], summary: 'List adapters', response: { 200: Type.Object({ data: Type.Array(AdapterInfo) }), ...errors } } }, async () => {
    const stats = await ctx.engine?.stats();
    const running = new Set(stats?.runningAdapters);
    const waiting = new Set(stats?.waitingAdapters);
    return { data: ctx.registry.list().map((r) => adapterInfo(r, service().status(r.name, running, waiting))) };
  });

  // vLLM-compatible dynamic LoRA loading (answers in plain text, as vLLM does).
  app.post<{ Body: { lora_name: string; lora_path: string } }>(
    '/v1/load_lora_adapter',
    { schema: { tags: ['admin'], summary: "vLLM's load_lora_adapter: register an adapter directory under --lora-roots", body: LoadLoraRequest, response: { ...errors } } },
    async (request, reply) => {
      const name = checkAdapterName(request.body.lora_name, 'lora_name');
      await service().registerPath(name, request.body.lora_path);
      reply.type('text/plain');
      return `Success: LoRA adapter '${name}' added successfully.`;
    },
  );
  app.post<{ Body: { lora_name: string } }>(
    '/v1/unload_lora_adapter',
    { schema: { tags: ['admin'], summary: "vLLM's unload_lora_adapter", body: UnloadLoraRequest, response: { ...errors } } },
    async (request, reply) => {
      const name = checkAdapterName(request.body.lora_name, 'lora_name');
      const rec = ctx.registry.get(name);
      if (!rec) throw new ModelNotFoundError(`adapter ${name} does not exist`, 'lora_name');
      // Unregisters (files stay; a store adapter is found again by the next scan of the store).
      if (rec.source === 'path') await service().remove(name);
      else {
        ctx.registry.remove(name);
        await ctx.engine?.unload(adapterKey(rec));
      }
      reply.type('text/plain');
      return `Success: LoRA adapter '${name}' removed successfully.`;
    },
  );
}
