/**
 * Stop strings matched across token boundaries, streaming: one KMP automaton per stop string
 * advances over each new character, so a token costs O(new characters × stop strings) whatever the
 * stop strings' length. Text that might be the start of a stop string is held back until it is
 * known not to be; a matched stop string and anything after it are dropped. When several stop
 * strings complete on the same character, the longest (the one that started first) wins.
 */
interface Automaton {
  stop: string;
  /** KMP failure function: fail[i] = length of the longest proper border of stop[0..i]. */
  fail: Int32Array;
  /** Characters of `stop` matched by the end of the text so far. */
  state: number;
}

export class StopStringMatcher {
  private readonly automata: Automaton[];
  /** Text not emitted yet: the longest partial match at the end of the text. */
  private pending = '';

  constructor(stops: readonly string[]) {
    this.automata = stops.filter((s) => s.length > 0).map((stop) => ({ stop, fail: failure(stop), state: 0 }));
  }

  /**
   * Feeds new text. Returns the text safe to emit and whether a stop string was found (in which
   * case the text is everything before it, `stop` is the stop string found, and generation
   * should end).
   */
  push(text: string): { text: string; stopped: boolean; stop?: string } {
    if (this.automata.length === 0) return { text, stopped: false };
    const all = this.pending + text;
    for (let j = this.pending.length; j < all.length; j++) {
      const c = all.charCodeAt(j);
      let matched = 0;
      let stop = '';
      for (const a of this.automata) {
        let k = a.state;
        while (k > 0 && a.stop.charCodeAt(k) !== c) k = a.fail[k - 1];
        if (a.stop.charCodeAt(k) === c) k++;
        if (k === a.stop.length) {
          if (k > matched) [matched, stop] = [k, a.stop];
          k = a.fail[k - 1];
        }
        a.state = k;
      }
      if (matched > 0) {
        this.pending = '';
        for (const a of this.automata) a.state = 0;
        return { text: all.slice(0, j + 1 - matched), stopped: true, stop };
      }
    }
    let hold = 0;
    for (const a of this.automata) hold = Math.max(hold, a.state);
    this.pending = all.slice(all.length - hold);
    return { text: all.slice(0, all.length - hold), stopped: false };
  }

  /** The held-back text, at the end of generation. */
  flush(): string {
    const out = this.pending;
    this.pending = '';
    for (const a of this.automata) a.state = 0;
    return out;
  }
}

function failure(s: string): Int32Array {
  const f = new Int32Array(s.length);
  let k = 0;
  for (let i = 1; i < s.length; i++) {
    while (k > 0 && s.charCodeAt(i) !== s.charCodeAt(k)) k = f[k - 1];
    if (s.charCodeAt(i) === s.charCodeAt(k)) k++;
    f[i] = k;
  }
  return f;
}
