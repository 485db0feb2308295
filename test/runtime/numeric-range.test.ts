/**
 * The EBNF of numbers in a range (numeric-range.ts), compiled by XGrammar on a one-character-per-
 * token vocabulary and fed candidate strings one character at a time, against an independent
 * reference: BigInt comparison for integers, the parsed double compared in plain JS for numbers.
 * Sweeps cover every integer near each edge, near ±2^53-1 and 0, and random decimals near the
 * bounds; long decimals that round onto a bound check that an accepted string never parses
 * outside the range.
 */
import type { GrammarMatcher } from '@mlc-ai/web-xgrammar';
import { beforeAll, describe, expect, it } from 'vitest';
import { LoraplexError } from '../../src/errors.js';
import { boundsRangeEbnf, integerRangeEbnf, numberRangeEbnf } from '../../src/runtime/grammar/numeric-range.js';
import { xgrammar } from '../../src/runtime/grammar/xgrammar.js';
import { prng } from '../../src/util/prng.js';

const chars = [...'0123456789-.eE+ ax'];
const STOP = chars.length;
let info: Awaited<ReturnType<ReturnType<typeof xgrammar>['TokenizerInfo']['createTokenizerInfo']>>;
beforeAll(async () => {
  info = await xgrammar().TokenizerInfo.createTokenizerInfo([...chars, '</s>'], 'raw', false, chars.length + 1, [STOP]);
});

/** Compiles `rule` (named r) as the whole grammar; returns whether it accepts a string. */
async function acceptor(rule: string): Promise<(text: string) => boolean> {
  const xg = xgrammar();
  const compiler = await xg.GrammarCompiler.createGrammarCompiler(info, false);
  const m: GrammarMatcher = await xg.GrammarMatcher.createGrammarMatcher(await compiler.compileGrammar(`root ::= r\n${rule}\n`));
  return (text) => {
    m.reset();
    for (const ch of text) {
      const id = chars.indexOf(ch);
      if (id < 0 || !m.acceptToken(id)) return false;
    }
    return m.acceptToken(STOP);
  };
}

const PLAIN_DECIMAL = /^-?(0|[1-9][0-9]*)(\.[0-9]+)?$/;

describe('integer ranges', () => {
  const cases: [bigint | null, bigint | null][] = [
    [0n, 150n],
    [0n, 0n],
    [7n, 7n],
    [-7n, -7n],
    [1n, 10n],
    [-20n, 35n],
    [-150n, -99n],
    [95n, 1005n],
    [100n, 199n],
    [10n, 99n],
    [0n, null],
    [5n, null],
    [null, 0n],
    [null, -12n],
    [-3n, null],
    [null, 42n],
    [null, null],
    [-(2n ** 53n - 1n), 2n ** 53n - 1n],
    [0n, 2n ** 53n - 1n],
    [1234567890123n, 1234567899999n],
  ];
  it.each(cases)('[%s, %s] accepts exactly the canonical integers in range', async (lo, hi) => {
    const accepts = await acceptor(integerRangeEbnf('r', lo, hi));
    const inRange = (n: bigint) => (lo === null || n >= lo) && (hi === null || n <= hi);
    // Every integer within 30 of each edge, of 0, of each length boundary, and of ±2^53.
    const centres = [lo, hi, 0n, 9n, 10n, 99n, 100n, 999n, 1000n, -10n, -100n, 2n ** 53n, -(2n ** 53n)].filter((c): c is bigint => c !== null);
    const candidates = new Set<bigint>();
    for (const c of centres) for (let d = -30n; d <= 30n; d++) candidates.add(c + d);
    const rand = prng(Number((lo ?? 0n) % 1000n) + 7);
    for (let i = 0; i < 200; i++) candidates.add(BigInt(Math.floor((rand() - 0.5) * 2 ** (1 + Math.floor(rand() * 60)))));
    for (const n of candidates) expect(accepts(n.toString()), n.toString()).toBe(inRange(n));
    if (lo !== null) expect(accepts(lo.toString())).toBe(true);
    if (hi !== null) expect(accepts(hi.toString())).toBe(true);
    if (lo !== null) expect(accepts((lo - 1n).toString())).toBe(false);
    if (hi !== null) expect(accepts((hi + 1n).toString())).toBe(false);
    // Only canonical JSON integers: no leading zeros, no -0, no fraction or exponent.
    for (const s of ['-0', '007', '00', '1.0', '1e2', '+1', '', '-', '0x1', '1 ']) expect(accepts(s), s).toBe(false);
  });

  it('exhaustively: ranges within [-1200, 1200] accept exactly their integers', async () => {
    const edges = [-1200n, -1000n, -999n, -120n, -101n, -100n, -99n, -18n, -11n, -10n, -9n, -1n, 0n, 1n, 9n, 10n, 11n, 18n, 19n, 20n, 99n, 100n, 101n, 108n, 109n, 110n, 989n, 999n, 1000n, 1200n];
    const rand = prng(3);
    const ranges: [bigint, bigint][] = [];
    for (const lo of edges) for (const hi of edges) if (lo <= hi) ranges.push([lo, hi]);
    for (let i = 0; i < 150; i++) {
      const a = BigInt(Math.floor(rand() * 2401) - 1200);
      const b = BigInt(Math.floor(rand() * 2401) - 1200);
      ranges.push(a <= b ? [a, b] : [b, a]);
    }
    for (const [lo, hi] of ranges) {
      const accepts = await acceptor(integerRangeEbnf('r', lo, hi));
      for (let n = -1230n; n <= 1230n; n++) if (accepts(n.toString()) !== (n >= lo && n <= hi)) expect.fail(`${n} in [${lo}, ${hi}]: ${!(n >= lo && n <= hi)}`);
    }
  }, 120_000);

  it('an empty range is refused', () => {
    expect(() => integerRangeEbnf('r', 5n, 4n)).toThrow(LoraplexError);
  });
});

