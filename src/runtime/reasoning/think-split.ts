/**
 * Splits a reasoning model's output into its thinking and its answer, as vLLM's
 * `--reasoning-parser` (qwen3, deepseek_r1) and llama.cpp's `--reasoning-format` do: the text
 * between `<think>` and `</think>` is reasoning, the rest is the answer.
 *
 * Two ways in: the model opens the block itself (Qwen3: its output starts with `<think>`), or the
 * chat template already opened it at the end of the prompt (DeepSeek-R1, Qwen3 thinking-only
 * variants: the output starts inside the block and only `</think>` appears). A block that never
 * closes is all reasoning, as the peers report it.
 *
 * Incremental: pieces of text arrive as tokens are decoded, and a tag may be split across pieces,
 * so text that could be the start of a tag is held back until the next piece settles it.
 */
/**
 * `--reasoning-parser`, named as vLLM names them: `qwen3` and `deepseek_r1` both split `<think>`
 * blocks (a block the prompt opened included); `auto` splits when the chat template writes them;
 * `none` leaves the thinking in the answer.
 */
export const REASONING_PARSERS = ['auto', 'qwen3', 'deepseek_r1', 'none'] as const;
export type ReasoningParser = (typeof REASONING_PARSERS)[number];

export const THINK_OPEN = '<think>';
export const THINK_CLOSE = '</think>';

/** A template whose rendered prompts may end inside an open thinking block, or whose model opens one. */
export function templateThinks(templateSource: string): boolean {
  return templateSource.includes(THINK_OPEN) || templateSource.includes(THINK_CLOSE);
}

/** True when a rendered prompt ends inside an open thinking block (the model continues it). */
export function promptOpensThinking(prompt: string): boolean {
  const open = prompt.lastIndexOf(THINK_OPEN);
  return open >= 0 && prompt.indexOf(THINK_CLOSE, open) < 0;
}

export interface SplitPiece {
  reasoning: string;
  content: string;
}

type State = 'start' | 'thinking' | 'answer';

export class ThinkSplitter {
  private state: State;
  /** Text held back: it may be the beginning of a tag. */
  private held = '';
  private reasoningText = '';
  private contentText = '';
  private trimLeading = false;

  /** `insideThinking`: the prompt ended inside an open block (see promptOpensThinking). */
  constructor(insideThinking: boolean) {
    this.state = insideThinking ? 'thinking' : 'start';
  }

  /** Takes the next piece of output text; returns what became final. */
  push(text: string): SplitPiece {
    const out: SplitPiece = { reasoning: '', content: '' };
    let rest = this.held + text;
    this.held = '';
    for (;;) {
      if (this.state === 'answer') {
        // The whitespace between `</think>` and the answer belongs to neither part.
        if (this.trimLeading) {
          rest = rest.trimStart();
          if (rest !== '') this.trimLeading = false;
        }
        out.content += rest;
        break;
      }
      if (this.state === 'start') {
        const trimmed = rest.trimStart();
        if (trimmed.startsWith(THINK_OPEN)) {
          rest = trimmed.slice(THINK_OPEN.length);
          this.state = 'thinking';
          continue;
        }
        // Whitespace, or a piece of the opening tag: wait for more.
        if (THINK_OPEN.startsWith(trimmed)) {
          this.held = rest;
          break;
        }
        this.state = 'answer';
        continue;
      }
      const close = rest.indexOf(THINK_CLOSE);
      if (close >= 0) {
        out.reasoning += rest.slice(0, close);
        rest = rest.slice(close + THINK_CLOSE.length);
        this.state = 'answer';
        this.trimLeading = true;
        continue;
      }
      const keep = partialSuffix(rest, THINK_CLOSE);
      out.reasoning += rest.slice(0, rest.length - keep);
      this.held = rest.slice(rest.length - keep);
      break;
    }
    this.reasoningText += out.reasoning;
    this.contentText += out.content;
    return out;
  }

  /** The output has ended: what was held back is final (inside a block that never closed, it is reasoning). */
  finish(): SplitPiece {
    const held = this.held;
    this.held = '';
    const out: SplitPiece = this.state === 'thinking' ? { reasoning: held, content: '' } : { reasoning: '', content: held };
    this.reasoningText += out.reasoning;
    this.contentText += out.content;
    return out;
  }

  /** All reasoning so far. */
  get reasoning(): string {
    return this.reasoningText;
  }

  /** All of the answer so far. */
  get content(): string {
    return this.contentText;
  }

  /** Inside the thinking block. */
  get thinking(): boolean {
    return this.state === 'thinking';
  }

  /**
   * Takes one token's text and says whether the token belongs to the thinking: it opened the
   * block, is inside it, or closed it (usage's reasoning_tokens).
   */
  pushToken(text: string): { piece: SplitPiece; reasoning: boolean } {
    const was = this.thinking;
    const piece = this.push(text);
    return { piece, reasoning: this.thinking || (was && this.answering) };
  }

  /** The answer has begun (tool calls and grammars apply from here). */
  get answering(): boolean {
    return this.state === 'answer';
  }
}

/** Length of the longest suffix of `text` that is a proper prefix of `tag`. */
function partialSuffix(text: string, tag: string): number {
  for (let n = Math.min(text.length, tag.length - 1); n > 0; n--) if (tag.startsWith(text.slice(text.length - n))) return n;
  return 0;
}
