/**
 * Server-sent events over a hijacked fastify reply: `data: <json>\n\n` frames and OpenAI's
 * `data: [DONE]` terminator. (Whether the client is still there is watched by the route's
 * clientGone signal, from the request's first moment.)
 */
import type { FastifyReply } from 'fastify';

export class SseStream {
  private readonly reply: FastifyReply;
  private ended = false;

  constructor(reply: FastifyReply) {
    this.reply = reply;
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
    });
  }

  get open(): boolean {
    return !this.ended;
  }

  send(data: unknown): void {
    if (!this.ended) this.reply.raw.write(`data: ${JSON.stringify(data)}\n\n`);
  }

  /** A named event (`event: <name>`), as the Responses API streams them. */
  sendEvent(name: string, data: unknown): void {
    if (!this.ended) this.reply.raw.write(`event: ${name}\ndata: ${JSON.stringify(data)}\n\n`);
  }

  /** Ends the stream, with OpenAI's `[DONE]` unless `done` is false (TGI streams end without it). */
  end(done = true): void {
    if (this.ended) return;
    if (done) this.reply.raw.write('data: [DONE]\n\n');
    this.ended = true;
    this.reply.raw.end();
  }
}
