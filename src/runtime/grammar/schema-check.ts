/**
 * The JSON-schema keywords constrained decoding enforces, checked before a schema is compiled. The
 * list comes from probing XGrammar 0.1.27 (a valid and an invalid instance per keyword, see
 * test/runtime/grammar.test.ts): keywords it ignores or enforces wrongly — `multipleOf`,
 * `uniqueItems`, `contains`, `not`, `if`/`then`/`else`, `allOf`, `oneOf`, `dependentRequired`,
 * `patternProperties`, `propertyNames`, most `format`s — are refused with an error naming the
 * keyword and where it is, never silently dropped.
 *
 * Numeric bounds (`minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum`) XGrammar gets
 * wrong too (even two-sided integer ranges: [0, 150] lets 151..159 through), so a bounded number
 * is replaced by a placeholder `{"const": sentinel}` and its range is returned as our own EBNF
 * rule (numeric-range.ts), which the compiler puts where XGrammar wrote the placeholder.
 *
 * A `required` name that `properties` does not declare XGrammar ignores (the object is written
 * without it), so such a name is declared before compiling (declareRequired).
 *
 * Beside `enum`, `const`, `anyOf` or `$ref`, XGrammar ignores every other keyword of the same
 * subschema (`{"type": "string", "enum": [1, "a"]}` lets 1 through), so `type` beside `enum` or
 * `const` is applied here (members of other types dropped) and any other constraining keyword
 * there is refused (checkSiblings).
 */
import { createHmac, randomBytes } from 'node:crypto';
import { LoraplexError } from '../../errors.js';
import { BOUND_KEYWORDS, boundsRangeEbnf, readBounds, withinBounds } from './numeric-range.js';

/** Keywords that constrain and are enforced. */
const ENFORCED = new Set([
  'type', 'enum', 'const', 'properties', 'required', 'additionalProperties', 'minProperties', 'maxProperties',
  'items', 'prefixItems', 'minItems', 'maxItems', 'minLength', 'maxLength', 'pattern', 'format', 'anyOf', '$ref', '$defs', 'definitions',
  ...BOUND_KEYWORDS,
]);
/** Keywords that do not constrain output (annotations). */
const ANNOTATIONS = new Set(['title', 'description', 'default', 'examples', '$schema', '$id', '$comment', 'deprecated', 'readOnly', 'writeOnly', 'strict']);
/**
 * String formats whose grammar matches the format exactly (random walks over Qwen3's vocabulary,
 * checked by ajv-formats). Refused: date (accepts April 31), time and date-time (minute or second
 * 60), ipv4 (leading zeros), and email, hostname and uri, which were not verified.
 */
const FORMATS = new Set(['duration', 'uuid', 'ipv6']);
const TYPES = new Set(['object', 'array', 'string', 'integer', 'number', 'boolean', 'null']);

/**
 * A JSON string's characters as XGrammar may write them: no quote, backslash or control character
 * (XGrammar writes the characters a `pattern` or a length-bounded string allows as they are, so
 * those would break the JSON), no escapes.
 */
const SAFE_CHAR = '[^\\x00-\\x1f"\\\\]';

/**
 * Refuses a `pattern` that could match a quote, a backslash or a control character: `.`, negated
 * classes, `\s`/`\S`/`\W`/`\D`, escapes by code, ranges that span 0x00–0x1f, `"` or `\`.
 */
function checkPattern(p: string, at: string): void {
  const unsafe = (what: string): never => refuse(`${at}: the pattern ${JSON.stringify(p)} may match ${what}, which constrained decoding would write unescaped into the JSON; use classes that exclude quotes, backslashes and control characters`);
  const bad = (c: number): boolean => c < 0x20 || c === 0x22 || c === 0x5c;
  let inClass = false;
  let prev = -1;
  for (let i = 0; i < p.length; i++) {
    const ch = p[i];
    if (ch === '\\') {
      const e = p[++i];
      if (e === undefined) unsafe('a backslash');
      if ('sSWDPpxuUcbn0trfv'.includes(e)) unsafe(`any character (\\${e})`);
      if (e === '"' || e === '\\') unsafe(`"${e}"`);
      prev = e === 'd' || e === 'w' ? -1 : e.charCodeAt(0);
      continue;
    }
    if (inClass) {
      if (ch === ']') inClass = false;
      else if (ch === '-' && prev >= 0 && i + 1 < p.length && p[i + 1] !== ']') {
        const hi = p[i + 1] === '\\' ? p.charCodeAt(i + 2) : p.charCodeAt(i + 1);
        for (let c = prev; c <= hi; c++) if (bad(c)) unsafe(`the characters from ${JSON.stringify(String.fromCharCode(prev))} to ${JSON.stringify(String.fromCharCode(hi))}`);
      } else {
        if (bad(ch.charCodeAt(0))) unsafe(JSON.stringify(ch));
        prev = ch.charCodeAt(0);
      }
      continue;
    }
    if (ch === '[') {
      if (p[i + 1] === '^') unsafe('any character outside a negated class');
      inClass = true;
      prev = -1;
    } else if (ch === '.') unsafe('any character (.)');
    else if (bad(ch.charCodeAt(0))) unsafe(JSON.stringify(ch));
  }
}

