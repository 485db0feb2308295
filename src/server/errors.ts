/**
 * The one mapping from errors to HTTP. LoraplexErrors are mapped through the error catalog; fastify's
 * schema validation becomes a 400 naming the field; body-size, parse, URL-length and header-size
 * errors keep their 4xx; anything else is a 500 with a sanitised body (details go to the log).
 * Bodies take the route's shape: OpenAI's `{error: {message, type, param, code}}`, TGI's
 * `{error, error_type}` (with TGI's status codes) on the LoRAX/TGI routes, or Anthropic's
 * `{type: "error", error: {type, message}}` on the Messages routes.
 */
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { ERROR_CATALOG, LoraplexError, type ErrorCode } from '../errors.js';

export interface OpenAIErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
  /** The message again at the top level, as vLLM's error bodies carry it (some clients read only this). */
  message: string;
}

export interface TgiErrorBody {
  error: string;
  error_type: string;
}

export interface AnthropicErrorBody {
  type: 'error';
  error: { type: string; message: string };
}

export type RouteFlavor = 'openai' | 'tgi' | 'anthropic';

/** The LoRAX/TGI routes answer errors in TGI's shape, the Messages routes in Anthropic's; every other route in OpenAI's. */
const TGI_ROUTES = new Set(['/', '/generate', '/generate_stream', '/info']);
const ANTHROPIC_ROUTES = new Set(['/v1/messages', '/v1/messages/count_tokens']);

export function flavorOf(url: string): RouteFlavor {
  const path = url.split('?')[0];
  return TGI_ROUTES.has(path) ? 'tgi' : ANTHROPIC_ROUTES.has(path) ? 'anthropic' : 'openai';
}

/** Anthropic's error types, by status. */
export function anthropicErrorType(status: number): string {
  const byStatus: Record<number, string> = { 401: 'authentication_error', 403: 'permission_error', 404: 'not_found_error', 413: 'request_too_large', 429: 'rate_limit_error', 503: 'overloaded_error', 529: 'overloaded_error' };
  return byStatus[status] ?? (status >= 500 ? 'api_error' : 'invalid_request_error');
}

export function statusFor(err: LoraplexError, flavor: RouteFlavor): number {
  return flavor === 'tgi' ? ERROR_CATALOG[err.code].tgiStatus : err.statusCode;
}

export function errorBody(err: LoraplexError, flavor: RouteFlavor): OpenAIErrorBody | TgiErrorBody | AnthropicErrorBody {
  if (flavor === 'tgi') return { error: err.message, error_type: ERROR_CATALOG[err.code].tgiType };
  if (flavor === 'anthropic') return { type: 'error', error: { type: anthropicErrorType(err.statusCode), message: err.message } };
  return { error: { message: err.message, type: err.type, param: err.param, code: err.code }, message: err.message };
}

/** Sends `err` as the route's error response (with Retry-After on 429 and 503 where the error says when). */
export function sendError(request: FastifyRequest, reply: FastifyReply, err: LoraplexError): FastifyReply {
  const flavor = request.errorFlavor ?? flavorOf(request.url);
  if (err.retryAfterSeconds !== undefined) reply.header('retry-after', String(err.retryAfterSeconds));
  // Serialized here: the route's response schema describes its own shape, and a request may have
  // chosen the other one.
  return reply.code(statusFor(err, flavor)).type('application/json; charset=utf-8').send(JSON.stringify(errorBody(err, flavor)));
}

/** A complete raw HTTP response for errors answered below fastify (client errors, timeouts). */
export function rawErrorResponse(url: string, code: ErrorCode, message: string): string {
  const err = new LoraplexError(code, message);
  const flavor = flavorOf(url);
  const status = statusFor(err, flavor);
  const body = JSON.stringify(errorBody(err, flavor));
  return `HTTP/1.1 ${status} ${statusText(status)}\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`;
}

function statusText(status: number): string {
  return { 400: 'Bad Request', 408: 'Request Timeout', 413: 'Payload Too Large', 414: 'URI Too Long', 422: 'Unprocessable Entity', 431: 'Request Header Fields Too Large' }[status] ?? 'Error';
}

/** "body/messages/0/role" → "messages[0].role" */
function fieldOf(instancePath: string | undefined, missing?: string): string | null {
  const parts = (instancePath ?? '').split('/').filter((p) => p && p !== 'body');
  if (missing) parts.push(missing);
  if (parts.length === 0) return null;
  return parts.reduce((acc, p) => (/^\d+$/.test(p) ? `${acc}[${p}]` : acc ? `${acc}.${p}` : p), '');
}

/** fastify's own error codes → catalog codes. */
const FASTIFY_CODES: Record<string, ErrorCode> = {
  FST_ERR_CTP_BODY_TOO_LARGE: 'body_too_large',
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'unsupported_media_type',
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: 'bad_request',
  FST_ERR_CTP_EMPTY_JSON_BODY: 'bad_request',
  FST_ERR_CTP_INVALID_JSON_BODY: 'bad_request',
  FST_INVALID_MULTIPART_CONTENT_TYPE: 'unsupported_media_type',
  FST_REQ_FILE_TOO_LARGE: 'upload_too_large',
  FST_PARTS_LIMIT: 'upload_too_large',
  FST_FILES_LIMIT: 'upload_too_large',
  FST_FIELDS_LIMIT: 'upload_too_large',
  FST_ERR_BAD_URL: 'bad_request',
};

/** A fastify or framework error as a catalog error (4xx keep their meaning; the rest are 500s). */
export function fromFrameworkError(err: FastifyError): LoraplexError | null {
  if (err.validation) {
    const v = err.validation[0];
    const params = v?.params as { missingProperty?: string; requiredProperties?: string[] } | undefined;
    const missing = params?.missingProperty ?? params?.requiredProperties?.[0];
    const field = fieldOf(v?.instancePath, missing) ?? fieldOf((v as { instanceLocation?: string })?.instanceLocation, missing);
    const what = missing ? `${field} is required` : `${field ?? 'the request body'} ${v?.message ?? 'is invalid'}`;
    return new LoraplexError('invalid_parameter', `invalid request: ${what}`, { param: field });
  }
  const mapped = err.code ? FASTIFY_CODES[err.code] : undefined;
  if (mapped) return new LoraplexError(mapped, err.message);
  if (err.statusCode && err.statusCode >= 400 && err.statusCode < 500) {
    const code: ErrorCode = err.statusCode === 413 ? 'body_too_large' : err.statusCode === 415 ? 'unsupported_media_type' : err.statusCode === 414 ? 'uri_too_long' : 'bad_request';
    return new LoraplexError(code, err.message);
  }
  return null;
}

export function installErrorHandling(app: FastifyInstance): void {
  app.setErrorHandler((err: FastifyError | LoraplexError, request, reply) => {
    if (err instanceof LoraplexError) {
      if (err.statusCode >= 500) request.log.error({ err }, 'request failed');
      return sendError(request, reply, err);
    }
    const known = fromFrameworkError(err as FastifyError);
    if (known) return sendError(request, reply, known);
    request.log.error({ err }, 'internal error');
    return sendError(request, reply, new LoraplexError('internal_error', 'internal server error'));
  });
  app.setNotFoundHandler((request, reply) => {
    sendError(request, reply, new LoraplexError('not_found', `no route ${request.method} ${request.url.split('?')[0]}`));
  });
}
