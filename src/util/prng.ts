/**
 * Seeded pseudo-random numbers for random weights, benchmarks and tests (mulberry32: small, fast,
 * reproducible across runs and platforms). Not for anything secret.
 */

/** Uniform in [0, 1). */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Uniform in [-1, 1). */
export function symmetricPrng(seed: number): () => number {
  const next = prng(seed);
  return () => 2 * next() - 1;
}
