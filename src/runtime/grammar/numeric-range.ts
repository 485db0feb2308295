/**
 * EBNF (XGrammar's dialect) for the JSON numbers in a range, written digit by digit, because
 * XGrammar 0.1.27's own `minimum`/`maximum` rules are wrong ([0, 150] lets 151..159 through).
 *
 * Semantics: integers are canonical JSON (`0`, `[1-9][0-9]*`, optionally `-`; never `-0`), and a
 * string is accepted iff its exact value lies in [lo, hi]. Numbers are plain decimals without an
 * exponent (`-?int(.digits)?`), accepted iff their exact decimal value lies in [lo, hi], lo and hi
 * being the shortest round-trip decimals of the bound doubles. Since rounding a decimal to the
 * nearest double is monotonic, every accepted number parses to a double within the bounds. A
 * number may be written `-0` (`-0.0`…) only when the range reaches below 0 and holds 0.
 *
 * The grammar: split by sign (the negative branch writes `-`, then a magnitude range with the
 * bounds flipped); a magnitude range splits by the integer part's digit count, and a range of
 * digit strings of one length is a common prefix, then the first differing digit, then suffix >=
 * and suffix <= branches. Fractions compare digit-wise the same way, with an absent fraction
 * meaning .0.
 */
import { LoraplexError } from '../../errors.js';

/** Bounds (and the adjacent doubles of exclusive ones) have at most this many digits written without an exponent. */
export const MAX_DIGITS = 40;

/** The four JSON-schema bound keywords, as a schema writes them (unchecked). */
export interface NumericBounds {
  minimum?: unknown;
  exclusiveMinimum?: unknown;
  maximum?: unknown;
  exclusiveMaximum?: unknown;
}

export const BOUND_KEYWORDS = ['minimum', 'exclusiveMinimum', 'maximum', 'exclusiveMaximum'] as const;

function refuse(message: string): never {
  throw new LoraplexError('invalid_grammar', message, { param: 'schema' });
}

// ---- EBNF pieces ('' is the empty sequence; alternatives write it as "")

const lit = (s: string): string => `"${s}"`;
const cls = (lo: number, hi: number): string => (lo === hi ? lit(String(lo)) : `[${lo}-${hi}]`);
const DIGIT = '[0-9]';
const digits = (n: number): string[] => new Array<string>(n).fill(DIGIT);
const seq = (...parts: string[]): string => parts.filter((p) => p !== '').join(' ');
const alt = (options: string[]): string => (options.length === 1 ? options[0] : `(${options.map((o) => (o === '' ? '""' : o)).join(' | ')})`);
const allZeros = (s: string): boolean => /^0*$/.test(s);
const allNines = (s: string): boolean => /^9*$/.test(s);

/** Digit strings of `s.length` digits that are >= s. */
function atLeast(s: string): string {
  if (allZeros(s)) return seq(...digits(s.length));
  const d = Number(s[0]);
  const options = [seq(lit(s[0]), atLeast(s.slice(1)))];
  if (d < 9) options.push(seq(cls(d + 1, 9), ...digits(s.length - 1)));
  return alt(options);
}

/** Digit strings of `s.length` digits that are <= s. */
function atMost(s: string): string {
  if (allNines(s)) return seq(...digits(s.length));
  const d = Number(s[0]);
  const options = [seq(lit(s[0]), atMost(s.slice(1)))];
  if (d > 0) options.push(seq(cls(0, d - 1), ...digits(s.length - 1)));
  return alt(options);
}

/** Digit strings s of x's length with x <= s <= y (x <= y, same length). */
function sameLength(x: string, y: string): string {
  let i = 0;
  while (i < x.length && x[i] === y[i]) i++;
  if (i === x.length) return lit(x);
  const head = i > 0 ? lit(x.slice(0, i)) : '';
  const dx = Number(x[i]);
  const dy = Number(y[i]);
  const xs = x.slice(i + 1);
  const ys = y.slice(i + 1);
  const options: string[] = [];
  // A suffix bound of all zeros (all nines) allows every suffix: its digit joins the middle class.
  if (!allZeros(xs)) options.push(seq(lit(x[i]), atLeast(xs)));
  const from = allZeros(xs) ? dx : dx + 1;
  const to = allNines(ys) ? dy : dy - 1;
  if (from <= to) options.push(seq(cls(from, to), ...digits(xs.length)));
  if (!allNines(ys)) options.push(seq(lit(y[i]), atMost(ys)));
  return seq(head, alt(options));
}

