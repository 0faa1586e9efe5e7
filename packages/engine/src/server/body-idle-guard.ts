import { Readable } from "node:stream";
import { ApiError } from "./api-error.js";

/** The error a guarded body fails with when its client stopped sending: the API's 408. */
export class RequestBodyIdleError extends ApiError {
  constructor(idleMs: number) {
    super("request_timeout", `the request body sent nothing for ${idleMs / 1000} s; the request was abandoned (send the body without pauses)`);
    this.name = "RequestBodyIdleError";
  }
}

/**
 * A request body that fails with RequestBodyIdleError once its client has sent nothing for `idleMs` while the
 * server was waiting for bytes. Time the server spends not reading (the guest is slow to take a write, so
 * backpressure holds the body) does not count: only a client that trickles or stalls is cut off. On failure the
 * source is left alone (not destroyed), so the server can still answer on the connection; the answer closes it.
 */
export function guardBodyIdle(source: Readable, idleMs: number): Readable & { receivedEncodedLength: number } {
  let timer: NodeJS.Timeout | undefined;
  const disarm = () => {
    if (timer !== undefined) clearTimeout(timer);
    timer = undefined;
  };
  const guarded = new Readable({
    read() {
      // The consumer wants bytes: from now on the wait is the client's.
      if (timer === undefined && !source.readableEnded) {
        timer = setTimeout(() => {
          timer = undefined;
          detach();
          guarded.destroy(new RequestBodyIdleError(idleMs));
        }, idleMs);
        timer.unref();
      }
      source.resume();
    },
    destroy(error, callback) {
      disarm();
      detach();
      // The consumer gave up (the handler failed or the client left): the rest of the body is read and dropped, so
      // the connection can carry the answer.
      if (!source.readableEnded) source.resume();
      callback(error);
    },
  }) as Readable & { receivedEncodedLength: number };
  guarded.receivedEncodedLength = 0;
  // Its readers listen for errors themselves; a body nobody reads (the route refused before reading it) must not
  // turn its client's hang-up into an uncaught error.
  guarded.on("error", () => {});
  const onData = (chunk: Buffer) => {
    disarm();
    guarded.receivedEncodedLength += chunk.length;
    if (!guarded.push(chunk)) source.pause();
  };
  const onEnd = () => {
    disarm();
    guarded.push(null);
  };
  const onError = (error: Error) => guarded.destroy(error);
  // A client that goes away mid-body: the request closes without an end, which must not pass for a whole body.
  const onClose = () => {
    if (!source.readableEnded) guarded.destroy(Object.assign(new Error("the client closed the request before its body ended"), { code: "ECONNRESET" }));
  };
  const detach = () => {
    source.off("data", onData);
    source.off("end", onEnd);
    source.off("error", onError);
    source.off("close", onClose);
  };
  source.on("data", onData);
  source.pause();
  source.once("end", onEnd);
  source.once("error", onError);
  source.once("close", onClose);
  return guarded;
}
