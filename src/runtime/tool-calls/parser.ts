/**
 * Tool calls out of generated text, incrementally: text goes in as the model writes it, content and
 * complete calls come out. A `hermes` call is emitted as soon as its `</tool_call>` arrives; the
 * JSON formats (`llama3_json`, `mistral`) are a call only when the whole answer is one, so once an
 * answer starts like a call it is held until the end. Whatever does not parse as a call of an
 * offered tool (broken JSON, an unknown name, a `<tool_call>` the answer ends without closing)
 * is returned as content, unchanged: nothing the model wrote is lost.
 */
import type { ToolCallFormat } from './format.js';

export interface ParsedToolCall {
  name: string;
  /** The arguments as JSON text (an object). */
  arguments: string;
}

/** What a piece of text turned into. */
export interface ToolCallOutput {
  content: string;
  calls: ParsedToolCall[];
}

const HERMES_OPEN = '<tool_call>';
const HERMES_CLOSE = '</tool_call>';
const PYTHON_TAG = '<|python_tag|>';
const MISTRAL_TAG = '[TOOL_CALLS]';

/** Length of the longest suffix of `s` that is a proper prefix of `tag` (text that may still become the tag). */
function heldBack(s: string, tag: string): number {
  for (let n = Math.min(s.length, tag.length - 1); n > 0; n--) if (tag.startsWith(s.slice(s.length - n))) return n;
  return 0;
}

/** A call object as the formats write it: {name, arguments | parameters}; null when it is not one of the offered tools. */
function callOf(value: unknown, names: ReadonlySet<string>): ParsedToolCall | null {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return null;
  const v = value as { name?: unknown; arguments?: unknown; parameters?: unknown };
  if (typeof v.name !== 'string' || !names.has(v.name)) return null;
  let args = v.arguments !== undefined ? v.arguments : (v.parameters ?? {});
  if (typeof args === 'string') {
    // Some models write the arguments as a JSON string.
    try {
      args = JSON.parse(args);
    } catch {
      return null;
    }
  }
  if (args === null || typeof args !== 'object' || Array.isArray(args)) return null;
  return { name: v.name, arguments: JSON.stringify(args) };
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/** `{…}` objects separated by `;` (Llama 3's parallel calls), or null when the text is anything else. */
function llamaCalls(text: string, names: ReadonlySet<string>): ParsedToolCall[] | null {
  const body = text.trim().startsWith(PYTHON_TAG) ? text.trim().slice(PYTHON_TAG.length) : text;
  const calls: ParsedToolCall[] = [];
  for (const part of splitTopLevel(body, ';')) {
    const call = callOf(parseJson(part), names);
    if (!call) return null;
    calls.push(call);
  }
  return calls.length > 0 ? calls : null;
}

/** Splits on `sep` outside JSON strings and brackets. */
function splitTopLevel(text: string, sep: string): string[] {
  const parts: string[] = [];
  let depth = 0;
  let inString = false;
  let start = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      if (c === '\\') i++;
      else if (c === '"') inString = false;
    } else if (c === '"') inString = true;
    else if (c === '{' || c === '[') depth++;
    else if (c === '}' || c === ']') depth--;
    else if (c === sep && depth === 0) {
      parts.push(text.slice(start, i));
      start = i + 1;
    }
  }
  parts.push(text.slice(start));
  return parts.filter((p) => p.trim() !== '');
}

/** `[TOOL_CALLS]` (often skipped as a special token) then a JSON array of calls. */
function mistralCalls(text: string, names: ReadonlySet<string>): ParsedToolCall[] | null {
  let body = text.trim();
  if (body.startsWith(MISTRAL_TAG)) body = body.slice(MISTRAL_TAG.length);
  // Parallel calls under a grammar end without the closing bracket (see tool-grammar.ts).
  const value = parseJson(body) ?? (body.startsWith('[') && !body.endsWith(']') ? parseJson(`${body}]`) : undefined);
  const list = Array.isArray(value) ? value : value !== undefined ? [value] : null;
  if (!list || list.length === 0) return null;
  const calls = list.map((c) => callOf(c, names));
  return calls.every((c) => c !== null) ? (calls as ParsedToolCall[]) : null;
}

export class ToolCallParser {
  private readonly format: ToolCallFormat;
  private readonly names: ReadonlySet<string>;
  /** Text not yet returned. */
  private pending = '';
  /** hermes: inside a `<tool_call>` block. JSON formats: the answer looks like a call so far. */
  private inCall = false;
  /** hermes: the whitespace before the open call. */
  private gap = '';
  /** hermes: where in the open call's text the next closing tag is looked for (earlier ones did not close a call). */
  private tried = 0;
  /** JSON formats: whether the answer's start has been seen. */
  private decided = false;
  private calls = 0;

