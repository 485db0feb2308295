/**
 * Keep-alive connections on a busy server. A client may send its next request on an idle
 * connection until the server's keep-alive timeout; when the server's event loop is held up (a
 * machine whose cores are saturated, a long synchronous step), the timeout's timer runs late, in
 * the same loop turn that would read the request that arrived in time. The server must read it and
 * answer, not reset the connection (the client would see ECONNRESET for a request it sent in
 * time). Idle connections must still close.
 */
import { connect, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type RunningServer } from '../../src/server/serve.js';
import { keepAliveHintSeconds } from '../../src/server/keep-alive.js';
import { testConfig, tinyQwen } from '../helpers/server.js';
import { holdLoop } from '../helpers/event-loop.js';

const KEEP_ALIVE_MS = 2000;
const tm = tinyQwen(1401, 64);
let server: RunningServer;
let port = 0;
const sockets: Socket[] = [];

beforeAll(async () => {
  server = await startServer(testConfig({ model: tm.dir, port: 0, host: '127.0.0.1', servedModelName: 'tiny', keepAliveTimeoutMs: KEEP_ALIVE_MS }), { logger: false });
  await server.ready;
  port = Number(new URL(server.url).port);
});
afterAll(async () => {
  for (const s of sockets) s.destroy();
  await server?.close(0);
});

/** A raw HTTP/1.1 connection that reads whole responses (Content-Length bodies) and records how it ended. */
function rawConnection(): { socket: Socket; request(path: string): Promise<{ status: number; headers: string; body: string }>; closed: Promise<string> } {
  const socket = connect(port, '127.0.0.1');
  sockets.push(socket);
  let buffered = '';
  let waiting: ((r: { status: number; headers: string; body: string }) => void) | null = null;
  let failed: ((e: Error) => void) | null = null;
  const closed = new Promise<string>((resolve) => {
    socket.on('error', (e: NodeJS.ErrnoException) => {
      failed?.(e);
      resolve(e.code ?? e.message);
    });
    socket.on('close', () => {
      failed?.(new Error('the server closed the connection'));
      resolve('closed');
    });
  });
  socket.setEncoding('latin1');
  socket.on('data', (chunk: string) => {
    buffered += chunk;
    const end = buffered.indexOf('\r\n\r\n');
    if (end < 0 || !waiting) return;
    const headers = buffered.slice(0, end);
    const length = Number(/\r\ncontent-length: *(\d+)/i.exec(headers)?.[1] ?? 0);
    if (buffered.length < end + 4 + length) return;
    const body = buffered.slice(end + 4, end + 4 + length);
    buffered = buffered.slice(end + 4 + length);
    const done = waiting;
    waiting = failed = null;
    done({ status: Number(headers.split(' ')[1]), headers, body });
  });
  return {
    socket,
    closed,
    request: (path) =>
      new Promise((resolve, reject) => {
        waiting = resolve;
        failed = reject;
        socket.write(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`);
      }),
  };
}

describe('keep-alive', () => {
  it('advertises less than it enforces', async () => {
    expect(server.app.server.keepAliveTimeout).toBe(KEEP_ALIVE_MS);
    const c = rawConnection();
    const first = await c.request('/v1/models');
    expect(/\r\nkeep-alive: *timeout=(\d+)/i.exec(first.headers)?.[1]).toBe(String(keepAliveHintSeconds(KEEP_ALIVE_MS)));
    expect(keepAliveHintSeconds(72_000)).toBe(60);
    expect(keepAliveHintSeconds(620_000)).toBe(608);
    expect(keepAliveHintSeconds(2000)).toBe(1);
  });

  it('answers a request sent in time on an idle connection though the keep-alive timer ran late', async () => {
    const c = rawConnection();
    expect((await c.request('/v1/models')).status).toBe(200);
    // The server is held past its keep-alive timeout (Node adds a second to it); the request is
    // sent (into the socket buffer) before the late timer can run, as a client's would be just
    // before the timeout.
    holdLoop(KEEP_ALIVE_MS + 2000);
    const second = await c.request('/v1/models');
    expect(second.status).toBe(200);
    expect(JSON.parse(second.body)).toMatchObject({ object: 'list' });
    // And the connection goes on serving.
    expect((await c.request('/health')).status).toBe(200);
  });

  it('still closes a connection that stays idle past the timeout', async () => {
    const c = rawConnection();
    expect((await c.request('/v1/models')).status).toBe(200);
    const since = performance.now();
    expect(await c.closed).toBe('closed');
    expect(performance.now() - since).toBeGreaterThanOrEqual(KEEP_ALIVE_MS - 50);
  });
});
