/**
 * The request fields of tool calling — `tools`, `tool_choice`, `parallel_tool_calls` — checked as
 * OpenAI checks them, and what they ask of the answer: the tools rendered into the prompt, the
 * format the answer is parsed with, and the grammar that enforces a call (`required`, a named
 * function, or one call at most). Chat spells a tool `{type, function: {name, description,
 * parameters}}` and a named choice `{type, function: {name}}`; the Responses API flattens both
 * (`{type, name, parameters}`, `{type, name}`).
 */
import { randomBytes } from 'node:crypto';
import { UnsupportedError, ValidationError } from '../errors.js';
import type { ToolGrammarSpec } from '../runtime/grammar/tool-grammar.js';
import type { ToolCallFormat } from '../runtime/tool-calls/format.js';
import type { ParsedToolCall } from '../runtime/tool-calls/parser.js';
import { MAX_SCHEMA_BYTES } from './grammar-fields.js';

export const MAX_TOOLS = 128;
const NAME = /^[a-zA-Z0-9_-]{1,64}$/;

/** Tools in play for one request (none when `tool_choice` is "none" or no tools were given). */
export interface ToolRequest {
  /** The tools as chat templates take them: `{type: "function", function: {name, description, parameters}}`. */
  templateTools: unknown[];
  names: string[];
  /** `auto`: the model decides; `required`: at least one call; a name: exactly that call. */
  choice: 'auto' | 'required' | { name: string };
  parallel: boolean;
  /** Each tool's parameter schema as JSON text (null: none given). */
  parameters: (string | null)[];
  /** Where each tool's schema is in the request, for errors. */
  params: string[];
}

export type ToolWire = 'chat' | 'responses';

interface WireTool {
  type?: unknown;
  name?: unknown;
  description?: unknown;
  parameters?: unknown;
  strict?: unknown;
  function?: { name?: unknown; description?: unknown; parameters?: unknown; strict?: unknown };
}

const bad = (message: string, param: string): never => {
  throw new ValidationError(message, param);
};

function checkTool(t: WireTool, i: number, wire: ToolWire): { name: string; description: unknown; parameters: unknown; param: string } {
  const at = `tools[${i}]`;
  if (t === null || typeof t !== 'object' || Array.isArray(t)) bad(`${at} must be an object`, at);
  if (t.type !== 'function') bad(`${at}.type must be "function" (only function tools are supported), not ${JSON.stringify(t.type ?? null)}`, `${at}.type`);
  const f = wire === 'chat' ? t.function : t;
  const fAt = wire === 'chat' ? `${at}.function` : at;
  if (f === null || typeof f !== 'object') return bad(`${fAt} is required`, fAt);
  if (typeof f.name !== 'string' || !NAME.test(f.name)) bad(`${fAt}.name must be 1 to 64 letters, digits, underscores or dashes`, `${fAt}.name`);
  if (f.description != null && typeof f.description !== 'string') bad(`${fAt}.description must be a string`, `${fAt}.description`);
  const parameters = f.parameters ?? null;
  if (parameters !== null && (typeof parameters !== 'object' || Array.isArray(parameters))) bad(`${fAt}.parameters must be a JSON schema (an object)`, `${fAt}.parameters`);
  return { name: f.name as string, description: f.description, parameters, param: `${fAt}.parameters` };
}