  constructor(format: ToolCallFormat, toolNames: Iterable<string>) {
    this.format = format;
    this.names = new Set(toolNames);
  }

  /** Feeds generated text; returns what is certain so far. */
  push(text: string): ToolCallOutput {
    this.pending += text;
    return this.format === 'hermes' ? this.hermes(false) : this.json(false);
  }

  /** The answer ended: everything still held. */
  end(): ToolCallOutput {
    return this.format === 'hermes' ? this.hermes(true) : this.json(true);
  }

  /** Whether any call has been returned. */
  get sawCalls(): boolean {
    return this.calls > 0;
  }

  private hermes(end: boolean): ToolCallOutput {
    const out: ToolCallOutput = { content: '', calls: [] };
    while (true) {
      if (this.inCall) {
        // The first closing tag after which the block is a call (the tag may appear inside an argument string).
        // Each closing tag is tried once: a block with many tags that never parse costs linear work, not a re-scan per token.
        let close = this.pending.indexOf(HERMES_CLOSE, this.tried);
        let call: ParsedToolCall | null = null;
        while (close >= 0 && !(call = callOf(parseJson(this.pending.slice(0, close)), this.names))) close = this.pending.indexOf(HERMES_CLOSE, close + 1);
        this.tried = close >= 0 ? 0 : Math.max(0, this.pending.length - HERMES_CLOSE.length + 1);
        if (close < 0 && end) close = this.pending.indexOf(HERMES_CLOSE);
        if (close < 0) {
          if (!end) return out;
          // No closing tag: not a call, even when its JSON is complete (the model stopped before
          // closing it, or was cut off), so the block is content, byte for byte.
          out.content += this.gap + HERMES_OPEN + this.pending;
          this.gap = '';
          this.pending = '';
          this.inCall = false;
          return out;
        }
        if (call) this.emitCall(out, call);
        else out.content += this.gap + HERMES_OPEN + this.pending.slice(0, close + HERMES_CLOSE.length);
        this.gap = '';
        this.pending = this.pending.slice(close + HERMES_CLOSE.length);
        this.inCall = false;
        continue;
      }
      const open = this.pending.indexOf(HERMES_OPEN);
      if (open >= 0) {
        // Whitespace right before a call is the model's separator, not content (unless the call is not one).
        const before = this.pending.slice(0, open);
        const text = before.trimEnd();
        out.content += text;
        this.gap = before.slice(text.length);
        this.pending = this.pending.slice(open + HERMES_OPEN.length);
        this.inCall = true;
        continue;
      }
      if (end) {
        // Trailing whitespace after calls is dropped too.
        if (!(this.calls > 0 && this.pending.trim() === '')) out.content += this.pending;
        this.pending = '';
        return out;
      }
      // Hold back a possible start of the tag, and trailing whitespace (it may precede a call).
      const tag = heldBack(this.pending, HERMES_OPEN);
      const rest = this.pending.slice(0, this.pending.length - tag);
      const keep = tag + rest.length - rest.trimEnd().length;
      out.content += this.pending.slice(0, this.pending.length - keep);
      this.pending = this.pending.slice(this.pending.length - keep);
      return out;
    }
  }

  private json(end: boolean): ToolCallOutput {
    const out: ToolCallOutput = { content: '', calls: [] };
    if (!this.decided) {
      const head = this.pending.trimStart();
      const tag = this.format === 'llama3_json' ? PYTHON_TAG : MISTRAL_TAG;
      const opener = this.format === 'llama3_json' ? ['{'] : ['[{', '{'];
      const stillOpen = head === '' || (tag.startsWith(head) && head.length < tag.length) || opener.some((o) => o.startsWith(head) && head.length < o.length);
      if (stillOpen && !end) return out;
      this.decided = true;
      this.inCall = head.startsWith(tag) || opener.some((o) => head.startsWith(o));
    }
    if (!this.inCall) {
      out.content = this.pending;
      this.pending = '';
      return out;
    }
    if (!end) return out;
    const calls = this.format === 'llama3_json' ? llamaCalls(this.pending, this.names) : mistralCalls(this.pending, this.names);
    if (calls) for (const c of calls) this.emitCall(out, c);
    else out.content = this.pending;
    this.pending = '';
    return out;
  }

  private emitCall(out: ToolCallOutput, call: ParsedToolCall): void {
    out.calls.push(call);
    this.calls++;
  }
}

/** The calls in a whole answer, and its content (null when the answer is only calls). */
export function parseToolCalls(format: ToolCallFormat, toolNames: Iterable<string>, text: string): { content: string | null; calls: ParsedToolCall[] } {
  const p = new ToolCallParser(format, toolNames);
  const a = p.push(text);
  const b = p.end();
  const content = a.content + b.content;
  const calls = [...a.calls, ...b.calls];
  return { content: calls.length > 0 && content.trim() === '' ? null : content, calls };
}
