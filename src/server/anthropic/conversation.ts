/**
 * Anthropic's Messages request → the chat conversation every other route renders: `system` and
 * the turns become OpenAI-shaped chat messages (then checked by chatMessages like any other),
 * client tools become function tools and `tool_choice` its OpenAI equivalent, and `thinking` the
 * template's `enable_thinking`.
 *
 * Blocks: a user turn holds text and tool_result blocks (each result a `tool` message, in order);
 * an assistant turn holds thinking, text and tool_use blocks (one assistant message: thinking as
 * reasoning_content, tool uses as tool_calls). Images, documents, server tools and redacted
 * thinking are refused by name, as is a last assistant turn (a prefill, which is not supported).
 * `cache_control` marks are accepted: every prompt prefix is cached here without being asked.
 */
import { UnsupportedError, ValidationError } from '../../errors.js';
import type { chatMessages } from '../requests.js';

type WireMessage = Parameters<typeof chatMessages>[0][number];
type Block = { type: string; [k: string]: unknown };

const bad = (message: string, param: string): never => {
  throw new ValidationError(message, param);
};

/** A block's string field, checked. */
function stringField(b: Block, field: string, at: string): string {
  const v = b[field];
  return typeof v === 'string' ? v : bad(`${at}.${field} must be a string`, `${at}.${field}`);
}

/** The text of a string or of text blocks (tool_result content, system). */
function textOf(content: unknown, at: string): string {
  if (typeof content === 'string') return content;
  if (content == null) return '';
  if (!Array.isArray(content)) return bad(`${at} must be a string or a list of text blocks`, at);
  return content
    .map((b: Block, i) => {
      if (b?.type !== 'text') throw new UnsupportedError(`${at}[${i}] is a ${JSON.stringify(b?.type)} block; only text blocks are supported here`, `${at}[${i}].type`);
      if (typeof b.text !== 'string') bad(`${at}[${i}].text must be a string`, `${at}[${i}].text`);
      return b.text as string;
    })
    .join('');
}

export function systemMessage(system: unknown): WireMessage[] {
  if (system == null) return [];
  const text = textOf(system, 'system');
  return text ? [{ role: 'system', content: text }] : [];
}

function userTurn(content: string | Block[], at: string, out: WireMessage[]): void {
  if (typeof content === 'string') {
    out.push({ role: 'user', content });
    return;
  }
  let text: string[] = [];
  const flush = (): void => {
    if (text.length > 0) out.push({ role: 'user', content: text.join('\n') });
    text = [];
  };
  content.forEach((b, i) => {
    const bAt = `${at}.content[${i}]`;
    switch (b.type) {
      case 'text':
        text.push(stringField(b, 'text', bAt));
        break;
      case 'tool_result': {
        if (typeof b.tool_use_id !== 'string' || !b.tool_use_id) bad(`${bAt}.tool_use_id is required`, `${bAt}.tool_use_id`);
        if (b.is_error != null && typeof b.is_error !== 'boolean') bad(`${bAt}.is_error must be a boolean`, `${bAt}.is_error`);
        flush();
        const result = textOf(b.content, `${bAt}.content`);
        // The template has no error flag: a failed call's result says so in its text.
        out.push({ role: 'tool', tool_call_id: b.tool_use_id as string, content: b.is_error === true ? `Error: ${result}` : result });
        break;
      }
      case 'tool_use':
      case 'thinking':
        bad(`${bAt} is a ${b.type} block, which only assistant turns hold`, `${bAt}.type`);
        break;
      default:
        throw new UnsupportedError(`${bAt} is a ${JSON.stringify(b.type)} block; user turns may hold text and tool_result blocks (images and documents are not supported)`, `${bAt}.type`);
    }
  });
  flush();
}

function assistantTurn(content: string | Block[], at: string, out: WireMessage[]): void {
  if (typeof content === 'string') {
    out.push({ role: 'assistant', content });
    return;
  }
  const text: string[] = [];
  const thinking: string[] = [];
  const calls: unknown[] = [];
  content.forEach((b, i) => {
    const bAt = `${at}.content[${i}]`;
    switch (b.type) {
      case 'text':
        text.push(stringField(b, 'text', bAt));
        break;
      case 'thinking':
        thinking.push(stringField(b, 'thinking', bAt));
        break;
      case 'tool_use': {
        if (typeof b.id !== 'string' || !b.id) bad(`${bAt}.id is required`, `${bAt}.id`);
        if (typeof b.name !== 'string' || !b.name) bad(`${bAt}.name is required`, `${bAt}.name`);
        const input = b.input ?? {};
        if (typeof input !== 'object' || Array.isArray(input)) bad(`${bAt}.input must be an object`, `${bAt}.input`);
        calls.push({ id: b.id, type: 'function', function: { name: b.name, arguments: JSON.stringify(input) } });
        break;
      }
      case 'redacted_thinking':
        throw new UnsupportedError(`${bAt}: redacted thinking cannot be read back (this server never redacts); send the thinking block's text`, `${bAt}.type`);
      default:
        throw new UnsupportedError(`${bAt} is a ${JSON.stringify(b.type)} block; assistant turns may hold thinking, text and tool_use blocks`, `${bAt}.type`);
    }
  });
  out.push({
    role: 'assistant',
    content: calls.length > 0 && text.length === 0 ? null : text.join(''),
    ...(calls.length > 0 ? { tool_calls: calls } : {}),
    ...(thinking.length > 0 ? { reasoning_content: thinking.join('\n') } : {}),
  });
}

