/**
 * Incremental detokenization for streaming. Text is emitted only once whole characters are
 * available: a window of recent tokens is decoded with and without the newest ones, and the
 * difference is emitted unless it ends in U+FFFD (a multi-byte character still incomplete). A few
 * tokens of context before the first new token keep SentencePiece's "▁" spaces right.
 * Semantics: the concatenated pieces equal decode(context + tokens) minus decode(context).
 */

/** Tokens of prompt context kept in front of the first generated token. */
export const DETOKENIZE_CONTEXT = 5;

export interface Decoder {
  decode(ids: readonly number[], skipSpecialTokens?: boolean): string;
}

export class IncrementalDetokenizer {
  private readonly decoder: Decoder;
  private readonly ids: number[];
  /** Start of the decode window. */
  private prefixOffset: number;
  /** End of the text already emitted (token index). */
  private readOffset: number;

  constructor(decoder: Decoder, promptTail: ArrayLike<number> = []) {
    this.decoder = decoder;
    this.ids = Array.prototype.slice.call(promptTail, -DETOKENIZE_CONTEXT) as number[];
    this.prefixOffset = 0;
    this.readOffset = this.ids.length;
  }

  /** Adds one token; returns the text that became complete (possibly ''). */
  push(id: number): string {
    this.ids.push(id);
    const window = this.ids.slice(this.prefixOffset);
    const prefixText = this.decoder.decode(window.slice(0, this.readOffset - this.prefixOffset));
    const fullText = this.decoder.decode(window);
    if (fullText.length > prefixText.length && !fullText.endsWith('\uFFFD')) {
      const piece = fullText.slice(prefixText.length);
      this.prefixOffset = this.readOffset;
      this.readOffset = this.ids.length;
      // Keep the arrays short: drop tokens before the window.
      if (this.prefixOffset > 64) {
        this.ids.splice(0, this.prefixOffset);
        this.readOffset -= this.prefixOffset;
        this.prefixOffset = 0;
      }
      return piece;
    }
    return '';
  }

  /** Text held back at the end of generation (an incomplete character decodes as U+FFFD). */
  flush(): string {
    if (this.readOffset === this.ids.length) return '';
    const window = this.ids.slice(this.prefixOffset);
    const prefixText = this.decoder.decode(window.slice(0, this.readOffset - this.prefixOffset));
    const fullText = this.decoder.decode(window);
    this.prefixOffset = this.readOffset = this.ids.length;
    return fullText.length > prefixText.length ? fullText.slice(prefixText.length) : '';
  }
}
