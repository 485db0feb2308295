/**
 * What a chat-shaped request (chat completions, the Responses API) asks of its answer once its
 * prompt is rendered: the tool-call format the answer is parsed with, and the one grammar that
 * constrains it — the request's own (response_format, text.format, a guided_* field) or the one
 * that enforces a tool call, never both, since each constrains the whole answer.
 */
import { LoraplexError } from '../errors.js';
import type { GrammarSpec } from '../runtime/grammar/compiler.js';
import type { ToolCallFormat } from '../runtime/tool-calls/format.js';
import type { ServerContext } from './context.js';
import { toolCallFormat, toolGrammar, type ToolRequest } from './tool-fields.js';

export interface AnswerConstraint {
  /** How tool calls are read from the answer (null: no tools in play). */
  format: ToolCallFormat | null;
  grammar: GrammarSpec | null;
  /** The field a grammar error names. */
  grammarParam: string;
}

/**
 * `templateFormat` is the format the chat template shows (the operator's --tool-call-parser wins);
 * `field` names the request's own grammar field: its wire name and how an error spells it.
 */
export function answerConstraint(
  ctx: ServerContext,
  tools: ToolRequest | null,
  templateFormat: ToolCallFormat | null,
  grammar: GrammarSpec | null,
  field: { param: string; name: string },
): AnswerConstraint {
  const format = tools ? toolCallFormat(ctx.settings.toolCallParser, templateFormat) : null;
  const callGrammar = tools && format ? toolGrammar(tools, format) : null;
  if (callGrammar && grammar) {
    throw new LoraplexError('invalid_grammar', `${field.name} cannot be combined with tool_choice "required", a named function or parallel_tool_calls: false: each constrains the whole answer`, { param: field.param });
  }
  return { format, grammar: grammar ?? callGrammar, grammarParam: callGrammar ? 'tool_choice' : field.param };
}