/** The whole conversation in OpenAI's chat wire form. */
export function conversation(system: unknown, messages: { role: 'user' | 'assistant'; content: string | Block[] }[]): WireMessage[] {
  const out = systemMessage(system);
  messages.forEach((m, i) => {
    const at = `messages[${i}]`;
    if (m.role === 'user') userTurn(m.content, at, out);
    else {
      if (i === messages.length - 1) throw new UnsupportedError(`${at}: a last assistant turn (prefilling the reply) is not supported; end the conversation with a user turn`, at);
      assistantTurn(m.content, at, out);
    }
  });
  return out;
}

/** Anthropic client tools as function tools (chat's wire form). */
export function functionTools(tools: unknown): unknown[] | null {
  if (tools == null) return null;
  if (!Array.isArray(tools)) return bad('tools must be an array', 'tools');
  return tools.map((t: { type?: unknown; name?: unknown; description?: unknown; input_schema?: unknown }, i) => {
    const at = `tools[${i}]`;
    if (t === null || typeof t !== 'object' || Array.isArray(t)) return bad(`${at} must be an object`, at);
    if (t.type != null && t.type !== 'custom') throw new UnsupportedError(`${at} is a ${JSON.stringify(t.type)} tool; only client tools ({name, description, input_schema}) are supported`, `${at}.type`);
    if (t.input_schema == null) bad(`${at}.input_schema is required`, `${at}.input_schema`);
    return { type: 'function', function: { name: t.name, ...(t.description != null ? { description: t.description } : {}), parameters: t.input_schema } };
  });
}

/** Anthropic's tool_choice as OpenAI's tool_choice and parallel_tool_calls. */
export function toolChoice(choice: unknown): { toolChoice: unknown; parallel: boolean | null } {
  if (choice == null) return { toolChoice: null, parallel: null };
  const c = choice as { type?: unknown; name?: unknown; disable_parallel_tool_use?: unknown };
  if (typeof choice !== 'object' || Array.isArray(choice)) return bad('tool_choice must be an object: {"type": "auto" | "any" | "tool" | "none"}', 'tool_choice');
  if (c.disable_parallel_tool_use != null && typeof c.disable_parallel_tool_use !== 'boolean') bad('tool_choice.disable_parallel_tool_use must be a boolean', 'tool_choice.disable_parallel_tool_use');
  const parallel = c.disable_parallel_tool_use === true ? false : null;
  switch (c.type) {
    case 'auto':
      return { toolChoice: 'auto', parallel };
    case 'any':
      return { toolChoice: 'required', parallel };
    case 'tool':
      if (typeof c.name !== 'string') bad('tool_choice.name is required with type "tool"', 'tool_choice.name');
      return { toolChoice: { type: 'function', function: { name: c.name } }, parallel };
    case 'none':
      return { toolChoice: 'none', parallel: null };
    default:
      return bad(`tool_choice.type must be "auto", "any", "tool" or "none", not ${JSON.stringify(c.type ?? null)}`, 'tool_choice.type');
  }
}

/**
 * `thinking` as the template's enable_thinking (null: the template decides). Anthropic's rule for
 * budget_tokens holds (at least 1024, below max_tokens); the budget itself is not enforced apart
 * from max_tokens, which bounds thinking and answer together. `display: "omitted"` is the route's
 * (thinkingOmitted).
 */
export function thinkingSwitch(thinking: unknown, maxTokens: number | null): boolean | null {
  if (thinking == null) return null;
  const t = thinking as { type?: unknown; budget_tokens?: unknown; display?: unknown };
  if (typeof thinking !== 'object' || Array.isArray(thinking)) return bad('thinking must be an object: {"type": "enabled", "budget_tokens"} or {"type": "disabled"}', 'thinking');
  if (t.display != null && t.display !== 'summarized' && t.display !== 'omitted') bad(`thinking.display must be "summarized" or "omitted", not ${JSON.stringify(t.display)}`, 'thinking.display');
  switch (t.type) {
    case 'enabled': {
      const b = t.budget_tokens;
      if (typeof b !== 'number' || !Number.isInteger(b) || b < 1024) bad('thinking.budget_tokens must be an integer of at least 1024', 'thinking.budget_tokens');
      if (maxTokens !== null && (b as number) >= maxTokens) bad(`thinking.budget_tokens (${b}) must be less than max_tokens (${maxTokens})`, 'thinking.budget_tokens');
      return true;
    }
    case 'disabled':
      return false;
    case 'adaptive':
      return null;
    case 'between_tools':
      throw new UnsupportedError('thinking.type "between_tools" is not supported: the template decides where the model thinks; use "enabled", "disabled" or "adaptive"', 'thinking.type');
    default:
      return bad(`thinking.type must be "enabled", "disabled" or "adaptive", not ${JSON.stringify(t.type ?? null)}`, 'thinking.type');
  }
}

/** `thinking.display: "omitted"`: thinking blocks are sent without their text. */
export function thinkingOmitted(thinking: unknown): boolean {
  return (thinking as { display?: unknown } | null)?.display === 'omitted';
}
