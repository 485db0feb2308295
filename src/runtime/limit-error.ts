/**
 * A caller asked the runtime for more than it holds (a full KV pool, a slot that does not exist, a
 * token id outside the vocabulary). The scheduler's own checks keep this from happening; when it
 * does, it is a bug in the caller, reported as an internal error.
 */
export class RuntimeLimitError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RuntimeLimitError';
  }
}
