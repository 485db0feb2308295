/**
 * Cheap caps, checked on the HTTP thread before any expensive work: the shape of free-form JSON
 * fields (tools, tool_calls, content parts, template kwargs) and the size of prompt text against
 * the context. Each costs one pass over what the client sent, never more.
 */
import { LoraplexError, ValidationError } from '../../errors.js';

/** Nesting and size limits of a free-form JSON field. */
export interface ShapeLimits {
  maxDepth: number;
  maxNodes: number;
}

export const FREE_FORM_LIMITS: ShapeLimits = { maxDepth: 32, maxNodes: 100_000 };

/**
 * Throws a 400 naming `field` when `value` nests deeper than `maxDepth` or holds more than
 * `maxNodes` values. Iterative: a hostile nesting cannot overflow the stack.
 */
export function checkShape(value: unknown, field: string, limits: ShapeLimits = FREE_FORM_LIMITS): void {
  const stack: [object, number][] = [];
  let nodes = 1;
  if (value !== null && typeof value === 'object') stack.push([value, 1]);
  while (stack.length > 0) {
    const [v, depth] = stack.pop()!;
    if (depth > limits.maxDepth) throw new ValidationError(`${field} is nested more than ${limits.maxDepth} levels deep`, field);
    const children = Array.isArray(v) ? v : Object.values(v);
    nodes += children.length;
    if (nodes > limits.maxNodes) throw new ValidationError(`${field} holds more than ${limits.maxNodes} values`, field);
    for (const child of children) if (child !== null && typeof child === 'object') stack.push([child, depth + 1]);
  }
}

/**
 * The prompt texts of a request body by route (chat: the messages together; completions: each
 * prompt; TGI: inputs), each checked with checkPromptBytes. Used where the body is parsed, so that
 * a huge prompt is refused before the body is handed on.
 */
export function checkBodyPrompts(route: string, body: unknown, maxPositions: number, maxTokenBytes: number): void {
  if (body === null || typeof body !== 'object') return;
  const b = body as { messages?: unknown; prompt?: unknown; inputs?: unknown };
  const bytes = (v: unknown): number => (typeof v === 'string' ? Buffer.byteLength(v) : 0);
  if (route === '/v1/chat/completions' && Array.isArray(b.messages)) {
    let total = 0;
    for (const m of b.messages) {
      const c = (m as { content?: unknown } | null)?.content;
      total += Array.isArray(c) ? c.reduce((n: number, p) => n + bytes((p as { text?: unknown } | null)?.text), 0) : bytes(c);
    }
    checkPromptBytes(total, maxPositions, maxTokenBytes, 'messages');
  } else if (route === '/v1/completions') {
    const prompts = Array.isArray(b.prompt) ? b.prompt : [b.prompt];
    prompts.forEach((p, i) => checkPromptBytes(bytes(p), maxPositions, maxTokenBytes, Array.isArray(b.prompt) ? `prompt[${i}]` : 'prompt'));
  } else if (route === '/v1/responses') {
    const r = body as { input?: unknown; instructions?: unknown };
    let total = bytes(r.instructions);
    const content = (c: unknown): number => (Array.isArray(c) ? c.reduce((n: number, p) => n + bytes((p as { text?: unknown } | null)?.text), 0) : bytes(c));
    if (typeof r.input === 'string') total += bytes(r.input);
    else if (Array.isArray(r.input)) for (const item of r.input) total += content((item as { content?: unknown } | null)?.content) + content((item as { output?: unknown } | null)?.output);
    checkPromptBytes(total, maxPositions, maxTokenBytes, 'input');
  } else if (route === '/generate' || route === '/generate_stream') {
    checkPromptBytes(bytes(b.inputs), maxPositions, maxTokenBytes, 'inputs');
  }
}

/**
 * Refuses prompt text that cannot fit the context whatever its tokens: `bytes` of text are at
 * least bytes / maxTokenBytes tokens (a margin of 2 covers normalizers that shorten the text).
 */
export function checkPromptBytes(bytes: number, maxPositions: number, maxTokenBytes: number, param: string): void {
  const limit = 2 * maxPositions * Math.max(1, maxTokenBytes);
  if (bytes > limit) {
    throw new LoraplexError(
      'context_length_exceeded',
      `the prompt is ${bytes} bytes of text, at least ${Math.ceil(bytes / (2 * maxTokenBytes))} tokens, more than the context length of ${maxPositions}`,
      { param },
    );
  }
}