describe('number ranges', () => {
  // Decimals with at most 15 significant digits: distinct ones parse to distinct doubles, in order,
  // so comparing the parsed doubles is comparing the decimals.
  function candidates(bounds: (number | null)[], seed: number): string[] {
    const rand = prng(seed);
    const out = new Set<string>(['0', '-0', '1', '-1', '0.5', '-0.5', '10', '-10', '123.456', '-123.456']);
    for (const b of bounds) {
      if (b === null) continue;
      for (const x of [b, -b]) {
        const s = String(x);
        out.add(s);
        if (!s.includes('.')) out.add(`${s}.0`);
        else out.add(`${s}0`);
        for (const scale of [1, 1e-1, 1e-2, 1e-3, 1e-6, 1e-9, 1e-12])
          for (const d of [-3, -2, -1, 1, 2, 3]) {
            const y = Number((x + d * scale * Math.max(1, Math.abs(x))).toPrecision(12));
            out.add(plain(y));
          }
      }
    }
    for (let i = 0; i < 300; i++) {
      const y = Number(((rand() - 0.5) * 10 ** Math.floor(rand() * 6 - 2)).toPrecision(1 + Math.floor(rand() * 14)));
      out.add(plain(y));
    }
    return [...out].filter((s) => PLAIN_DECIMAL.test(s));
  }
  /** A double written without an exponent. */
  const plain = (x: number): string => (Math.abs(x) < 1e-6 && x !== 0 ? x.toFixed(20).replace(/0+$/, '') : String(x));

  const cases: [number | null, number | null][] = [
    [0.5, 2.75],
    [-1.25, -0.5],
    [-2.5, 3.125],
    [0, 1],
    [0, null],
    [null, 0],
    [-0.001, 0.001],
    [0.25, 0.25],
    [3, 3],
    [1.05, 1.95],
    [19.99, 20.01],
    [0.1, 0.3],
    [-100, -99.5],
    [99.5, 1000.25],
    [1e-7, 2e-7],
    [null, -3.75],
    [4.5, null],
    [-9007199254740991, 9007199254740991],
    [null, null],
  ];
  it.each(cases)('[%s, %s] accepts exactly the plain decimals in range', async (lo, hi) => {
    const accepts = await acceptor(numberRangeEbnf('r', lo, hi));
    // -0 is written only when the range reaches below 0 (and includes 0).
    const inRange = (s: string) => (lo === null || Number(s) >= lo) && (hi === null || Number(s) <= hi) && !(/^-0(\.0+)?$/.test(s) && lo === 0);
    for (const s of candidates([lo, hi], 11)) expect(accepts(s), s).toBe(inRange(s));
    // Exponents, leading zeros, bare points and a lone sign are never written.
    for (const s of ['1e0', '1E0', '01', '1.', '.5', '-', '', '+1', '00.5']) expect(accepts(s), s).toBe(false);
  });

  it('edges: the bounds and their trailing-zero forms pass; the adjacent decimals outside do not', async () => {
    const a = await acceptor(numberRangeEbnf('r', 0.5, 2.75));
    for (const s of ['0.5', '0.50', '0.500000', '2.75', '2.750', '1', '2', '2.7499999999', '0.5000000001']) expect(a(s), s).toBe(true);
    for (const s of ['0.4999999999', '0.49', '0', '-0', '2.7500000001', '2.76', '3', '2.8', '-1']) expect(a(s), s).toBe(false);
    const b = await acceptor(numberRangeEbnf('r', -1.25, -0.5));
    for (const s of ['-1.25', '-0.5', '-1', '-0.75', '-1.2499999', '-0.5000001']) expect(b(s), s).toBe(true);
    for (const s of ['-1.2500001', '-1.26', '-0.4999999', '-0.49', '0', '-0', '1', '0.5']) expect(b(s), s).toBe(false);
    // -0 only where 0 is in range.
    const c = await acceptor(numberRangeEbnf('r', -1, 1));
    for (const s of ['-0', '-0.0', '0', '0.000', '-1', '1', '-0.999']) expect(c(s), s).toBe(true);
    const d = await acceptor(numberRangeEbnf('r', 0, 1));
    expect(d('-0')).toBe(false);
  });

  it('exclusive bounds: nothing that parses to the excluded double passes', async () => {
    const gt = await acceptor(boundsRangeEbnf('r', false, { exclusiveMinimum: 0.1 }, '#'));
    // 0.1 is 0.1000000000000000055…; the next double is 0.10000000000000001942…
    for (const s of ['0.1', '0.10', '0.10000000000000001', '0.1000000000000000000001', '0.09']) {
      expect(gt(s), s).toBe(false);
    }
    expect(Number('0.10000000000000001')).toBe(0.1);
    for (const s of ['0.10000000000000002', '0.100000000000001', '0.2', '1', '12345']) {
      expect(gt(s), s).toBe(true);
      expect(Number(s) > 0.1).toBe(true);
    }
    const lt = await acceptor(boundsRangeEbnf('r', false, { exclusiveMaximum: 0.3, minimum: 0 }, '#'));
    for (const s of ['0.3', '0.29999999999999999', '0.3000001', '-0.1']) expect(lt(s), s).toBe(false);
    for (const s of ['0.29999999999999993', '0.29', '0', '0.1']) expect(lt(s), s).toBe(true);
    // exclusiveMinimum 0 (zod's .positive()): every accepted decimal parses above 0.
    const pos = await acceptor(boundsRangeEbnf('r', false, { exclusiveMinimum: 0 }, '#'));
    for (const s of ['0', '-0', '0.0', '0.000', '-1', `0.${'0'.repeat(400)}1`]) expect(pos(s), s).toBe(false);
    for (const s of ['1', '0.5', `0.${'0'.repeat(38)}1`]) expect(pos(s), s).toBe(true);
    const neg = await acceptor(boundsRangeEbnf('r', false, { exclusiveMaximum: 0 }, '#'));
    for (const s of ['0', '-0', '-0.0', '1']) expect(neg(s), s).toBe(false);
    for (const s of ['-1', '-0.5', `-0.${'0'.repeat(38)}1`]) expect(neg(s), s).toBe(true);
  });

  it('long decimals near the bounds: whatever passes parses within the bounds', async () => {
    const rand = prng(5);
    for (const [lo, hi] of [[0.1, 0.3], [0.5, 2.75], [-1.25, -0.5], [1 / 3, 2 / 3], [123.456, 123.457]] as const) {
      const accepts = await acceptor(numberRangeEbnf('r', lo, hi));
      for (const edge of [lo, hi]) {
        const base = String(edge).padEnd(20, '0');
        for (let i = 0; i < 200; i++) {
          // The bound's digits, then random further digits, nudged either way in a random place.
          let s = base + Array.from({ length: Math.floor(rand() * 8) }, () => Math.floor(rand() * 10)).join('');
          const at = s.indexOf('.') + 1 + Math.floor(rand() * (s.length - s.indexOf('.') - 1));
          const digit = (Number(s[at]) + (rand() < 0.5 ? 1 : 9)) % 10;
          s = s.slice(0, at) + digit + s.slice(at + 1);
          if (!PLAIN_DECIMAL.test(s)) continue;
          const v = Number(s);
          if (accepts(s)) expect(v >= lo && v <= hi, s).toBe(true);
          // Decimals clearly inside (away from rounding at the bound) pass.
          if (v > lo * (1 + Math.sign(lo) * 1e-14) && v < hi * (1 - Math.sign(hi) * 1e-14)) expect(accepts(s), s).toBe(true);
        }
      }
    }
  });
});