/** 0 to n further digits. */
function upTo(n: number): string {
  return n === 0 ? '' : alt(['', seq(DIGIT, upTo(n - 1))]);
}

/** Canonical non-negative integers in [a, b] (b null: unbounded), 0 <= a <= b. */
function magnitudes(a: bigint, b: bigint | null): string {
  const as = a.toString();
  const bs = b?.toString();
  if (bs !== undefined && bs.length === as.length) return sameLength(as, bs);
  const options = [sameLength(as, '9'.repeat(as.length))];
  if (bs === undefined) {
    options.push(seq('[1-9]', ...digits(as.length), `${DIGIT}*`));
  } else {
    // Lengths strictly between a's and b's take any digits.
    if (as.length + 1 < bs.length) options.push(seq('[1-9]', ...digits(as.length), upTo(bs.length - as.length - 2)));
    options.push(sameLength(`1${'0'.repeat(bs.length - 1)}`, bs));
  }
  return alt(options);
}

/**
 * The rule `name` for the canonical JSON integers in [lo, hi] (null: unbounded on that side).
 * Throws invalid_grammar when lo > hi.
 */
export function integerRangeEbnf(name: string, lo: bigint | null, hi: bigint | null): string {
  if (lo !== null && hi !== null && lo > hi) refuse(`no integer lies between ${lo} and ${hi}`);
  const options: string[] = [];
  if (hi === null || hi >= 0n) options.push(magnitudes(lo !== null && lo > 0n ? lo : 0n, hi));
  if (lo === null || lo < 0n) options.push(seq(lit('-'), magnitudes(hi !== null && hi < 0n ? -hi : 1n, lo === null ? null : -lo)));
  return `${name} ::= ${alt(options)}`;
}

// ---- decimals

/** An exact decimal: `int` canonical digits, `frac` without trailing zeros; zero is never negative. */
interface Decimal {
  neg: boolean;
  int: string;
  frac: string;
}

/** The shortest round-trip decimal of a finite double, written out without an exponent. */
function decimalOf(x: number): Decimal {
  const m = /^(-?)(\d+)(?:\.(\d+))?(?:e([+-]\d+))?$/.exec(String(x));
  if (!m) throw new Error(`not a finite number: ${x}`);
  const all = m[2] + (m[3] ?? '');
  const point = m[2].length + Number(m[4] ?? 0);
  let int: string;
  let frac: string;
  if (point <= 0) [int, frac] = ['0', '0'.repeat(-point) + all];
  else if (point >= all.length) [int, frac] = [all + '0'.repeat(point - all.length), ''];
  else [int, frac] = [all.slice(0, point), all.slice(point)];
  return normal(m[1] === '-', int, frac);
}

function normal(neg: boolean, int: string, frac: string): Decimal {
  int = int.replace(/^0+(?=\d)/, '');
  frac = frac.replace(/0+$/, '');
  return { neg: neg && !(int === '0' && frac === ''), int, frac };
}

const digitCount = (d: Decimal): number => (d.int === '0' ? 0 : d.int.length) + d.frac.length;

/**
 * `d` with at most MAX_DIGITS digits, rounded toward +Infinity (`up`) or -Infinity: inward for a
 * lower (upper) bound, so the range only narrows and stays sound.
 */
function limitDigits(d: Decimal, up: boolean): Decimal {
  const keep = Math.max(0, MAX_DIGITS - (d.int === '0' ? 0 : d.int.length));
  if (d.frac.length <= keep) return d;
  // The cut part is not zero (frac has no trailing zeros): away from zero adds one unit in the last place kept.
  const awayFromZero = up !== d.neg;
  const kept = (BigInt(d.int + d.frac.slice(0, keep)) + (awayFromZero ? 1n : 0n)).toString().padStart(keep + 1, '0');
  return normal(d.neg, kept.slice(0, kept.length - keep), kept.slice(kept.length - keep));
}

function compareMagnitude(a: Decimal, b: Decimal): number {
  if (a.int.length !== b.int.length) return a.int.length - b.int.length;
  if (a.int !== b.int) return a.int < b.int ? -1 : 1;
  // Without trailing zeros, fractions compare as strings.
  return a.frac === b.frac ? 0 : a.frac < b.frac ? -1 : 1;
}

function compare(a: Decimal, b: Decimal): number {
  if (a.neg !== b.neg) return a.neg ? -1 : 1;
  return a.neg ? -compareMagnitude(a, b) : compareMagnitude(a, b);
}

