/** Public adapter names: `[A-Za-z0-9][A-Za-z0-9._-]*`, optionally with one `org/` prefix. */
import { ValidationError } from '../errors.js';

const SEGMENT = '[A-Za-z0-9][A-Za-z0-9._-]*';
const NAME = new RegExp(`^${SEGMENT}(?:/${SEGMENT})?$`);
export const MAX_NAME_LENGTH = 128;

export function isValidAdapterName(name: string): boolean {
  return name.length <= MAX_NAME_LENGTH && NAME.test(name) && !name.split('/').some((s) => s === '.' || s === '..' || s.endsWith('.'));
}

export function checkAdapterName(name: unknown, param = 'name'): string {
  if (typeof name !== 'string' || !isValidAdapterName(name)) {
    throw new ValidationError(
      `${param} ${JSON.stringify(name)} is not a valid adapter name: letters, digits, '.', '_' and '-', starting with a letter or digit, optionally one 'org/' prefix, at most ${MAX_NAME_LENGTH} characters`,
      param,
    );
  }
  return name;
}
