/**
 * The one catalog of loraplex errors. Each class carries a stable `code`, the HTTP status it maps to
 * and the OpenAI error `type`; the HTTP layer maps them in one place and callers branch on `code`,
 * never on message text. Messages name the field, the limit and the value given.
 */

export type OpenAIErrorType =
  | 'invalid_request_error'
  | 'not_found_error'
  | 'authentication_error'
  | 'permission_error'
  | 'rate_limit_error'
  | 'server_error'
  | 'service_unavailable';

export class LoraplexError extends Error {
  readonly code: string;
  readonly statusCode: number;
  readonly type: OpenAIErrorType;
  /** The request field the error is about, when there is one (OpenAI's `param`). */
  readonly param: string | null;

  constructor(
    message: string,
    opts: { code: string; statusCode: number; type: OpenAIErrorType; param?: string | null; cause?: unknown },
  ) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = new.target.name;
    this.code = opts.code;
    this.statusCode = opts.statusCode;
    this.type = opts.type;
    this.param = opts.param ?? null;
  }
}

/** A model checkpoint (config.json, safetensors, tokenizer files) that cannot be used. */
export class CheckpointError extends LoraplexError {
  constructor(message: string, cause?: unknown) {
    super(message, { code: 'checkpoint_invalid', statusCode: 500, type: 'server_error', cause });
  }
}

/** A PEFT adapter that cannot be served with the loaded base model. */
export class AdapterInvalidError extends LoraplexError {
  constructor(message: string, param: string | null = null) {
    super(message, { code: 'adapter_invalid', statusCode: 422, type: 'invalid_request_error', param });
  }
}

/** A runtime configuration that cannot work (unknown execution provider, bad capacity, ...). */
export class RuntimeConfigError extends LoraplexError {
  constructor(message: string) {
    super(message, { code: 'runtime_config_invalid', statusCode: 500, type: 'server_error' });
  }
}

/** A request that asks for more than a configured capacity allows. */
export class CapacityError extends LoraplexError {
  constructor(message: string, param: string | null = null) {
    super(message, { code: 'capacity_exceeded', statusCode: 400, type: 'invalid_request_error', param });
  }
}

/** A request field with a wrong value. */
export class ValidationError extends LoraplexError {
  constructor(message: string, param: string | null = null) {
    super(message, { code: 'invalid_parameter', statusCode: 400, type: 'invalid_request_error', param });
  }
}

/** The request names a model or adapter that does not exist. */
export class ModelNotFoundError extends LoraplexError {
  constructor(message: string, param = 'model') {
    super(message, { code: 'model_not_found', statusCode: 404, type: 'invalid_request_error', param });
  }
}

/** A field whose value is understood but not supported (e.g. a merge strategy other than linear). */
export class UnsupportedError extends LoraplexError {
  constructor(message: string, param: string | null = null) {
    super(message, { code: 'unsupported', statusCode: 422, type: 'invalid_request_error', param });
  }
}

export class AuthError extends LoraplexError {
  constructor(message: string) {
    super(message, { code: 'invalid_api_key', statusCode: 401, type: 'authentication_error' });
  }
}

export class ConflictError extends LoraplexError {
  constructor(message: string, param: string | null = null) {
    super(message, { code: 'conflict', statusCode: 409, type: 'invalid_request_error', param });
  }
}

export class NotReadyError extends LoraplexError {
  constructor(message: string) {
    super(message, { code: 'not_ready', statusCode: 503, type: 'service_unavailable' });
  }
}
