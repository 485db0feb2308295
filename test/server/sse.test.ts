/**
 * Streaming to a client that stops reading: a raw socket sends a streaming request and never reads
 * again, so the kernel's socket buffers fill and the stream piles up in the server. Past the
 * bound (--stream-stall-ms, small here) the server closes the connection, which cancels the
 * request like a disconnect: its rows leave the batch long before its max_tokens, while the client
 * still holds its end of the connection open.
 */
import { connect, type Socket } from 'node:net';
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type RunningServer } from '../../src/server/serve.js';
import { engineIdle, testConfig, tinyQwen, until } from '../helpers/server.js';

let server: RunningServer;
const logs: Record<string, unknown>[] = [];

beforeAll(async () => {
  const tm = tinyQwen(401, 4096);
  const logStream = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString().split('\n')) if (line.trim() !== '') logs.push(JSON.parse(line) as Record<string, unknown>);
      done();
    },
  });
  server = await startServer(testConfig({ model: tm.dir, port: 0, host: '127.0.0.1', servedModelName: 'tiny', kvCacheTokens: 32768, streamStallMs: 200 }), { logger: true, logStream });
  await server.ready;
}, 300_000);
afterAll(async () => {
  await server?.close();
});

/** Sends one HTTP request on a raw socket, then never reads from it. */
function neverReading(path: string, body: unknown): Promise<Socket> {
  const { port } = new URL(server.url);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), '127.0.0.1', () => {
      const json = JSON.stringify(body);
      socket.write(`POST ${path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(json)}\r\n\r\n${json}`);
      // Paused, the socket stops reading once its small stream buffer is full; the kernel's fill next.
      socket.pause();
      resolve(socket);
    });
    socket.on('error', () => {});
    socket.once('error', reject);
  });
}

describe('a streaming client that stops reading', () => {
  it('is cancelled once its unread stream stays over the bound, freeing its rows, while it still holds the connection', async () => {
    // About 1.5 KB per token and row (20 top logprobs each): far more than the kernel's buffers hold.
    const body = { model: 'tiny', messages: [{ role: 'user', content: 'Go on' }], stream: true, n: 4, max_tokens: 3800, ignore_eos: true, logprobs: true, top_logprobs: 20 };
    const before = await server.ctx.engine!.stats();
    const socket = await neverReading('/v1/chat/completions', body);
    try {
      await until(async () => (await server.ctx.engine!.stats()).submitted > before.submitted);
      const after = await engineIdle(server, 300_000);
      expect(after.running).toBe(0);
      // Cancelled while running, not finished: fewer tokens than asked for.
      expect(after.cancelledRunning).toBeGreaterThan(before.cancelledRunning);
      expect(after.generatedTokens - before.generatedTokens).toBeLessThan(4 * 3800);
      expect(logs.some((l) => typeof l.msg === 'string' && l.msg.startsWith('the streaming client stopped reading'))).toBe(true);
      // The client never closed its end.
      expect(socket.destroyed).toBe(false);
    } finally {
      socket.destroy();
    }
  }, 300_000);
});