describe('schema bounds', () => {
  const ebnf = (integer: boolean, b: Record<string, unknown>) => boundsRangeEbnf('r', integer, b, '#/properties/n');

  it('integer bounds round inward exactly; exclusive ones step past the bound', async () => {
    const a = await acceptor(ebnf(true, { minimum: 1.5, maximum: 4.5 }));
    expect(['1', '2', '3', '4', '5'].map(a)).toEqual([false, true, true, true, false]);
    const b = await acceptor(ebnf(true, { exclusiveMinimum: 2, exclusiveMaximum: 5 }));
    expect(['2', '3', '4', '5'].map(b)).toEqual([false, true, true, false]);
    const c = await acceptor(ebnf(true, { exclusiveMinimum: -2.5, maximum: -0.5 }));
    expect(['-3', '-2', '-1', '0'].map(c)).toEqual([false, true, true, false]);
    const d = await acceptor(ebnf(true, { minimum: 0, exclusiveMinimum: 3, maximum: 10, exclusiveMaximum: 8 }));
    expect(['3', '4', '7', '8'].map(d)).toEqual([false, true, true, false]);
    // zod's .int(): ±(2^53 - 1).
    const z = await acceptor(ebnf(true, { minimum: -9007199254740991, maximum: 9007199254740991 }));
    expect(['9007199254740991', '-9007199254740991', '0', '9007199254740992', '-9007199254740992', '10000000000000000'].map(z)).toEqual([true, true, true, false, false, false]);
  });

  it.each([
    [true, { minimum: 5, maximum: 4 }, 'no integer satisfies "minimum": 5, "maximum": 4'],
    [true, { minimum: 4.2, maximum: 4.8 }, 'no integer satisfies'],
    [true, { exclusiveMinimum: 4, exclusiveMaximum: 5 }, 'no integer satisfies'],
    [false, { exclusiveMinimum: 1, exclusiveMaximum: 1 }, 'no number satisfies'],
    [false, { minimum: 1, maximum: 0.5 }, 'no number satisfies'],
    [false, { minimum: 'a' }, '#/properties/n/minimum: must be a finite number; given "a"'],
    [false, { exclusiveMinimum: true, minimum: 0 }, "draft-04's boolean form"],
    [false, { maximum: null }, 'must be a finite number'],
    [true, { maximum: 1e50 }, '#/properties/n/maximum: 1e+50 has more than 40 digits'],
    [false, { minimum: 1.5e-41 }, 'more than 40 digits'],
  ])('integer=%s %j is refused: %s', (integer, b, message) => {
    expect(() => ebnf(integer, b)).toThrow(message);
    try {
      ebnf(integer, b);
    } catch (err) {
      expect(err).toMatchObject({ code: 'invalid_grammar', param: 'schema' });
    }
  });
});