const show = (d: Decimal): string => `${d.neg ? '-' : ''}${d.int}${d.frac ? `.${d.frac}` : ''}`;

/** An optional fraction with any digits. */
const ANY_FRACTION = alt(['', seq(lit('.'), DIGIT, `${DIGIT}*`)]);
const ZEROS = `${lit('0')}*`;

/** Fraction digits D (at least one) with 0.D >= 0.g; g not empty. */
function fractionAtLeast(g: string): string {
  const d = Number(g[0]);
  const rest = g.slice(1);
  const options = [seq(lit(g[0]), rest === '' ? `${DIGIT}*` : fractionAtLeast(rest))];
  if (d < 9) options.push(seq(cls(d + 1, 9), `${DIGIT}*`));
  return alt(options);
}

/** Fraction digits after a digit equal to h's previous one (possibly none) with 0.rest <= 0.h. */
function tailAtMost(h: string): string {
  return h === '' ? ZEROS : alt(['', fractionAtMost(h)]);
}

/** Fraction digits D (at least one) with 0.D <= 0.h. */
function fractionAtMost(h: string): string {
  if (h === '') return seq(lit('0'), ZEROS);
  const d = Number(h[0]);
  const options = [seq(lit(h[0]), tailAtMost(h.slice(1)))];
  if (d > 0) options.push(seq(cls(0, d - 1), `${DIGIT}*`));
  return alt(options);
}

/** Fraction digits D (at least one) with 0.g <= 0.D <= 0.h; g not empty, 0.g <= 0.h. */
function fractionBetween(g: string, h: string): string {
  if (h === '') throw new Error(`fraction .${g} above .${h}`);
  const dg = Number(g[0]);
  const dh = Number(h[0]);
  const gr = g.slice(1);
  const hr = h.slice(1);
  if (dg === dh) return seq(lit(g[0]), gr === '' ? tailAtMost(hr) : fractionBetween(gr, hr));
  const options = [seq(lit(g[0]), gr === '' ? `${DIGIT}*` : fractionAtLeast(gr))];
  if (dg + 1 <= dh - 1) options.push(seq(cls(dg + 1, dh - 1), `${DIGIT}*`));
  options.push(seq(lit(h[0]), tailAtMost(hr)));
  return alt(options);
}

/** Plain decimals with an exact value in [a, b] (b null: unbounded), 0 <= a <= b. */
function decimalMagnitudes(a: Decimal, b: Decimal | null): string {
  const A = BigInt(a.int);
  // Integer parts from a's (or the next one, when a has a fraction) up to b's, exclusive, take any fraction.
  const firstFree = a.frac === '' ? A : A + 1n;
  const options = a.frac === '' ? [] : [seq(lit(a.int), lit('.'), fractionAtLeast(a.frac))];
  if (b === null) return alt([...options, seq(magnitudes(firstFree, null), ANY_FRACTION)]);
  const B = BigInt(b.int);
  const upToB = alt(['', seq(lit('.'), fractionAtMost(b.frac))]);
  if (B === A) return a.frac === '' ? seq(lit(a.int), upToB) : seq(lit(a.int), lit('.'), fractionBetween(a.frac, b.frac));
  if (firstFree <= B - 1n) options.push(seq(magnitudes(firstFree, B - 1n), ANY_FRACTION));
  options.push(seq(lit(b.int), upToB));
  return alt(options);
}

const ZERO: Decimal = { neg: false, int: '0', frac: '' };
const abs = (d: Decimal): Decimal => ({ ...d, neg: false });

/**
 * The rule `name` for plain JSON decimals whose value lies in [lo, hi] (finite doubles; null:
 * unbounded on that side). A bound with more than MAX_DIGITS digits written out is rounded
 * inward to MAX_DIGITS. Throws invalid_grammar when no such decimal exists.
 */
export function numberRangeEbnf(name: string, lo: number | null, hi: number | null): string {
  for (const b of [lo, hi]) if (b !== null && !Number.isFinite(b)) refuse(`numeric bounds must be finite; given ${b}`);
  const L = lo === null ? null : limitDigits(decimalOf(lo), true);
  const H = hi === null ? null : limitDigits(decimalOf(hi), false);
  if (L && H && compare(L, H) > 0) refuse(`no number with at most ${MAX_DIGITS} digits lies between ${show(L)} and ${show(H)}`);
  const options: string[] = [];
  if (H === null || !H.neg) options.push(decimalMagnitudes(L !== null && !L.neg ? L : ZERO, H));
  if (L === null || L.neg) options.push(seq(lit('-'), decimalMagnitudes(H !== null && H.neg ? abs(H) : ZERO, L === null ? null : abs(L))));
  return `${name} ::= ${alt(options)}`;
}