/**
 * Keys the placeholders' nonce: a digest of the schema under a per-process secret, so no schema
 * can contain its own placeholders, and one schema always gives the same grammar text (which
 * XGrammar's compile cache keys by).
 */
const NONCE_KEY = randomBytes(32);

const MAX_NODES = 10_000;
const MAX_DEPTH = 64;

function refuse(message: string): never {
  throw new LoraplexError('invalid_grammar', message, { param: 'schema' });
}

/** A bounded number in a checked schema: the placeholder's string, and the rule that replaces it. */
export interface NumericRange {
  /** The placeholder's const string (ASCII letters and digits); XGrammar writes it as the literal `"\"<sentinel>\""`. */
  sentinel: string;
  /** The rule's name. */
  rule: string;
  /** The rule (`<rule> ::= …`). */
  ebnf: string;
  /** Where the bounds were (`#/properties/age`). */
  at: string;
  /** Inside `$defs`/`definitions`: XGrammar writes it only if something references it. */
  inDefinition: boolean;
}

export interface CheckedSchema {
  /** The schema to compile (a copy, rewritten). */
  schema: unknown;
  ranges: NumericRange[];
}

/**
 * Rewrites a subschema with numeric bounds, in place. With `enum`/`const` the bounds drop the
 * members outside them (a const outside them is refused). Otherwise the subschema must have a
 * numeric type and nothing else that constrains: its numeric part becomes a placeholder (a type
 * list keeps its other types in an anyOf branch), and its range is added to `ranges`.
 */
function rewriteBounds(o: Record<string, unknown>, at: string, inDefinition: boolean, ranges: NumericRange[], nonce: string): void {
  const bounds = readBounds(o, at);
  const stated = Object.entries(bounds).map(([k, v]) => `"${k}": ${v}`).join(', ');
  if (o.enum !== undefined || o.const !== undefined) {
    if (o.const !== undefined && !withinBounds(o.const, bounds)) refuse(`${at}: "const" ${JSON.stringify(o.const)} does not satisfy ${stated}, so nothing does`);
    if (Array.isArray(o.enum)) {
      o.enum = o.enum.filter((v) => withinBounds(v, bounds));
      if ((o.enum as unknown[]).length === 0) refuse(`${at}: no member of "enum" satisfies ${stated}`);
    }
    for (const k of BOUND_KEYWORDS) delete o[k];
    return;
  }
  const types = o.type === undefined ? [] : Array.isArray(o.type) ? (o.type as unknown[]) : [o.type];
  for (const t of types) if (typeof t !== 'string' || !TYPES.has(t)) refuse(`${at}/type: unknown type ${JSON.stringify(t)}`);
  const kind = types.includes('number') ? 'number' : types.includes('integer') ? 'integer' : null;
  const keyword = BOUND_KEYWORDS.find((k) => o[k] !== undefined)!;
  if (kind === null) refuse(`${at}/${keyword}: numeric bounds are enforced only with "type": "integer" or "number" (or a type list holding one)`);
  // Definitions beside the bounds stay (references elsewhere may point into them).
  const kept = new Set(['$defs', 'definitions']);
  for (const k of Object.keys(o))
    if (k !== 'type' && !kept.has(k) && !ANNOTATIONS.has(k) && !(BOUND_KEYWORDS as readonly string[]).includes(k))
      refuse(`${at}/${k}: numeric bounds can be combined with "type" and annotations only (constrained decoding writes the bounded number with its own rule); give each type its own anyOf branch`);
  const i = ranges.length;
  const range: NumericRange = { sentinel: `LPX${nonce}N${i}`, rule: `lpx_${nonce}_n${i}`, ebnf: '', at, inDefinition };
  range.ebnf = boundsRangeEbnf(range.rule, kind === 'integer', bounds, at);
  ranges.push(range);
  for (const k of Object.keys(o)) if (!kept.has(k)) delete o[k];
  const others = types.filter((t) => t !== 'integer' && t !== 'number');
  if (others.length === 0) o.const = range.sentinel;
  else o.anyOf = [{ const: range.sentinel }, { type: others }];
}

