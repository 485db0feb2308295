/** Holds the event loop for `ms` (busy), as a descheduled process or a long synchronous step does. */
export function holdLoop(ms: number): void {
  const until = performance.now() + ms;
  while (performance.now() < until) {
    // busy
  }
}
