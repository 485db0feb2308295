/**
 * The one catalog of loraplex errors. Every error has a stable `code`; the catalog alone says what
 * a code means over HTTP (status and error type, for OpenAI's and for TGI's routes). Errors cross
 * thread boundaries as `WireError` ({code, message, param}) and come back as the same class, so no
 * layer below the server knows an HTTP status. Callers branch on `code`, never on message text.
 * Messages name the field, the limit and the value given.
 */

export type OpenAIErrorType =
  | 'invalid_request_error'
  | 'not_found_error'
  | 'authentication_error'
  | 'permission_error'
  | 'rate_limit_error'
  | 'server_error'
  | 'service_unavailable';

interface ErrorKind {
  /** HTTP status on OpenAI-style routes (and admin/ops). */
  status: number;
  type: OpenAIErrorType;
  /** HTTP status and `error_type` on TGI/LoRAX routes (TGI answers validation errors with 422). */
  tgiStatus: number;
  tgiType: string;
}

const kind = (status: number, type: OpenAIErrorType, tgiStatus: number, tgiType: string): ErrorKind => ({ status, type, tgiStatus, tgiType });
const invalid = (status = 400, tgiType = 'validation'): ErrorKind => kind(status, 'invalid_request_error', status === 400 ? 422 : status, tgiType);
const server = (status = 500, tgiType = 'generation'): ErrorKind => kind(status, 'server_error', status, tgiType);

export const ERROR_CATALOG = {
  // ---- the request is wrong (4xx)
  invalid_parameter: invalid(),
  context_length_exceeded: invalid(),
  empty_prompt: invalid(),
  invalid_token: invalid(),
  no_tokenizer: invalid(),
  no_chat_template: invalid(400, 'template_error'),
  chat_template_error: invalid(400, 'template_error'),
  /** Rendering or tokenizing the prompt took longer than its budget, or more memory than allowed. */
  prompt_too_expensive: invalid(),
  unsupported: invalid(422),
  /** A response format / guided-decoding spec that cannot be compiled or would not be enforced. */
  invalid_grammar: invalid(),
  model_not_found: kind(404, 'invalid_request_error', 404, 'not_found'),
  not_found: kind(404, 'not_found_error', 404, 'not_found'),
  adapter_invalid: invalid(422),
  conflict: invalid(409, 'conflict'),
  no_store: invalid(409, 'conflict'),
  invalid_api_key: kind(401, 'authentication_error', 401, 'authentication'),
  body_too_large: invalid(413),
  upload_too_large: invalid(413),
  unsupported_media_type: invalid(415),
  bad_request: invalid(),
  uri_too_long: invalid(414),
  header_too_large: invalid(431),
  /** The request (headers or body) did not arrive within its time limit. */
  request_timeout: invalid(408, 'timeout'),
  overloaded: kind(429, 'rate_limit_error', 429, 'overloaded'),
  /** The client went away or cancelled (nginx's 499). */
  cancelled: invalid(499, 'cancelled'),
  // ---- the server could not do it (5xx, 424)
  adapter_load_failed: kind(424, 'server_error', 424, 'generation'),
  timeout: server(504, 'timeout'),
  not_ready: kind(503, 'service_unavailable', 503, 'unavailable'),
  /** The machine is too busy to finish the request's preparation (tokenizing, compiling its grammar) in time; retryable, with Retry-After. */
  busy: kind(503, 'service_unavailable', 503, 'unavailable'),
  shutting_down: kind(503, 'service_unavailable', 503, 'unavailable'),
  /** The model produced NaN or +Inf logits for a row (its adapter overflows); only that row fails. */
  numerical_error: server(),
  engine_failed: server(),
  /** The disk under the adapter store is full or over quota (ENOSPC, EDQUOT): the machine's fault, not the upload's. */
  storage_full: server(507, 'storage'),
  internal_error: server(500, 'internal'),
  checkpoint_invalid: server(500, 'internal'),
  runtime_config_invalid: server(500, 'internal'),
} as const satisfies Record<string, ErrorKind>;

export type ErrorCode = keyof typeof ERROR_CATALOG;

/** An error as it crosses a thread boundary. */
export interface WireError {
  code: ErrorCode;
  message: string;
  param: string | null;
  retryAfterSeconds?: number;
}

