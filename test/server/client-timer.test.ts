/**
 * Slow-client timers must blame the client, not the server's own lag: bytes that arrived while the
 * event loop was held up (as on a machine whose cores are saturated) are seen before the timer
 * may fire. A plain timer, checked side by side, fires anyway. (Refreshing on progress is exercised
 * by the upload tests.)
 */
import { createServer, connect, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { clientTimer } from '../../src/server/client-timer.js';
import { holdLoop } from '../helpers/event-loop.js';

let server: Server | null = null;
const sockets: Socket[] = [];
afterEach(() => {
  for (const s of sockets.splice(0)) s.destroy();
  server?.close();
  server = null;
});

async function pair(): Promise<{ serverSide: Socket; client: Socket }> {
  server = createServer();
  await new Promise<void>((r) => server!.listen(0, '127.0.0.1', r));
  const accepted = new Promise<Socket>((r) => server!.once('connection', r));
  const client = connect((server.address() as { port: number }).port, '127.0.0.1');
  const serverSide = await accepted;
  sockets.push(client, serverSide);
  return { serverSide, client };
}

describe('client timer', () => {
  it('does not fire when the data arrived in time but the event loop ran late', async () => {
    const { serverSide, client } = await pair();
    let expired = false;
    let plainExpired = false;
    const timer = clientTimer(() => (expired = true), 50);
    const plain = setTimeout(() => (plainExpired = true), 50);
    serverSide.once('data', () => {
      timer.cancel();
      clearTimeout(plain);
    });
    client.write('the whole body');
    holdLoop(400);
    await new Promise((r) => setTimeout(r, 200));
    expect(plainExpired).toBe(true);
    expect(expired).toBe(false);
  });

  it('fires for a client that stops sending', async () => {
    await pair();
    let expired = 0;
    clientTimer(() => expired++, 100);
    while (expired === 0) await new Promise((r) => setTimeout(r, 20));
    await new Promise((r) => setTimeout(r, 200));
    expect(expired).toBe(1);
  });
});