/** Whether `v` is an instance of the JSON-schema type `t`. */
function isOfType(v: unknown, t: unknown): boolean {
  switch (t) {
    case 'integer':
      return Number.isInteger(v);
    case 'number':
      return typeof v === 'number';
    case 'string':
    case 'boolean':
      return typeof v === t;
    case 'null':
      return v === null;
    case 'array':
      return Array.isArray(v);
    case 'object':
      return v !== null && typeof v === 'object' && !Array.isArray(v);
    default:
      return false;
  }
}

/**
 * Applies or refuses, in place, the keywords beside `enum`/`const`/`anyOf`/`$ref` (which XGrammar
 * would ignore): `type` beside `enum` drops the members of other types (beside `const`, a const of
 * another type is refused); any other constraining keyword there is refused, naming it.
 */
function checkSiblings(o: Record<string, unknown>, at: string): void {
  const constrains = (k: string): boolean => !ANNOTATIONS.has(k) && k !== '$defs' && k !== 'definitions';
  const values = o.enum !== undefined ? 'enum' : o.const !== undefined ? 'const' : null;
  if (values !== null) {
    for (const k of Object.keys(o))
      if (constrains(k) && k !== values && k !== 'type')
        refuse(`${at}/${k}: beside "${values}" constrained decoding enforces only "type" ("${k}" would be ignored); list only the values that satisfy it`);
    if (o.type === undefined) return;
    const types = Array.isArray(o.type) ? (o.type as unknown[]) : [o.type];
    for (const t of types) if (typeof t !== 'string' || !TYPES.has(t)) refuse(`${at}/type: unknown type ${JSON.stringify(t)}`);
    const fits = (v: unknown): boolean => types.some((t) => isOfType(v, t));
    if (values === 'const' && !fits(o.const)) refuse(`${at}: "const" ${JSON.stringify(o.const)} is not of "type" ${JSON.stringify(o.type)}, so nothing satisfies the schema`);
    if (values === 'enum' && Array.isArray(o.enum)) {
      o.enum = o.enum.filter(fits);
      if ((o.enum as unknown[]).length === 0) refuse(`${at}: no member of "enum" is of "type" ${JSON.stringify(o.type)}, so nothing satisfies the schema`);
    }
    return;
  }
  for (const key of ['anyOf', '$ref'])
    if (o[key] !== undefined)
      for (const k of Object.keys(o))
        if (constrains(k) && k !== key)
          refuse(`${at}/${k}: beside "${key}" constrained decoding ignores "${k}"; move it into ${key === 'anyOf' ? 'each anyOf branch' : 'the referenced schema'}`);
}

/**
 * Declares, in place, each name in `required` that `properties` does not: XGrammar writes only
 * declared properties, so it would leave such a name out. In JSON Schema an undeclared property
 * is governed by `additionalProperties`, so declaring it with that schema (`{}`, anything, when
 * absent or true) gives the same schema, and XGrammar then writes it. With
 * `"additionalProperties": false` no object satisfies the schema, which is refused.
 */
function declareRequired(o: Record<string, unknown>, at: string): void {
  const required = o.required;
  if (!Array.isArray(required) || required.some((n) => typeof n !== 'string')) refuse(`${at}/required: must be an array of property names`);
  const props = o.properties ?? {};
  if (props === null || typeof props !== 'object' || Array.isArray(props)) return; // the walk refuses it, naming it
  const extra = o.additionalProperties ?? true;
  for (const name of required as string[]) {
    if (Object.hasOwn(props, name)) continue;
    o.properties = props;
    if (extra === false)
      refuse(`${at}/required: ${JSON.stringify(name)} is required but not declared in "properties", and "additionalProperties": false forbids it, so no object satisfies the schema; declare it in "properties"`);
    // defineProperty: a name such as "__proto__" must become a property, not a prototype.
    Object.defineProperty(props, name, { value: extra === true ? {} : structuredClone(extra), enumerable: true, writable: true, configurable: true });
  }
}

