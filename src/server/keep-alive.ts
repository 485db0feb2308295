/**
 * Idle keep-alive connections: how long they stay open, what clients are told, and how they are
 * closed without resetting a request that arrived in time.
 *
 * A client may reuse an idle connection until the server's keep-alive timeout. Clients that follow
 * the server's Keep-Alive hint (undici, so fetch and OpenAI's SDK) keep a connection until two
 * seconds before it (undici's threshold), and their clock lags when their event loop is held up;
 * so the hint is below the real timeout (keepAliveHintSeconds).
 *
 * The server's own timer can fire late too: when its event loop was held up (cores saturated, a
 * long synchronous step), the expired timer runs in the same loop turn in which the client's
 * request, sent in time, is waiting unread in the socket. Node then destroys the socket, and the
 * client gets ECONNRESET for a request it sent in time. Here the close waits for one pass of the
 * poll phase (setImmediate runs after it): if bytes arrived, the connection carries on with its new
 * request (Node stops the keep-alive timer as it starts); otherwise it is closed.
 */
import type { Server } from 'node:http';
import type { Socket } from 'node:net';

/**
 * The keep-alive timeout advertised to clients, in whole seconds: 12 s below the one the server
 * enforces (a sixth below, for short ones), at least 1.
 */
export function keepAliveHintSeconds(enforcedMs: number): number {
  return Math.max(1, Math.floor((enforcedMs - Math.min(12_000, enforcedMs / 6)) / 1000));
}

/**
 * Makes `server` close timed-out connections only after the bytes that arrived meanwhile are read.
 * Socket timeouts on this server are only its keep-alive timeouts (it sets no `server.timeout`).
 */
export function closeIdleAfterPendingReads(server: Server): void {
  // With a listener, Node leaves timed-out sockets to it instead of destroying them.
  server.on('timeout', (socket: Socket) => {
    const seen = socket.bytesRead;
    setImmediate(() => {
      if (socket.bytesRead === seen) socket.destroy();
    });
  });
}
