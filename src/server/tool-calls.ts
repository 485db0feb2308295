/**
 * Tool calls in chat answers: each choice's text goes through its own parser; a whole answer
 * becomes `message.content` + `message.tool_calls`, a stream becomes `delta.content` and
 * `delta.tool_calls` chunks (one per call, with its id, name and whole arguments, numbered by
 * `index` as the official client assembles them). An answer with calls that ended normally
 * finishes with `tool_calls`.
 */
import type { ToolCallFormat } from '../runtime/tool-calls/format.js';
import { parseToolCalls, ToolCallParser, type ToolCallOutput } from '../runtime/tool-calls/parser.js';
import { chatToolCalls } from './tool-fields.js';

type Delta = { content?: string; tool_calls?: unknown[] };

export class ChatToolCalls {
  private readonly format: ToolCallFormat;
  private readonly names: string[];
  /** Per choice index: its parser and how many calls it has streamed. */
  private readonly streams = new Map<number, { parser: ToolCallParser; calls: number }>();

  constructor(format: ToolCallFormat, names: string[]) {
    this.format = format;
    this.names = names;
  }

  private stream(index: number): { parser: ToolCallParser; calls: number } {
    let s = this.streams.get(index);
    if (!s) this.streams.set(index, (s = { parser: new ToolCallParser(this.format, this.names), calls: 0 }));
    return s;
  }

  private delta(index: number, out: ToolCallOutput): Delta | null {
    const s = this.stream(index);
    const d: Delta = {};
    if (out.content) d.content = out.content;
    if (out.calls.length > 0) d.tool_calls = chatToolCalls(out.calls).map((c) => ({ index: s.calls++, ...c }));
    return d.content !== undefined || d.tool_calls ? d : null;
  }

  /** A streamed piece of text: the delta to send (null: nothing yet). */
  push(index: number, text: string): Delta | null {
    return text ? this.delta(index, this.stream(index).parser.push(text)) : null;
  }

  /** The choice ended: what was held back, and its finish reason. */
  end(index: number, reason: string): { delta: Delta; finishReason: string } {
    const s = this.stream(index);
    const delta = this.delta(index, s.parser.end()) ?? {};
    return { delta, finishReason: s.calls > 0 && reason === 'stop' ? 'tool_calls' : reason };
  }

  /** A whole answer. */
  whole(text: string, reason: string): { message: Record<string, unknown>; finishReason: string } {
    const { content, calls } = parseToolCalls(this.format, this.names, text);
    if (calls.length === 0) return { message: { role: 'assistant', content: text }, finishReason: reason };
    return { message: { role: 'assistant', content, tool_calls: chatToolCalls(calls) }, finishReason: reason === 'stop' ? 'tool_calls' : reason };
  }
}
