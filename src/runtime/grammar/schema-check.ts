/**
 * The JSON-schema keywords constrained decoding enforces, checked before a schema is compiled. The
 * list comes from probing XGrammar 0.1.27 (a valid and an invalid instance per keyword, see
 * test/runtime/grammar.test.ts): keywords it ignores or enforces wrongly — numeric bounds other than
 * an integer's `minimum: 0` (even two-sided integer ranges: [0, 150] lets 151..159 through), `multipleOf`, `uniqueItems`, `contains`, `not`, `if`/`then`/`else`,
 * `allOf`, `oneOf`, `dependentRequired`, `patternProperties`, `propertyNames`, most `format`s —
 * are refused with an error naming the keyword and where it is, never silently dropped.
 */
import { LoraplexError } from '../../errors.js';

/** Keywords that constrain and are enforced. */
const ENFORCED = new Set([
  'type', 'enum', 'const', 'properties', 'required', 'additionalProperties', 'minProperties', 'maxProperties',
  'items', 'prefixItems', 'minItems', 'maxItems', 'minLength', 'maxLength', 'pattern', 'format', 'anyOf', '$ref', '$defs', 'definitions',
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

const MAX_NODES = 10_000;
const MAX_DEPTH = 64;

function refuse(message: string): never {
  throw new LoraplexError('invalid_grammar', message, { param: 'schema' });
}

/**
 * Throws `invalid_grammar` naming the first keyword (and its location) the decoder would not
 * enforce. Returns the schema to compile (a copy).
 */
export function checkJsonSchema(input: unknown): unknown {
  let nodes = 0;
  const depthOf = (v: unknown, d: number): void => {
    if (d > MAX_DEPTH * 2) refuse(`the schema nests deeper than ${MAX_DEPTH} subschemas`);
    if (v !== null && typeof v === 'object') for (const x of Object.values(v)) depthOf(x, d + 1);
  };
  depthOf(input, 0);
  const schema = structuredClone(input);
  const walk = (s: unknown, at: string): void => {
    if (++nodes > MAX_NODES) refuse(`the schema has more than ${MAX_NODES} subschemas`);
    if (typeof s === 'boolean') return;
    if (s === null || typeof s !== 'object' || Array.isArray(s)) refuse(`${at}: a schema must be an object or a boolean`);
    const o = s as Record<string, unknown>;
    for (const [k, v] of Object.entries(o)) {
      const here = `${at}/${k}`;
      if (ANNOTATIONS.has(k)) continue;
      if (k === 'minimum' && v === 0 && o.type === 'integer') continue;
      if (!ENFORCED.has(k)) refuse(`${here}: the JSON-schema keyword "${k}" is not supported by constrained decoding (it would not be enforced); supported: ${[...ENFORCED].join(', ')} (numeric bounds: only "minimum": 0 on integers)`);
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
          for (const [name, sub] of Object.entries(v as Record<string, unknown>)) walk(sub, `${here}/${name}`);
          break;
        case 'items':
        case 'additionalProperties':
          walk(v, here);
          break;
        case 'prefixItems':
        case 'anyOf':
          if (!Array.isArray(v) || v.length === 0) refuse(`${here}: must be a non-empty array of schemas`);
          (v as unknown[]).forEach((sub, i) => walk(sub, `${here}/${i}`));
          break;
        case '$ref':
          if (typeof v !== 'string' || !/^#(\/(\$defs|definitions)\/[^/]+)?$/.test(v)) refuse(`${here}: only local references (#, #/$defs/…, #/definitions/…) are supported`);
          break;
      }
    }
  };
  walk(schema, '#');
  return schema;
}
