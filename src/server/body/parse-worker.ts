/**
 * The JSON body thread (see json-body.ts): parses large request bodies off the HTTP event loop and
 * refuses, before they are ever copied back, bodies that nest too deep or whose prompt cannot fit
 * the context.
 */
import { LoraplexError } from '../../errors.js';
import { lowerThreadPriority, serve } from '../../util/worker-task.js';
import { checkBodyPrompts } from '../prompt/limits.js';
import type { ParseTask, ParseTasks } from './json-body.js';

lowerThreadPriority();

serve<ParseTasks>({ parse });

function parse(t: ParseTask): unknown {
  let value: unknown;
  try {
    value = JSON.parse(Buffer.from(t.bytes).toString('utf8'));
  } catch (err) {
    throw new LoraplexError('bad_request', `the body is not valid JSON: ${(err as Error).message}`);
  }
  const stack: [unknown, number][] = [[value, 1]];
  while (stack.length > 0) {
    const [v, depth] = stack.pop()!;
    if (v === null || typeof v !== 'object') continue;
    if (depth > t.maxDepth) throw new LoraplexError('invalid_parameter', `the body nests more than ${t.maxDepth} levels deep`);
    for (const c of Array.isArray(v) ? v : Object.values(v)) if (c !== null && typeof c === 'object') stack.push([c, depth + 1]);
  }
  if (t.limits) checkBodyPrompts(t.route, value, t.limits.maxPositions, t.limits.maxTokenBytes);
  return value;
}