export class LoraplexError extends Error {
  readonly code: ErrorCode;
  /** The request field the error is about, when there is one (OpenAI's `param`). */
  readonly param: string | null;
  /** For `overloaded` and `busy`: when to retry (the HTTP Retry-After header). */
  readonly retryAfterSeconds?: number;

  constructor(code: ErrorCode, message: string, opts: { param?: string | null; cause?: unknown; retryAfterSeconds?: number } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = new.target.name;
    this.code = code;
    this.param = opts.param ?? null;
    if (opts.retryAfterSeconds !== undefined) this.retryAfterSeconds = opts.retryAfterSeconds;
  }

  get statusCode(): number {
    return ERROR_CATALOG[this.code].status;
  }

  get type(): OpenAIErrorType {
    return ERROR_CATALOG[this.code].type;
  }

  toWire(): WireError {
    const w: WireError = { code: this.code, message: this.message, param: this.param };
    if (this.retryAfterSeconds !== undefined) w.retryAfterSeconds = this.retryAfterSeconds;
    return w;
  }

  static fromWire(w: WireError): LoraplexError {
    const retry = typeof w.retryAfterSeconds === 'number' ? { retryAfterSeconds: w.retryAfterSeconds } : {};
    return new LoraplexError(isErrorCode(w.code) ? w.code : 'internal_error', w.message, { param: w.param, ...retry });
  }

  /** Any thrown value as a LoraplexError (unknown errors become internal_error, message kept). */
  static from(err: unknown): LoraplexError {
    if (err instanceof LoraplexError) return err;
    const message = err instanceof Error ? err.message : String(err);
    return new LoraplexError('internal_error', `internal error: ${message}`, { cause: err });
  }
}

export function isErrorCode(code: unknown): code is ErrorCode {
  return typeof code === 'string' && Object.hasOwn(ERROR_CATALOG, code);
}

/** Any thrown value in wire form. */
export function toWireError(err: unknown): WireError {
  return LoraplexError.from(err).toWire();
}

// Shorthands for the common codes.

/** A model checkpoint (config.json, safetensors, tokenizer files) that cannot be used. */
export class CheckpointError extends LoraplexError {
  constructor(message: string, cause?: unknown) {
    super('checkpoint_invalid', message, { cause });
  }
}

/** A PEFT adapter that cannot be served with the loaded base model. */
export class AdapterInvalidError extends LoraplexError {
  constructor(message: string, param: string | null = null) {
    super('adapter_invalid', message, { param });
  }
}

/** A runtime configuration that cannot work (unknown execution provider, bad capacity, ...). */
export class RuntimeConfigError extends LoraplexError {
  constructor(message: string) {
    super('runtime_config_invalid', message);
  }
}

/** A request field with a wrong value. */
export class ValidationError extends LoraplexError {
  constructor(message: string, param: string | null = null) {
    super('invalid_parameter', message, { param });
  }
}

/** The request names a model or adapter that does not exist. */
export class ModelNotFoundError extends LoraplexError {
  constructor(message: string, param = 'model') {
    super('model_not_found', message, { param });
  }
}

/** A field whose value is understood but not supported (e.g. a merge strategy other than linear). */
export class UnsupportedError extends LoraplexError {
  constructor(message: string, param: string | null = null) {
    super('unsupported', message, { param });
  }
}

export class AuthError extends LoraplexError {
  constructor(message: string) {
    super('invalid_api_key', message);
  }
}

export class ConflictError extends LoraplexError {
  constructor(message: string, param: string | null = null) {
    super('conflict', message, { param });
  }
}

/** Errno codes of a full disk or an exhausted quota. */
const DISK_FULL = new Set(['ENOSPC', 'EDQUOT']);

/** The adapter store's disk is full or over quota while writing: a 507, never the input's fault. */
export class StorageFullError extends LoraplexError {
  constructor(what: string, errno: string, cause?: unknown) {
    super('storage_full', `the adapter store's disk is full (${errno}) while writing ${what}; free space on the store's volume (--adapters) and retry`, { cause });
  }

  /** `err` as a StorageFullError when it is a full disk or quota (by its errno code); otherwise null. */
  static of(err: unknown, what: string): StorageFullError | null {
    const code = (err as { code?: unknown } | null)?.code;
    return typeof code === 'string' && DISK_FULL.has(code) ? new StorageFullError(what, code, err) : null;
  }
}

export class NotReadyError extends LoraplexError {
  constructor(message: string) {
    super('not_ready', message);
  }
}