/**
 * Throws `invalid_grammar` naming the first keyword (and its location) the decoder would not
 * enforce. Returns the schema to compile (a copy) and its numeric ranges, whose placeholders carry
 * a nonce no text in the schema can contain.
 */
export function checkJsonSchema(input: unknown): CheckedSchema {
  let nodes = 0;
  const depthOf = (v: unknown, d: number): void => {
    if (d > MAX_DEPTH * 2) refuse(`the schema nests deeper than ${MAX_DEPTH} subschemas`);
    if (v !== null && typeof v === 'object') for (const x of Object.values(v)) depthOf(x, d + 1);
  };
  depthOf(input, 0);
  const schema = structuredClone(input);
  const ranges: NumericRange[] = [];
  const nonce = createHmac('sha256', NONCE_KEY).update(JSON.stringify(input)).digest('hex').slice(0, 12);
  const walk = (s: unknown, at: string, inDefinition = false): void => {
    if (++nodes > MAX_NODES) refuse(`the schema has more than ${MAX_NODES} subschemas`);
    if (typeof s === 'boolean') return;
    if (s === null || typeof s !== 'object' || Array.isArray(s)) refuse(`${at}: a schema must be an object or a boolean`);
    const o = s as Record<string, unknown>;
    if (BOUND_KEYWORDS.some((k) => o[k] !== undefined)) rewriteBounds(o, at, inDefinition, ranges, nonce);
    checkSiblings(o, at);
    if (typeof o.pattern === 'string') checkPattern(o.pattern, `${at}/pattern`);
    if (o.required !== undefined) declareRequired(o, at);
    if (o.minLength !== undefined || o.maxLength !== undefined) {
      // Rewritten as a pattern of JSON-safe characters (XGrammar's own length rule lets control characters through).
      if (o.pattern !== undefined) refuse(`${at}: "pattern" cannot be combined with "minLength"/"maxLength" by constrained decoding; put the length into the pattern`);
      const min = o.minLength ?? 0;
      const max = o.maxLength;
      if (!Number.isInteger(min) || (min as number) < 0 || (max !== undefined && (!Number.isInteger(max) || (max as number) < (min as number)))) refuse(`${at}: minLength/maxLength must be integers with 0 <= minLength <= maxLength`);
      o.pattern = `^${SAFE_CHAR}{${min},${max ?? ''}}$`;
      delete o.minLength;
      delete o.maxLength;
    }
    for (const [k, v] of Object.entries(o)) {
      const here = `${at}/${k}`;
      if (ANNOTATIONS.has(k)) continue;
      if (!ENFORCED.has(k)) refuse(`${here}: the JSON-schema keyword "${k}" is not supported by constrained decoding (it would not be enforced); supported: ${[...ENFORCED].join(', ')}`);
      switch (k) {
        case 'type':
          for (const t of Array.isArray(v) ? v : [v]) if (typeof t !== 'string' || !TYPES.has(t)) refuse(`${here}: unknown type ${JSON.stringify(t)}`);
          break;
        case 'format':
          if (typeof v !== 'string' || !FORMATS.has(v)) refuse(`${here}: the string format ${JSON.stringify(v)} is not supported by constrained decoding (it would not be enforced exactly); supported: ${[...FORMATS].join(', ')}; use "pattern" instead`);
          break;
        case 'properties':
        case '$defs':
        case 'definitions':
          if (v === null || typeof v !== 'object' || Array.isArray(v)) refuse(`${here}: must be an object of schemas`);
          for (const [name, sub] of Object.entries(v as Record<string, unknown>)) walk(sub, `${here}/${name}`, inDefinition || k !== 'properties');
          break;
        case 'items':
        case 'additionalProperties':
          walk(v, here, inDefinition);
          break;
        case 'prefixItems':
        case 'anyOf':
          if (!Array.isArray(v) || v.length === 0) refuse(`${here}: must be a non-empty array of schemas`);
          (v as unknown[]).forEach((sub, i) => walk(sub, `${here}/${i}`, inDefinition));
          break;
        case '$ref':
          if (typeof v !== 'string' || !/^#(\/(\$defs|definitions)\/[^/]+)?$/.test(v)) refuse(`${here}: only local references (#, #/$defs/…, #/definitions/…) are supported`);
          break;
      }
    }
  };
  walk(schema, '#');
  return { schema, ranges };
}
