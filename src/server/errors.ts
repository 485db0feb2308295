/**
 * The one mapping from errors to HTTP: LoraplexErrors keep their status, code and type; fastify's
 * schema validation becomes a 400 naming the field; body-size and parse errors keep their 4xx;
 * anything else is a 500 with a sanitised body (details go to the log). Bodies use OpenAI's shape.
 */
import type { FastifyError, FastifyInstance } from 'fastify';
import { LoraplexError } from '../errors.js';

export interface ErrorBodyShape {
  error: { message: string; type: string; param: string | null; code: string | null };
}

export function errorBody(err: LoraplexError): ErrorBodyShape {
  return { error: { message: err.message, type: err.type, param: err.param, code: err.code } };
}

function httpError(status: number, code: string, message: string, param: string | null = null): ErrorBodyShape {
  const type = status === 401 ? 'authentication_error' : status === 404 ? 'not_found_error' : status >= 500 ? 'server_error' : 'invalid_request_error';
  return { error: { message, type, param, code } };
}

/** "body/messages/0/role" → "messages[0].role" */
function fieldOf(instancePath: string | undefined, missing?: string): string | null {
  const parts = (instancePath ?? '').split('/').filter((p) => p && p !== 'body');
  if (missing) parts.push(missing);
  if (parts.length === 0) return null;
  return parts.reduce((acc, p) => (/^\d+$/.test(p) ? `${acc}[${p}]` : acc ? `${acc}.${p}` : p), '');
}

export function installErrorHandling(app: FastifyInstance): void {
  app.setErrorHandler((err: FastifyError | LoraplexError, request, reply) => {
    if (err instanceof LoraplexError) {
      if (err.statusCode >= 500) request.log.error({ err }, 'request failed');
      return reply.code(err.statusCode).send(errorBody(err));
    }
    const fe = err as FastifyError;
    if (fe.validation) {
      const v = fe.validation[0];
      const missing = (v?.params as { missingProperty?: string; requiredProperties?: string[] } | undefined)?.missingProperty ?? (v?.params as { requiredProperties?: string[] })?.requiredProperties?.[0];
      const field = fieldOf(v?.instancePath, missing) ?? fieldOf((v as { instanceLocation?: string })?.instanceLocation, missing);
      const what = missing ? `${field} is required` : `${field ?? 'the request body'} ${v?.message ?? 'is invalid'}`;
      return reply.code(400).send(httpError(400, 'invalid_parameter', `invalid request: ${what}`, field));
    }
    const status = fe.statusCode && fe.statusCode >= 400 && fe.statusCode < 500 ? fe.statusCode : 500;
    if (status === 500) {
      request.log.error({ err }, 'internal error');
      return reply.code(500).send(httpError(500, 'internal_error', 'internal server error'));
    }
    const code = fe.code === 'FST_ERR_CTP_BODY_TOO_LARGE' ? 'body_too_large' : fe.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE' ? 'unsupported_media_type' : 'bad_request';
    return reply.code(status).send(httpError(status, code, fe.message));
  });
  app.setNotFoundHandler((request, reply) => {
    reply.code(404).send(httpError(404, 'not_found', `no route ${request.method} ${request.url.split('?')[0]}`));
  });
}
