import { constants as h2, type ClientHttp2Stream } from "node:http2";
import { Readable } from "node:stream";
import { WATCH_CONTENT_TYPE, WATCH_LIMITS, type WatchEvent } from "@codecourier/protocol";
import type { AgentConnection } from "./connection.js";
import { AgentProtocolError } from "./errors.js";

export interface WatchOptions {
  /** Also watch every directory below (and those created or moved in later). Default false. */
  recursive?: boolean;
}

/**
 * How long the agent may take to put a watch in place: a recursive one reads the whole tree first, which under TCG
 * is slow for a big one.
 */
const watchSetupTimeoutMs = 5 * 60_000;
/** Events the host holds for a slow reader before it stops reading the stream (flow control takes over). */
const bufferedEvents = 64;
/** Longest path the guest may report: its own bound on event paths is 16 KiB of bytes. */
const maxPathLength = 16 * 1024;

/**
 * Starts a watch and resolves once the agent has every watch in place: events from then on are reported. The
 * result is an object-mode Readable of validated {@link WatchEvent}s; destroying it ends the watch in the guest. It
 * ends by itself when the watched path is deleted or moved away, and fails with an AgentClientError if the guest
 * breaks the protocol or the session goes away. The guest decides what it sends: each line is bounded
 * (WATCH_LIMITS.maxEventBytes) and checked, and reading stops while `bufferedEvents` wait for the consumer.
 */
export async function openWatch(connection: AgentConnection, url: string): Promise<Readable> {
  const request = connection.open("GET", url, {}, true, { listensOnly: true });
  const { status, headers } = await connection.responseHead(request, watchSetupTimeoutMs);
  if (status !== 200) throw await connection.errorResponse(request, status, Date.now() + connection.requestTimeoutMs);
  if (headers["content-type"] !== WATCH_CONTENT_TYPE) {
    request.close(h2.NGHTTP2_CANCEL);
    throw new AgentProtocolError("the agent answered a watch with something other than an event stream");
  }
  return new WatchEventStream(connection, request);
}

class WatchEventStream extends Readable {
  readonly #connection: AgentConnection;
  readonly #request: ClientHttp2Stream;
  /** The bytes of an incomplete line, at most WATCH_LIMITS.maxEventBytes. */
  #partial: Buffer[] = [];
  #partialBytes = 0;
  #outcomeKnown = false;

  constructor(connection: AgentConnection, request: ClientHttp2Stream) {
    super({ objectMode: true, highWaterMark: bufferedEvents });
    this.#connection = connection;
    this.#request = request;
    request.on("data", (chunk: Buffer) => this.#onData(chunk));
    request.on("end", () => this.#onEnd());
    request.on("close", () => {
      if (!this.#outcomeKnown) this.#fail(connection.failureOf(request));
    });
  }

  override _read(): void {
    this.#request.resume();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.#outcomeKnown = true;
    if (!this.#request.closed) this.#request.close(h2.NGHTTP2_CANCEL);
    callback(error);
  }

  #onData(chunk: Buffer): void {
    let start = 0;
    for (let newline = chunk.indexOf(10); newline >= 0; newline = chunk.indexOf(10, start)) {
      const piece = chunk.subarray(start, newline);
      start = newline + 1;
      if (this.#partialBytes + piece.length > WATCH_LIMITS.maxEventBytes) return this.#tooLong();
      const line = this.#partialBytes === 0 ? piece : Buffer.concat([...this.#partial, piece]);
      this.#partial = [];
      this.#partialBytes = 0;
      let event: WatchEvent;
      try {
        event = parseWatchEvent(line);
      } catch (error) {
        return this.#fail(error as AgentProtocolError);
      }
      if (!this.push(event)) this.#request.pause();
    }
    const rest = chunk.subarray(start);
    if (rest.length === 0) return;
    if (this.#partialBytes + rest.length > WATCH_LIMITS.maxEventBytes) return this.#tooLong();
    // A copy: the chunk's memory may be reused by the HTTP/2 layer.
    this.#partial.push(Buffer.from(rest));
    this.#partialBytes += rest.length;
  }

  #onEnd(): void {
    if (this.#outcomeKnown) return;
    this.#outcomeKnown = true;
    const cutOff = this.#connection.endFailure(this.#request);
    if (cutOff !== undefined) this.destroy(cutOff);
    else if (this.#partialBytes > 0) this.destroy(new AgentProtocolError("the agent's watch stream ended in the middle of an event"));
    else this.push(null);
  }

  #tooLong(): void {
    this.#fail(new AgentProtocolError(`the agent sent a watch event over ${WATCH_LIMITS.maxEventBytes} bytes`));
  }

  #fail(error: Error): void {
    if (this.#outcomeKnown) return;
    this.#outcomeKnown = true;
    this.destroy(error);
  }
}

const pathEventTypes = new Set(["create", "write", "remove"]);

function isGuestPath(value: unknown): value is string {
  return typeof value === "string" && value.startsWith("/") && value.length <= maxPathLength && !value.includes("\0");
}

/** One line of a watch stream from the (untrusted) guest, checked field by field; extra fields are refused. */
export function parseWatchEvent(line: Buffer): WatchEvent {
  let json: unknown;
  try {
    json = JSON.parse(line.toString("utf8"));
  } catch {
    throw new AgentProtocolError("the agent sent a watch event that is not JSON");
  }
  const malformed = () => new AgentProtocolError("malformed watch event from the agent");
  if (typeof json !== "object" || json === null || Array.isArray(json)) throw malformed();
  const { type, path, oldPath, isDirectory, ...extra } = json as Record<string, unknown>;
  if (Object.keys(extra).length > 0) throw malformed();
  if (type === "overflow") {
    if (path !== undefined || oldPath !== undefined || isDirectory !== undefined) throw malformed();
    return { type };
  }
  if (!isGuestPath(path) || typeof isDirectory !== "boolean") throw malformed();
  if (type === "rename") {
    if (!isGuestPath(oldPath)) throw malformed();
    return { type, path, oldPath, isDirectory };
  }
  if (typeof type !== "string" || !pathEventTypes.has(type) || oldPath !== undefined) throw malformed();
  return { type: type as "create" | "write" | "remove", path, isDirectory };
}
