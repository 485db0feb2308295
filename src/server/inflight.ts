/**
 * Requests in flight per adapter version (digest). Unloading and collecting an old version wait
 * until none is left; listeners hear when the last request on a version ends.
 */
export class InflightAdapters {
  private readonly counts = new Map<string, number>();
  private readonly idle: ((digest: string) => void)[] = [];

  of(digest: string): number {
    return this.counts.get(digest) ?? 0;
  }

  digests(): string[] {
    return [...this.counts.keys()];
  }

  /** Calls `fn` whenever the last request on a version ends. */
  onIdle(fn: (digest: string) => void): void {
    this.idle.push(fn);
  }

  track(digests: readonly string[], delta: 1 | -1): void {
    for (const d of digests) {
      const v = this.of(d) + delta;
      if (v > 0) this.counts.set(d, v);
      else {
        this.counts.delete(d);
        for (const fn of this.idle) fn(d);
      }
    }
  }
}
