/** The tokenizer thread's tasks (shared by the pool and the worker). */
import type { ChatMessage } from '../../runtime/chat-template.js';
import type { ToolCallFormat } from '../../runtime/tool-calls/format.js';

export interface ChatTask {
  messages: ChatMessage[];
  tools: unknown[] | null;
  addGenerationPrompt: boolean;
  /** Extra template variables (vLLM's chat_template_kwargs). */
  templateKwargs: Record<string, unknown> | null;
  /** The adapter version's directory, whose own template wins; null = the base model's. */
  adapterDir: string | null;
}

/** The tokenizer thread's task map (see worker-protocol.ts). */
export interface TokenizerTasks {
  /** What the main thread needs to know about the tokenizer (see TokenizerInfo). */
  info: { arg: null; result: TokenizerInfo };
  text: { arg: { text: string; addSpecialTokens: boolean }; result: Int32Array };
  chat: { arg: ChatTask; result: ChatPrompt };
  /** An uploaded adapter's template: it must parse and render a sample conversation within the budget (false: it has none). */
  checkTemplate: { arg: { adapterDir: string }; result: boolean };
  /** Token ids → text. */
  decode: { arg: { ids: number[]; skipSpecialTokens: boolean }; result: string };
  /** Each token's own text and its [start, stop) in the decoded text (TGI's /tokenize, vLLM's token_strs). */
  pieces: { arg: { ids: number[] }; result: TokenPiece[] };
}

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
  /** Whether the template writes thinking blocks, and whether the rendered prompt ends inside an open one. */
  reasoning: { templateThinks: boolean; insideThinking: boolean };
}
