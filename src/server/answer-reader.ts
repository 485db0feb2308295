/**
 * Reads one chat answer as it streams: its thinking split off (see reasoning.ts), then tool calls
 * parsed from the answer after it. Each token's text goes in; what became final comes out as
 * thinking, answer text and whole calls. Chat completions, Responses and Messages read answers with it.
 */
import type { ToolCallFormat } from '../runtime/tool-calls/format.js';
import { ToolCallParser, type ParsedToolCall } from '../runtime/tool-calls/parser.js';
import { ThinkSplitter } from '../runtime/reasoning/think-split.js';
import type { Thinking } from './reasoning.js';

export interface AnswerPiece {
  reasoning: string;
  content: string;
  calls: ParsedToolCall[];
}

export interface AnswerTools {
  format: ToolCallFormat;
  names: string[];
}

export class AnswerReader {
  private readonly split: ThinkSplitter | null;
  private readonly parser: ToolCallParser | null;
  /** Tokens that opened, filled or closed the thinking. */
  reasoningTokens = 0;

  constructor(thinking: Thinking | null, tools: AnswerTools | null) {
    this.split = thinking ? new ThinkSplitter(thinking.insideThinking) : null;
    this.parser = tools ? new ToolCallParser(tools.format, tools.names) : null;
  }

  /** One token's text. */
  pushToken(text: string): AnswerPiece {
    if (!this.split) return this.answer('', text);
    const step = this.split.pushToken(text);
    if (step.reasoning) this.reasoningTokens++;
    return this.answer(step.piece.reasoning, step.piece.content);
  }

  /** The answer ended: what was held back. */
  end(): AnswerPiece {
    const held = this.split?.finish() ?? { reasoning: '', content: '' };
    const piece = this.answer(held.reasoning, held.content);
    if (!this.parser) return piece;
    const tail = this.parser.end();
    return { reasoning: piece.reasoning, content: piece.content + tail.content, calls: [...piece.calls, ...tail.calls] };
  }

  /** A whole answer, read token by token as a stream would be (so its counts agree with the stream's). */
  static readAll(tokens: readonly { text: string }[], thinking: Thinking | null, tools: AnswerTools | null): AnswerPiece & { reasoningTokens: number } {
    const r = new AnswerReader(thinking, tools);
    const all: AnswerPiece = { reasoning: '', content: '', calls: [] };
    for (const p of [...tokens.map((t) => r.pushToken(t.text)), r.end()]) {
      all.reasoning += p.reasoning;
      all.content += p.content;
      all.calls.push(...p.calls);
    }
    return { ...all, reasoningTokens: r.reasoningTokens };
  }

  private answer(reasoning: string, content: string): AnswerPiece {
    if (!this.parser || !content) return { reasoning, content, calls: [] };
    const out = this.parser.push(content);
    return { reasoning, content: out.content, calls: out.calls };
  }
}
