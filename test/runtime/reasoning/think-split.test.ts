/**
 * The thinking/answer split, whole and in pieces: every way of cutting the output into pieces
 * (tags split anywhere) gives the split of the whole text, which is checked against a reference
 * written independently with a regular expression.
 */
import { describe, expect, it } from 'vitest';
import { ChatTemplate } from '../../../src/runtime/chat-template.js';
import { promptOpensThinking, ThinkSplitter, templateThinks } from '../../../src/runtime/reasoning/think-split.js';
import { loadTokenizer } from '../../helpers/tokenizers.js';

/** The reference: a regular expression over the whole output. */
function reference(output: string, inside: boolean): { reasoning: string; content: string } {
  const text = inside ? `<think>${output}` : output;
  const m = /^\s*<think>([\s\S]*?)(?:<\/think>\s*([\s\S]*))?$/.exec(text);
  if (!m) return { reasoning: '', content: output };
  return { reasoning: m[1], content: m[2] ?? '' };
}

function run(pieces: string[], inside: boolean): { reasoning: string; content: string; streamed: { reasoning: string; content: string } } {
  const s = new ThinkSplitter(inside);
  const streamed = { reasoning: '', content: '' };
  for (const p of pieces) {
    const out = s.push(p);
    streamed.reasoning += out.reasoning;
    streamed.content += out.content;
  }
  const last = s.finish();
  streamed.reasoning += last.reasoning;
  streamed.content += last.content;
  return { reasoning: s.reasoning, content: s.content, streamed };
}

const OUTPUTS: [string, boolean][] = [
  ['<think>\nThe user greets me.\n</think>\n\nHello! How can I help?', false],
  ['<think>\n\n</think>\n\nNo thinking here.', false],
  ['  <think>a < b and </thin is not a tag</think>answer', false],
  ['Just an answer, no block.', false],
  ['An answer that mentions <think> later.', false],
  ['<think>never closed, all of it is reasoning', false],
  ['<thin', false],
  ['', false],
  ['The prompt opened the block.\n</think>\n\nThe answer.', true],
  ['still thinking at the end', true],
  ['</think>answer right away', true],
];

describe('ThinkSplitter', () => {
  it.each(OUTPUTS)('whole output %j (prompt opened the block: %s) splits like the reference', (output, inside) => {
    const r = run([output], inside);
    expect({ reasoning: r.reasoning, content: r.content }).toEqual(reference(output, inside));
    expect(r.streamed).toEqual({ reasoning: r.reasoning, content: r.content });
  });

  it('every cut into two or three pieces, and one character at a time, gives the same split', () => {
    for (const [output, inside] of OUTPUTS) {
      const want = reference(output, inside);
      const cuts: string[][] = [[...output]];
      for (let i = 0; i <= output.length; i++) {
        cuts.push([output.slice(0, i), output.slice(i)]);
        for (let j = i; j <= output.length; j += 3) cuts.push([output.slice(0, i), output.slice(i, j), output.slice(j)]);
      }
      for (const pieces of cuts) {
        const r = run(pieces, inside);
        expect({ reasoning: r.reasoning, content: r.content }, JSON.stringify(pieces)).toEqual(want);
        expect(r.streamed).toEqual(want);
      }
    }
  });

  it('holds back only what could still be a tag: reasoning and answer text flow as they come', () => {
    const s = new ThinkSplitter(false);
    expect(s.push('<think>I wonder')).toEqual({ reasoning: 'I wonder', content: '' });
    expect(s.push(' about this</')).toEqual({ reasoning: ' about this', content: '' });
    expect(s.push('think>\n\nYes')).toEqual({ reasoning: '', content: 'Yes' });
    expect(s.answering).toBe(true);
    expect(s.push(', it is.')).toEqual({ reasoning: '', content: ', it is.' });
  });

  it('tells templates and prompts that think', () => {
    expect(templateThinks("{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}")).toBe(true);
    expect(templateThinks('{{ messages }}')).toBe(false);
    expect(promptOpensThinking('<|im_start|>assistant\n<think>\n')).toBe(true);
    expect(promptOpensThinking('<|im_start|>assistant\n<think>\n\n</think>\n\n')).toBe(false);
    expect(promptOpensThinking('<|im_start|>assistant\n')).toBe(false);
  });
});

describe('chat templates that think (real tokenizers)', () => {
  it("Qwen3's template thinks: its prompt leaves the block to the model, or closes an empty one when thinking is off", () => {
    const t = loadTokenizer('qwen3').chatTemplate!;
    expect(t.thinks()).toBe(true);
    const messages = [{ role: 'user', content: 'Hello!' }];
    const on = t.render(messages, { addGenerationPrompt: true });
    expect(promptOpensThinking(on)).toBe(false);
    const off = t.render(messages, { addGenerationPrompt: true, extra: { enable_thinking: false } });
    expect(off).toMatch(/<think>\s*<\/think>\s*$/);
    expect(promptOpensThinking(off)).toBe(false);
    // An earlier assistant turn's thinking never leaves the prompt inside a block.
    const history = t.render([...messages, { role: 'assistant', content: '<think>\nhm\n</think>\n\nHi!' }, { role: 'user', content: 'Again' }], { addGenerationPrompt: true });
    expect(promptOpensThinking(history)).toBe(false);
  });

  it("a template that opens the block in the generation prompt (DeepSeek-R1's way) leaves the model inside it", () => {
    const t = ChatTemplate.fromTokenizerConfig({ chat_template: "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<|assistant|><think>\n{% endif %}" })!;
    expect(t.thinks()).toBe(true);
    expect(promptOpensThinking(t.render([{ role: 'user', content: 'Why?' }], { addGenerationPrompt: true }))).toBe(true);
  });

  it('Llama 3 does not think', () => {
    expect(loadTokenizer('llama3').chatTemplate!.thinks()).toBe(false);
  });
});

describe('reasoning tokens', () => {
  it('counts the tokens that open, fill and close the block, and none of the answer or of leading whitespace', () => {
    const count = (tokens: string[], inside = false): number => {
      const s = new ThinkSplitter(inside);
      return tokens.filter((t) => s.pushToken(t).reasoning).length;
    };
    expect(count(['<think>', 'a', 'b', '</think>', '\n\n', 'Hi'])).toBe(4);
    expect(count([' ', 'Hello', '!'])).toBe(0);
    expect(count(['x', '</think>', 'y'], true)).toBe(2);
    expect(count(['<th', 'ink>', 'still'])).toBe(2);
  });
});
