/**
 * The grammar that makes a model call tools in its family's format (an XGrammar structural tag):
 * each offered tool is a tag whose begin writes the call's name, whose content is the tool's
 * parameter schema and whose end closes the call. `required` (and a named function, which offers
 * one tool) allows only calls, at least one; `auto` with `parallel_tool_calls: false` lets the
 * model write text until it starts a call, then allows exactly one. Every parameter schema passes
 * the same keyword check as a response_format schema.
 */
import type { StructuralTag, StructuralTagFormat, TagFormat } from '@mlc-ai/web-xgrammar';
import { LoraplexError } from '../../errors.js';
import type { ToolCallFormat } from '../tool-calls/format.js';
import { checkJsonSchema, type CheckedSchema } from './schema-check.js';

export interface ToolGrammarSpec {
  type: 'tool_calls';
  format: ToolCallFormat;
  /** The tools the model may call: name and parameter schema (JSON text; null = any object). */
  tools: { name: string; parameters: string | null }[];
  /** `required`: only calls, at least one. `auto`: text, or text then one call. */
  mode: 'required' | 'auto';
  /** More than one call (only with mode `required`). */
  parallel: boolean;
  /** Where each tool's schema came from, for errors (e.g. `tools[2].function.parameters`). */
  params: string[];
}

/** How a family opens and closes one call, separates calls, and announces them. */
interface Layout {
  begin(name: string): string;
  end: string;
  separator: string;
  /** Text that starts a call in `auto` mode. */
  trigger: string;
  /** Text around the list of calls (Mistral's array). */
  before: string;
  after: string;
}

const name = (n: string): string => JSON.stringify(n);

const LAYOUTS: Record<ToolCallFormat, Layout> = {
  hermes: { begin: (n) => `<tool_call>\n{"name": ${name(n)}, "arguments": `, end: '}\n</tool_call>', separator: '\n', trigger: '<tool_call>', before: '', after: '' },
  llama3_json: { begin: (n) => `{"name": ${name(n)}, "parameters": `, end: '}', separator: '; ', trigger: '{"name": ', before: '', after: '' },
  mistral: { begin: (n) => `{"name": ${name(n)}, "arguments": `, end: '}', separator: ', ', trigger: '[TOOL_CALLS]', before: '[TOOL_CALLS][', after: ']' },
};

function parameterSchema(spec: ToolGrammarSpec, i: number): CheckedSchema {
  const text = spec.tools[i].parameters;
  const param = spec.params[i] ?? `tools[${i}].function.parameters`;
  if (text === null) return { schema: { type: 'object' }, ranges: [] };
  let schema: unknown;
  try {
    schema = JSON.parse(text);
  } catch (err) {
    throw new LoraplexError('invalid_grammar', `${param}: not valid JSON (${(err as Error).message})`, { param });
  }
  // The arguments of a call are an object; a schema that leaves the type open gets it.
  const s = schema as Record<string, unknown> | null;
  if (s !== null && typeof s === 'object' && !Array.isArray(s) && s.type === undefined && s.anyOf === undefined && s.$ref === undefined) schema = { ...s, type: 'object' };
  try {
    return checkJsonSchema(schema);
  } catch (err) {
    throw new LoraplexError('invalid_grammar', `${param}: ${(err as Error).message}`, { param });
  }
}

/**
 * The structural tag of `spec`. `jsonGrammar` turns a checked schema into EBNF without free
 * whitespace (a structural tag's own JSON-schema content lets a model write whitespace forever)
 * and with its numeric ranges.
 */
export async function toolStructuralTag(spec: ToolGrammarSpec, jsonGrammar: (checked: CheckedSchema) => Promise<string>): Promise<StructuralTag> {
  if (spec.tools.length === 0) throw new LoraplexError('invalid_grammar', 'tools: at least one tool is needed to call one', { param: 'tools' });
  const layout = LAYOUTS[spec.format];
  const schemas: StructuralTagFormat[] = [];
  for (let i = 0; i < spec.tools.length; i++) schemas.push({ type: 'grammar', grammar: await jsonGrammar(parameterSchema(spec, i)) });
  if (spec.mode === 'auto') {
    // One call, after any text: the whole call (Mistral's brackets included) is the tag.
    const tags: TagFormat[] = spec.tools.map((t, i) => ({
      type: 'tag',
      begin: layout.before.startsWith(layout.trigger) ? layout.before + layout.begin(t.name) : layout.begin(t.name),
      content: schemas[i],
      end: layout.end + layout.after,
    }));
    return { type: 'structural_tag', format: { type: 'triggered_tags', triggers: [layout.trigger], tags, stop_after_first: true } };
  }
  const tags: TagFormat[] = spec.tools.map((t, i) => ({ type: 'tag', begin: layout.begin(t.name), content: schemas[i], end: layout.end }));
  const one: StructuralTagFormat = tags.length === 1 ? tags[0] : { type: 'or', elements: tags };
  // XGrammar 0.1.27 cannot follow a list of tags with more text: parallel Mistral calls end after
  // the last call, without the array's closing bracket (the parser accepts that).
  const calls: StructuralTagFormat = spec.parallel ? { type: 'tags_with_separator', tags, separator: layout.separator, at_least_one: true } : one;
  const elements: StructuralTagFormat[] = [];
  if (layout.before) elements.push({ type: 'const_string', value: layout.before });
  elements.push(calls);
  if (layout.after && !spec.parallel) elements.push({ type: 'const_string', value: layout.after });
  return { type: 'structural_tag', format: elements.length === 1 ? calls : { type: 'sequence', elements } };
}
