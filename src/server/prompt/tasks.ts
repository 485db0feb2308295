/** The tokenizer thread's tasks (shared by the pool and the worker). */
import type { ChatMessage } from '../../runtime/chat-template.js';
import type { ToolCallFormat } from '../../runtime/tool-calls/format.js';

export type TokenizeTask =
  /** What the main thread needs to know about the tokenizer (see TokenizerInfo). */
  | { kind: 'info' }
  | { kind: 'text'; text: string; addSpecialTokens: boolean }
  | {
      kind: 'chat';
      messages: ChatMessage[];
      tools: unknown[] | null;
      addGenerationPrompt: boolean;
      /** Extra template variables (vLLM's chat_template_kwargs). */
      templateKwargs: Record<string, unknown> | null;
      /** The adapter version's directory, whose own template wins; null = the base model's. */
      adapterDir: string | null;
    }
  /** An uploaded adapter's template: it must parse and render a sample conversation within the budget. */
  | { kind: 'checkTemplate'; adapterDir: string }
  /** Token ids → text. */
  | { kind: 'decode'; ids: number[]; skipSpecialTokens: boolean }
  /** Each token's own text and its [start, stop) in the decoded text (TGI's /tokenize, vLLM's token_strs). */
  | { kind: 'pieces'; ids: number[] };

export interface TokenPiece {
  id: number;
  text: string;
  start: number;
  stop: number;
}

export interface TokenizerInfo {
  hasTokenizer: boolean;
  hasChatTemplate: boolean;
  /**
   * The most bytes of text one token can cover. A text of N bytes has at least N / this many
   * tokens, which lets a prompt far beyond the context be refused before it is tokenized.
   */
  maxTokenBytes: number;
}

/** Conversations an adapter's chat template must render (at least one of them). */
export const SAMPLE_CONVERSATIONS: ChatMessage[][] = [
  [
    { role: 'system', content: 'You are a helpful assistant.' },
    { role: 'user', content: 'Hello!' },
    { role: 'assistant', content: 'Hi, how can I help?' },
    { role: 'user', content: 'Tell me a joke.' },
  ],
  [{ role: 'user', content: 'Hello!' }],
];

/** A rendered and tokenized conversation. */
export interface ChatPrompt {
  ids: Int32Array;
  /** How the template that rendered it asks the model to write tool calls (null: it shows no format). */
  toolCallFormat: ToolCallFormat | null;
}
