/**
 * Stop strings matched across token boundaries. Text that might be the start of a stop string is
 * held back until it is known not to be; a matched stop string and anything after it are dropped.
 */
export class StopStringMatcher {
  private readonly stops: readonly string[];
  private pending = '';
  private readonly longest: number;

  constructor(stops: readonly string[]) {
    this.stops = stops.filter((s) => s.length > 0);
    this.longest = Math.max(0, ...this.stops.map((s) => s.length));
  }

  get active(): boolean {
    return this.stops.length > 0;
  }

  /**
   * Feeds new text. Returns the text safe to emit and whether a stop string was found (in which
   * case the text is everything before it and generation should end).
   */
  push(text: string): { text: string; stopped: boolean } {
    if (this.stops.length === 0) return { text, stopped: false };
    this.pending += text;
    let cut = -1;
    for (const s of this.stops) {
      const at = this.pending.indexOf(s);
      if (at >= 0 && (cut < 0 || at < cut)) cut = at;
    }
    if (cut >= 0) {
      const out = this.pending.slice(0, cut);
      this.pending = '';
      return { text: out, stopped: true };
    }
    // Hold back the longest suffix that is a proper prefix of some stop string.
    let hold = 0;
    const maxHold = Math.min(this.longest - 1, this.pending.length);
    for (let k = maxHold; k > 0; k--) {
      const suffix = this.pending.slice(this.pending.length - k);
      if (this.stops.some((s) => s.startsWith(suffix))) {
        hold = k;
        break;
      }
    }
    const out = this.pending.slice(0, this.pending.length - hold);
    this.pending = this.pending.slice(this.pending.length - hold);
    return { text: out, stopped: false };
  }

  /** The held-back text, at the end of generation. */
  flush(): string {
    const out = this.pending;
    this.pending = '';
    return out;
  }
}
