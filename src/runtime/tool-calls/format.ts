/**
 * How a model family writes tool calls, named as vLLM's `--tool-call-parser` names them:
 * - `hermes`: `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>`, one block per call
 *   (Hermes, Qwen2.5, Qwen3);
 * - `llama3_json`: the whole answer is `{"name": …, "parameters": {…}}` (calls separated by `;`),
 *   optionally after `<|python_tag|>` (Llama 3.1–3.3);
 * - `mistral`: `[TOOL_CALLS][{"name": …, "arguments": {…}}, …]` (Mistral v3 tokenizers).
 * The format is read from the chat template that rendered the tools, or set by the operator.
 */
export const TOOL_CALL_FORMATS = ['hermes', 'llama3_json', 'mistral'] as const;
export type ToolCallFormat = (typeof TOOL_CALL_FORMATS)[number];

/** The tool-call format a chat template asks its model for, or null when it shows none. */
export function detectToolCallFormat(templateSource: string): ToolCallFormat | null {
  if (templateSource.includes('<tool_call>')) return 'hermes';
  if (templateSource.includes('[TOOL_CALLS]')) return 'mistral';
  if (templateSource.includes('<|python_tag|>') || (templateSource.includes('<|start_header_id|>') && templateSource.includes('"parameters"'))) return 'llama3_json';
  return null;
}
