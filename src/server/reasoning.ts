/**
 * Thinking in chat answers, the same for every chat-shaped route (chat completions, the Responses
 * API, Messages): whether an answer's `<think>` block is split from it, and how thinking meets a grammar.
 *
 * Decision: a grammar (response_format, text.format, output_config.format, a guided_* field, or a
 * tool choice that forces a call) constrains the answer from its first token, so a constrained
 * request is rendered with thinking off (`enable_thinking: false`, which Qwen3's template turns
 * into an empty, closed block) and the grammar applies to the answer alone. A request that asks for thinking and a
 * grammar together is refused by name, and so is one whose template opens a thinking block the
 * grammar would have to fill.
 */
import { ValidationError } from '../errors.js';
import type { ReasoningParser } from '../runtime/reasoning/think-split.js';
import type { ChatPrompt } from './prompt/tasks.js';
import type { ToolRequest } from './tool-fields.js';

/** How an answer's thinking is split from it (null: not split; the thinking, if any, stays in the text). */
export interface Thinking {
  /** The prompt ended inside an open thinking block. */
  insideThinking: boolean;
}

/** The split for an answer to this prompt under --reasoning-parser. */
export function answerThinking(parser: ReasoningParser, reasoning: ChatPrompt['reasoning']): Thinking | null {
  if (parser === 'none' || (parser === 'auto' && !reasoning.templateThinks)) return null;
  return { insideThinking: reasoning.insideThinking };
}

/** True when a grammar will constrain the whole answer: the request's own, or one that enforces a tool call. */
export function answerConstrained(grammar: unknown, tools: ToolRequest | null): boolean {
  return grammar != null || (tools !== null && !(tools.choice === 'auto' && tools.parallel));
}

/**
 * The template variables a request renders with: thinking is turned off when a grammar constrains
 * the answer; asking for it then is refused. `param` names the grammar's field in errors.
 */
export function thinkingKwargs(kwargs: Record<string, unknown> | null, constrained: boolean, param: string, thinkParam = 'chat_template_kwargs.enable_thinking'): Record<string, unknown> | null {
  if (!constrained) return kwargs;
  if (kwargs?.enable_thinking === true) {
    throw new ValidationError(`${thinkParam} cannot be combined with ${param}: the grammar constrains the answer from its first token, so thinking is off for constrained answers`, thinkParam);
  }
  return { ...kwargs, enable_thinking: false };
}

/** After rendering: a constrained answer must not start inside a thinking block (the grammar would constrain the thinking). */
export function checkConstrainedPrompt(reasoning: ChatPrompt['reasoning'], constrained: boolean, param: string): void {
  if (constrained && reasoning.insideThinking) {
    throw new ValidationError(`${param} cannot be used with this model: its chat template opens a thinking block the answer must continue, and the grammar would constrain the thinking`, param);
  }
}
