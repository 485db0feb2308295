/**
 * Timers for a slow *client* (a body or upload that stops arriving) that do not fire because the
 * *server* was slow. On a machine whose cores are saturated the event loop can be descheduled for
 * longer than the limit; when it runs again, expired timers run before the poll phase reads the
 * bytes that arrived meanwhile, so a plain timer would blame a client whose body was already
 * there. When this timer expires it waits for one pass of the poll phase (setImmediate runs after
 * it), so any data that arrived in time is seen first and can still cancel or refresh it.
 */
export interface ClientTimer {
  /** Restarts the limit (the client made progress). */
  refresh(): void;
  cancel(): void;
}

export function clientTimer(onExpired: () => void, ms: number, opts: { unref?: boolean } = {}): ClientTimer {
  let generation = 0;
  let cancelled = false;
  const timer = setTimeout(() => {
    const seen = generation;
    setImmediate(() => {
      if (!cancelled && seen === generation) onExpired();
    });
  }, ms);
  if (opts.unref) timer.unref();
  return {
    refresh() {
      generation++;
      if (!cancelled) timer.refresh();
    },
    cancel() {
      cancelled = true;
      clearTimeout(timer);
    },
  };
}
