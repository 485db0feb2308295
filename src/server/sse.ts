/**
 * Server-sent events over a hijacked fastify reply: `data: <json>\n\n` frames and OpenAI's
 * `data: [DONE]` terminator. (Whether the client is still there is watched by the route's
 * clientGone signal, from the request's first moment.)
 *
 * A client that stops reading is treated as gone: once more than STALL_BYTES of the stream wait
 * unread in this process (beyond what the kernel's socket buffers took) and the socket has not
 * drained for `stallMs` (--stream-stall-ms), the connection is closed, which cancels the request
 * by the same path as a disconnect (clientGone), so its batch rows and buffered output are freed.
 */
import type { FastifyReply } from 'fastify';

/** Unread bytes a streaming client may leave queued in this process before the stall clock starts. */
export const STALL_BYTES = 256 * 1024;

export class SseStream {
  private readonly reply: FastifyReply;
  private readonly stallMs: number;
  private ended = false;
  /** Runs while more than STALL_BYTES wait unread; cleared when the socket drains. */
  private stall: NodeJS.Timeout | null = null;

  constructor(reply: FastifyReply, stallMs: number) {
    this.reply = reply;
    this.stallMs = stallMs;
    reply.hijack();
    reply.raw.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
      'x-request-id': String(reply.request.id),
    });
    reply.raw.flushHeaders?.();
    reply.raw.on('close', () => {
      this.ended = true;
      this.unstall();
    });
    // Everything written reached the kernel (after end(), when 'drain' is no longer emitted).
    reply.raw.on('finish', this.unstall);
  }

  private readonly unstall = (): void => {
    if (this.stall) clearTimeout(this.stall);
    this.stall = null;
  };

  private write(frame: string): void {
    const res = this.reply.raw;
    res.write(frame);
    if (this.stall === null && res.writableLength > STALL_BYTES) {
      this.stall = setTimeout(this.stalled, this.stallMs);
      res.once('drain', this.unstall);
    }
  }

  /** The client left more than STALL_BYTES unread for stallMs: close the connection (clientGone cancels the request). */
  private readonly stalled = (): void => {
    const res = this.reply.raw;
    this.stall = null;
    this.reply.request.log.warn({ unreadBytes: res.writableLength, stallMs: this.stallMs }, 'the streaming client stopped reading: connection closed, request cancelled (--stream-stall-ms)');
    this.ended = true;
    res.destroy();
  };

  get open(): boolean {
    return !this.ended;
  }

  send(data: unknown): void {
    if (!this.ended) this.write(`data: ${JSON.stringify(data)}\n\n`);
  }

  /** A named event (`event: <name>`), as the Responses API streams them. */
  sendEvent(name: string, data: unknown): void {
    if (!this.ended) this.write(`event: ${name}\ndata: ${JSON.stringify(data)}\n\n`);
  }

  /** Ends the stream, with OpenAI's `[DONE]` unless `done` is false (TGI streams end without it). */
  end(done = true): void {
    if (this.ended) return;
    if (done) this.write('data: [DONE]\n\n');
    this.ended = true;
    this.reply.raw.end();
  }
}
