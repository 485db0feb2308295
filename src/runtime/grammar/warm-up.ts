/** Specs a grammar compiler compiles before it serves: the first compile pays for code paths and tables every later one uses. */
import type { GrammarSpec } from './compiler.js';

export const WARM_UP_SPECS: readonly GrammarSpec[] = [
  { type: 'json_object' },
  { type: 'json_schema', schema: JSON.stringify({ type: 'object', properties: { name: { type: 'string', maxLength: 8 }, n: { type: 'integer' }, x: { type: 'number' }, tags: { type: 'array', items: { enum: ['a', 'b'] } } }, required: ['name'] }) },
];
