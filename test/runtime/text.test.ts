/**
 * Text in, text out with real tokenizers: round trips, chat templates, streaming detokenization,
 * stop strings and finish reasons.
 */
import { describe, expect, it } from 'vitest';
import { ChatTemplate, ChatTemplateError } from '../../src/runtime/chat-template.js';
import { IncrementalDetokenizer } from '../../src/runtime/detokenizer.js';
import { Generation, type StopCriteria } from '../../src/runtime/generation.js';
import { GREEDY, Sampler } from '../../src/runtime/sampling.js';
import { StopStringMatcher } from '../../src/runtime/stopping.js';
import { loadTokenizer, type TokenizerName } from '../helpers/tokenizers.js';

const SAMPLES = {
  ascii: 'The quick brown fox jumps over the lazy dog. 1234567890!',
  accents: 'Ça va? Déjà vu — naïve façade, Ångström, jalapeño.',
  cjk: '机器学习是人工智能的一个分支。日本語のテキストも。한국어 문장.',
  emoji: 'Deploy 🚀 then relax 😌🌴 — 👩‍💻 family: 👨‍👩‍👧‍👦 flags 🇫🇷',
  code: 'function add(a, b) {\n  return a + b; // sum\n}\n\tconst x = `${add(1, 2)}`;\n',
};

const NAMES: TokenizerName[] = ['llama2', 'llama3', 'qwen3'];

describe.each(NAMES)('%s tokenizer', (name) => {
  const tok = loadTokenizer(name);

  it.each(Object.entries(SAMPLES))('round-trips %s text', (_kind, text) => {
    const ids = tok.encode(text, false);
    expect(ids.length).toBeGreaterThan(0);
    expect(tok.decode(ids)).toBe(text);
  });

  it('streams text whose concatenation equals the one-shot decode, never splitting a character', () => {
    const prompt = tok.encode('Say something:', false);
    for (const text of Object.values(SAMPLES)) {
      const ids = tok.encode(` ${text}`, false);
      const detok = new IncrementalDetokenizer(tok, prompt);
      const pieces: string[] = [];
      for (const id of ids) pieces.push(detok.push(id));
      pieces.push(detok.flush());
      for (const p of pieces) expect(p).not.toContain('\uFFFD');
      const context = prompt.slice(-5);
      const oneShot = tok.decode([...context, ...ids]).slice(tok.decode(context).length);
      expect(pieces.join('')).toBe(oneShot);
      expect(oneShot.trimStart()).toBe(text.trimStart());
    }
  });
});

describe('special tokens', () => {
  it('adds BOS as tokenizer_config says: Llama 2 yes, Qwen3 (no BOS) no', () => {
    const llama2 = loadTokenizer('llama2');
    expect(llama2.bosId).toBe(1);
    expect(llama2.encode('hi')[0]).toBe(1);
    expect(llama2.encode('hi', false)[0]).not.toBe(1);
    const qwen = loadTokenizer('qwen3');
    expect(qwen.bosId).toBeNull();
    expect(qwen.encode('hi')).toEqual(qwen.encode('hi', false));
    expect(qwen.eosId).toBe(qwen.tokenId('<|im_end|>'));
  });

  it('splits multi-byte characters over byte-fallback tokens (Llama 2) and holds them back', () => {
    const tok = loadTokenizer('llama2');
    const ids = tok.encode('🚀', false);
    expect(ids.length).toBeGreaterThan(1);
    const detok = new IncrementalDetokenizer(tok);
    const pieces = ids.map((id) => detok.push(id));
    expect(pieces.slice(0, -1)).toEqual(Array(ids.length - 1).fill(''));
    expect(pieces.join('') + detok.flush()).toBe('🚀');
  });
});

