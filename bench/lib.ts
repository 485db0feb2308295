/** Timing helpers for the benchmarks: interleaved rounds so that machine noise hits all variants alike. */

export interface Timing {
  min: number;
  median: number;
  n: number;
}

function summarize(samples: number[]): Timing {
  const s = [...samples].sort((a, b) => a - b);
  return { min: s[0], median: s[Math.floor(s.length / 2)], n: s.length };
}

/**
 * Runs every variant `rounds` times, round-robin (variant A, B, C, A, B, C, ...), after `warmup`
 * untimed rounds. Returns per-variant timings in milliseconds.
 */
export async function interleaved<K extends string>(
  variants: Record<K, () => Promise<unknown>>,
  opts: { rounds: number; warmup?: number },
): Promise<Record<K, Timing>> {
  const names = Object.keys(variants) as K[];
  const samples = Object.fromEntries(names.map((n) => [n, [] as number[]])) as Record<K, number[]>;
  for (let r = 0; r < (opts.warmup ?? 1); r++) for (const n of names) await variants[n]();
  for (let r = 0; r < opts.rounds; r++) {
    for (const n of names) {
      const t0 = performance.now();
      await variants[n]();
      samples[n].push(performance.now() - t0);
    }
  }
  return Object.fromEntries(names.map((n) => [n, summarize(samples[n])])) as Record<K, Timing>;
}

export const fmt = (x: number, digits = 2): string => x.toFixed(digits);

export function table(headers: string[], rows: (string | number)[][]): string {
  const lines = [`| ${headers.join(' | ')} |`, `|${headers.map(() => '---').join('|')}|`];
  for (const r of rows) lines.push(`| ${r.join(' | ')} |`);
  return lines.join('\n');
}

/** The q-quantile of `xs` (nearest rank); NaN when empty. */
export function quantile(xs: number[], q: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))];
}

/** Picks 0..n-1 with probability proportional to 1 / (i + 1) (zipf, s = 1). */
export function zipfPicker(n: number, rand: () => number): () => number {
  const w = Array.from({ length: n }, (_, i) => 1 / (i + 1));
  const total = w.reduce((a, b) => a + b, 0);
  return () => {
    let u = rand() * total;
    for (let i = 0; i < n; i++) if ((u -= w[i]) <= 0) return i;
    return n - 1;
  };
}
