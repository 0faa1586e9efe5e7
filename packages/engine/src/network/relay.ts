/**
 * Splices two connected sockets so that they live and die together. Bytes flow both ways with backpressure; an
 * end (FIN) from one side is passed on as an end to the other, so half-closed protocols work; but
 *  - once either side is destroyed, reset or fails, the other is destroyed too;
 *  - no bytes either way for RELAY_IDLE_TIMEOUT_MS closes both;
 *  - once one direction has ended, the other must move bytes at least every RELAY_HALF_CLOSED_TIMEOUT_MS: a peer
 *    that never answers and never closes (or a guest that exited and will never read) cannot hold the pair open.
 * The relay ends when both sockets have closed, which is when their descriptors are free.
 *
 * Both sockets must have been made with allowHalfOpen: true, or Node ends a socket's writable side itself when its
 * readable side ends, before the other direction is done.
 */
import type { Socket } from "node:net";

/** No bytes in either direction for this long closes a relayed connection. */
export const RELAY_IDLE_TIMEOUT_MS = 5 * 60_000;
/** After one direction has ended, no bytes in the other for this long closes the connection. */
export const RELAY_HALF_CLOSED_TIMEOUT_MS = 30_000;

export interface RelayOptions {
  idleTimeoutMs?: number;
  halfClosedTimeoutMs?: number;
}

export interface RelayEnd {
  /** The first failure (an error on either socket, or a timeout); null when both sides ended cleanly. */
  error: Error | null;
}

export class RelayTimeoutError extends Error {
  constructor(what: string, ms: number) {
    super(`${what}: no bytes for ${ms / 1000} s`);
    this.name = "RelayTimeoutError";
  }
}

export function relay(a: Socket, b: Socket, options: RelayOptions = {}): Promise<RelayEnd> {
  const idleMs = options.idleTimeoutMs ?? RELAY_IDLE_TIMEOUT_MS;
  const halfClosedMs = Math.min(idleMs, options.halfClosedTimeoutMs ?? RELAY_HALF_CLOSED_TIMEOUT_MS);
  let firstError: Error | null = null;
  let halfClosed = false;
  const destroyBoth = (error: Error) => {
    firstError ??= error;
    a.destroy();
    b.destroy();
  };
  const enterHalfClosed = () => {
    if (halfClosed) return;
    halfClosed = true;
    a.setTimeout(halfClosedMs);
    b.setTimeout(halfClosedMs);
  };
  // A socket's timer is reset by its reads and its writes, and relayed bytes are a read on one and a write on the
  // other, so "either timer fired" means "no bytes either way" for that long.
  a.setTimeout(idleMs);
  b.setTimeout(idleMs);
  const closed: Array<Promise<void>> = [];
  for (const [from, to] of [
    [a, b],
    [b, a],
  ] as const) {
    from.on("error", destroyBoth);
    from.on("timeout", () => destroyBoth(new RelayTimeoutError(halfClosed ? "half-closed connection" : "idle connection", halfClosed ? halfClosedMs : idleMs)));
    if (from.readableEnded) enterHalfClosed();
    else from.once("end", enterHalfClosed);
    closed.push(
      whenClosed(from).then(() => {
        // Closed after both of its directions finished: the other side only has its own flushing left (bounded by
        // the half-closed timer). Closed any other way (reset, destroyed, failed): the other side goes now.
        if (!(from.readableEnded && from.writableFinished)) to.destroy();
      }),
    );
    // pipe() passes a clean end on as end(), and stops reading while the other side cannot take more.
    from.pipe(to);
  }
  return Promise.all(closed).then(() => ({ error: firstError }));
}

function whenClosed(socket: Socket): Promise<void> {
  if (socket.closed) return Promise.resolve();
  return new Promise((resolve) => socket.once("close", () => resolve()));
}
