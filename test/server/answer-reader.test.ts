/**
 * AnswerReader: an answer read token by token gives what the answer read whole gives, however the
 * text is cut into tokens, and the parts agree with an independent split (a regular expression for
 * the thinking, the one-shot tool-call parser for the rest).
 */
import { describe, expect, it } from 'vitest';
import { AnswerReader, type AnswerPiece } from '../../src/server/answer-reader.js';
import { parseToolCalls } from '../../src/runtime/tool-calls/parser.js';

const tools = { format: 'hermes' as const, names: ['lookup'] };
const answer = '<think>Check the sky.</think>Sure: <tool_call>\n{"name": "lookup", "arguments": {"q": "sky"}}\n</tool_call>';

/** Reads `text` cut into the given pieces, as a stream would. */
function streamed(pieces: string[], insideThinking = false): AnswerPiece & { reasoningTokens: number } {
  const r = new AnswerReader({ insideThinking }, tools);
  const all: AnswerPiece = { reasoning: '', content: '', calls: [] };
  for (const p of [...pieces.map((t) => r.pushToken(t)), r.end()]) {
    all.reasoning += p.reasoning;
    all.content += p.content;
    all.calls.push(...p.calls);
  }
  return { ...all, reasoningTokens: r.reasoningTokens };
}

describe('AnswerReader', () => {
  it('splits thinking, answer and calls the same way at every cut', () => {
    const m = /^<think>([\s\S]*?)<\/think>([\s\S]*)$/.exec(answer)!;
    const rest = parseToolCalls(tools.format, tools.names, m[2]);
    for (let i = 0; i <= answer.length; i++) {
      for (const j of [i, Math.min(answer.length, i + 7)]) {
        const got = streamed([answer.slice(0, i), answer.slice(i, j), answer.slice(j)]);
        expect(got.reasoning, `cut at ${i}, ${j}`).toBe(m[1]);
        expect(got.content).toBe(rest.content ?? '');
        expect(got.calls).toEqual(rest.calls);
      }
    }
    const whole = AnswerReader.readAll([{ text: answer }], { insideThinking: false }, tools);
    expect(whole).toMatchObject({ reasoning: m[1], calls: rest.calls });
  });

  it('counts the tokens that open, fill and close the thinking; a block the prompt opened needs no opening tag', () => {
    const tokens = ['<think>', 'a', 'b', '</think>', 'answer'];
    expect(AnswerReader.readAll(tokens.map((text) => ({ text })), { insideThinking: false }, null)).toMatchObject({ reasoning: 'ab', content: 'answer', reasoningTokens: 4 });
    expect(AnswerReader.readAll(['a', '</think>', 'x'].map((text) => ({ text })), { insideThinking: true }, null)).toMatchObject({ reasoning: 'a', content: 'x', reasoningTokens: 2 });
    // Without a thinking split the tags are answer text.
    expect(AnswerReader.readAll(tokens.map((text) => ({ text })), null, null)).toMatchObject({ reasoning: '', content: tokens.join(''), reasoningTokens: 0 });
  });
});