/** Checks the tool fields; null when no tool is in play. */
export function toolRequest(tools: unknown, toolChoice: unknown, parallelToolCalls: unknown, wire: ToolWire): ToolRequest | null {
  if (tools != null && !Array.isArray(tools)) bad('tools must be an array', 'tools');
  const list = (tools ?? []) as WireTool[];
  if (list.length > MAX_TOOLS) bad(`at most ${MAX_TOOLS} tools may be given, not ${list.length}`, 'tools');
  const checked = list.map((t, i) => checkTool(t, i, wire));
  const names = checked.map((t) => t.name);
  const dup = names.find((n, i) => names.indexOf(n) !== i);
  if (dup !== undefined) bad(`tools: two tools are named ${JSON.stringify(dup)}`, 'tools');
  if (parallelToolCalls != null && typeof parallelToolCalls !== 'boolean') bad('parallel_tool_calls must be a boolean', 'parallel_tool_calls');

  let choice: ToolRequest['choice'];
  const tc = toolChoice ?? (list.length > 0 ? 'auto' : 'none');
  if (tc === 'none') return null;
  if (tc === 'auto' || tc === 'required') choice = tc;
  else if (tc !== null && typeof tc === 'object' && (tc as { type?: unknown }).type === 'function') {
    const named = wire === 'chat' ? (tc as { function?: { name?: unknown } }).function?.name : (tc as { name?: unknown }).name;
    const param = wire === 'chat' ? 'tool_choice.function.name' : 'tool_choice.name';
    if (typeof named !== 'string') return bad(`${param} is required`, param);
    if (!names.includes(named)) bad(`tool_choice names ${JSON.stringify(named)}, which is not one of the tools`, param);
    choice = { name: named };
  } else {
    return bad(`tool_choice must be "none", "auto", "required" or {"type": "function", ${wire === 'chat' ? '"function": {"name": …}' : '"name": …'}}, not ${JSON.stringify(tc).slice(0, 80)}`, 'tool_choice');
  }
  if (list.length === 0) bad(`tool_choice ${JSON.stringify(tc).slice(0, 80)} needs tools`, 'tool_choice');

  const parameters = checked.map((t) => {
    if (t.parameters === null) return null;
    const text = JSON.stringify(t.parameters);
    if (Buffer.byteLength(text) > MAX_SCHEMA_BYTES) bad(`${t.param}: the schema has more than ${MAX_SCHEMA_BYTES} bytes`, t.param);
    return text;
  });
  return {
    templateTools: checked.map((t) => ({ type: 'function', function: { name: t.name, ...(t.description != null ? { description: t.description } : {}), parameters: t.parameters ?? { type: 'object', properties: {} } } })),
    names,
    choice,
    parallel: parallelToolCalls !== false,
    parameters,
    params: checked.map((t) => t.param),
  };
}

/** The format answers are parsed with: the operator's choice, else the template's; refused when neither names one. */
export function toolCallFormat(setting: ToolCallFormat | 'auto', detected: ToolCallFormat | null): ToolCallFormat {
  if (setting !== 'auto') return setting;
  if (detected) return detected;
  throw new UnsupportedError(
    "this model's chat template shows no tool-call format, so tool calls could not be read from its answers; start the server with --tool-call-parser hermes | llama3_json | mistral, or send tool_choice \"none\"",
    'tools',
  );
}

/** The grammar that enforces `tool_choice` (null: none needed, the model writes what it likes). */
export function toolGrammar(tr: ToolRequest, format: ToolCallFormat): ToolGrammarSpec | null {
  if (tr.choice === 'auto' && tr.parallel) return null;
  const only = typeof tr.choice === 'object' ? tr.names.indexOf(tr.choice.name) : -1;
  const pick = <T>(xs: T[]): T[] => (only >= 0 ? [xs[only]] : xs);
  return {
    type: 'tool_calls',
    format,
    tools: pick(tr.names).map((name, i) => ({ name, parameters: pick(tr.parameters)[i] })),
    mode: tr.choice === 'auto' ? 'auto' : 'required',
    // A named function is one call.
    parallel: tr.parallel && only < 0,
    params: pick(tr.params),
  };
}

/** A tool call's id, as OpenAI spells them. */
export function toolCallId(): string {
  return `call_${randomBytes(12).toString('hex')}`;
}

/** Calls in OpenAI's chat shape (`message.tool_calls`). */
export function chatToolCalls(calls: ParsedToolCall[]): { id: string; type: 'function'; function: { name: string; arguments: string } }[] {
  return calls.map((c) => ({ id: toolCallId(), type: 'function', function: { name: c.name, arguments: c.arguments } }));
}