// ---- schema keywords

/** The next double toward +Infinity (x finite). */
function nextUp(x: number): number {
  if (x === 0) return Number.MIN_VALUE;
  const f = new Float64Array([x]);
  const bits = new BigInt64Array(f.buffer);
  bits[0] += x > 0 ? 1n : -1n;
  return f[0];
}

const nextDown = (x: number): number => -nextUp(-x);

/** The bounds a schema gives, checked: finite numbers with at most MAX_DIGITS digits written out. */
export type GivenBounds = Partial<Record<(typeof BOUND_KEYWORDS)[number], number>>;

export function readBounds(bounds: NumericBounds, at: string): GivenBounds {
  const given: GivenBounds = {};
  for (const k of BOUND_KEYWORDS) {
    const v = bounds[k];
    if (v === undefined) continue;
    if (typeof v !== 'number' || !Number.isFinite(v))
      refuse(`${at}/${k}: must be a finite number; given ${JSON.stringify(v)}${typeof v === 'boolean' ? " (draft-04's boolean form is not supported: give the bound itself as exclusiveMinimum/exclusiveMaximum)" : ''}`);
    if (digitCount(decimalOf(v)) > MAX_DIGITS)
      refuse(`${at}/${k}: ${v} has more than ${MAX_DIGITS} digits written out; constrained decoding writes numbers without an exponent, so bounds may have at most ${MAX_DIGITS} digits`);
    given[k] = v;
  }
  return given;
}

const ceilOf = (d: Decimal): bigint => (d.neg ? -BigInt(d.int) : BigInt(d.int) + (d.frac === '' ? 0n : 1n));
const floorOf = (d: Decimal): bigint => (d.neg ? -(BigInt(d.int) + (d.frac === '' ? 0n : 1n)) : BigInt(d.int));

/**
 * The rule `name` for the integers (`integer`) or numbers satisfying a schema's bounds, or
 * invalid_grammar naming the keyword at `at`. An exclusive bound becomes the adjacent double,
 * inclusive, so that no accepted value parses to the excluded one; integers then round inward
 * (minimum 1.5 is 2).
 */
export function boundsRangeEbnf(name: string, integer: boolean, bounds: NumericBounds, at: string): string {
  const given = readBounds(bounds, at);
  const { minimum, exclusiveMinimum, maximum, exclusiveMaximum } = given;
  const stated = Object.entries(given).map(([k, v]) => `"${k}": ${v}`).join(', ');
  const lo = Math.max(minimum ?? -Infinity, exclusiveMinimum === undefined ? -Infinity : nextUp(exclusiveMinimum));
  const hi = Math.min(maximum ?? Infinity, exclusiveMaximum === undefined ? Infinity : nextDown(exclusiveMaximum));
  const none = `${at}: no ${integer ? 'integer' : 'number'} satisfies ${stated}`;
  if (lo > hi) refuse(none);
  if (integer) {
    const ilo = Number.isFinite(lo) ? ceilOf(decimalOf(lo)) : null;
    const ihi = Number.isFinite(hi) ? floorOf(decimalOf(hi)) : null;
    if (ilo !== null && ihi !== null && ilo > ihi) refuse(none);
    return integerRangeEbnf(name, ilo, ihi);
  }
  try {
    return numberRangeEbnf(name, Number.isFinite(lo) ? lo : null, Number.isFinite(hi) ? hi : null);
  } catch (err) {
    if (err instanceof LoraplexError) refuse(`${at}: ${err.message} (${stated})`);
    throw err;
  }
}

/** Whether a JSON value (an enum or const member) satisfies the bounds; bounds do not apply to non-numbers. */
export function withinBounds(v: unknown, b: GivenBounds): boolean {
  if (typeof v !== 'number') return true;
  const { minimum, exclusiveMinimum, maximum, exclusiveMaximum } = b;
  return !((minimum !== undefined && v < minimum) || (exclusiveMinimum !== undefined && v <= exclusiveMinimum) || (maximum !== undefined && v > maximum) || (exclusiveMaximum !== undefined && v >= exclusiveMaximum));
}