describe('chat templates', () => {
  const messages = [
    { role: 'system', content: 'You are helpful.' },
    { role: 'user', content: 'Hi there' },
  ];

  it('renders the Llama 3 template exactly', () => {
    const tok = loadTokenizer('llama3');
    expect(tok.chatTemplate!.render(messages)).toBe(
      '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are helpful.<|eot_id|>' +
        '<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n',
    );
  });

  it('renders the Qwen3 (ChatML) template exactly, with and without the generation prompt', () => {
    const tok = loadTokenizer('qwen3');
    const body = '<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n';
    expect(tok.chatTemplate!.render(messages)).toBe(`${body}<|im_start|>assistant\n`);
    expect(tok.chatTemplate!.render(messages, { addGenerationPrompt: false })).toBe(body);
    const withTools = tok.chatTemplate!.render(messages, { tools: [{ type: 'function', function: { name: 'get_time', parameters: {} } }] });
    expect(withTools).toContain('<tools>\n{"type": "function", "function": {"name": "get_time", "parameters": {}}}\n</tools>');
  });

  it('the list-of-named-templates form picks default, and tool_use when tools are given', () => {
    const t = ChatTemplate.fromTokenizerConfig({
      bos_token: { content: '<s>' },
      chat_template: [
        { name: 'default', template: '{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}' },
        { name: 'tool_use', template: 'TOOLS:{{ tools | length }}' },
      ],
    })!;
    expect(t.render([{ role: 'user', content: 'x' }])).toBe('<s>[user]x');
    expect(t.render([{ role: 'user', content: 'x' }], { tools: [{}, {}] })).toBe('TOOLS:2');
  });

  it('raise_exception becomes a clear 400 error', () => {
    const t = ChatTemplate.fromTokenizerConfig({
      chat_template: "{% if messages[0].role != 'user' %}{{ raise_exception('Conversation must start with a user message') }}{% endif %}ok",
    })!;
    expect(t.render([{ role: 'user', content: 'a' }])).toBe('ok');
    let err: unknown;
    try {
      t.render([{ role: 'assistant', content: 'a' }]);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ChatTemplateError);
    expect((err as ChatTemplateError).statusCode).toBe(400);
    expect((err as Error).message).toMatch(/the chat template rejected these messages: Conversation must start with a user message/);
  });

  it('a tokenizer without a chat template has none', () => {
    expect(loadTokenizer('llama2').chatTemplate).toBeNull();
  });
});

describe('stop strings', () => {
  it('match across pieces, are not emitted, and release held text that turns out not to match', () => {
    const m = new StopStringMatcher(['</end>', 'STOP']);
    expect(m.push('hello </')).toEqual({ text: 'hello ', stopped: false });
    expect(m.push('en')).toEqual({ text: '', stopped: false });
    expect(m.push('x')).toEqual({ text: '</enx', stopped: false });
    expect(m.push(' ST')).toEqual({ text: ' ', stopped: false });
    expect(m.push('OP and more')).toEqual({ text: '', stopped: true, stop: 'STOP' });
    // Two stop strings end at the same character: the longer one is reported.
    const both = new StopStringMatcher(['end', 'the end']);
    expect(both.push('at the end')).toEqual({ text: 'at ', stopped: true, stop: 'the end' });
  });

  it('end a generation with reason stop when split over real tokens; otherwise length', () => {
    const tok = loadTokenizer('qwen3');
    const text = 'alpha beta gamma delta';
    const ids = tok.encode(text, false);
    const stop: StopCriteria = { maxNewTokens: 100, eosIds: new Set([tok.eosId!]), stopTokenIds: new Set(), stopStrings: ['ta gam'] };
    const g = new Generation([], GREEDY, stop, tok);
    let out = '';
    for (const id of ids) {
      const e = g.accept({ id });
      out += e.text;
      if (e.finishReason) break;
    }
    expect(g.finishReason).toBe('stop');
    expect(g.stoppedBy).toBe('ta gam');
    expect(out).toBe('alpha be');

    const g2 = new Generation([], GREEDY, { ...stop, stopStrings: [], maxNewTokens: 3 }, tok);
    let out2 = '';
    for (const id of ids) {
      const e = g2.accept({ id });
      out2 += e.text;
      if (e.finishReason) break;
    }
    expect(g2.finishReason).toBe('length');
    expect(g2.stoppedBy).toBeNull();
    expect(out2).toBe(tok.decode(ids.slice(0, 3)));
  });

  it('EOS and stop token ids end with reason stop and add no text', () => {
    const tok = loadTokenizer('qwen3');
    const sampler = new Sampler(4);
    const stop: StopCriteria = { maxNewTokens: 10, eosIds: new Set([2]), stopTokenIds: new Set([3]), stopStrings: [] };
    const g = new Generation([], GREEDY, stop, null);
    expect(g.next(Float32Array.from([0, 5, 1, 0]), sampler)).toMatchObject({ id: 1, finishReason: null });
    expect(g.next(Float32Array.from([0, 0, 9, 0]), sampler)).toMatchObject({ id: 2, finishReason: 'stop', special: true, text: '' });
    const g2 = new Generation([], GREEDY, stop, tok);
    expect(g2.next(Float32Array.from([0, 0, 0, 9]), sampler)).toMatchObject({ id: 3, finishReason: 'stop', special: true });
  });
});
