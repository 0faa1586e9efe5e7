import { Duplex } from "node:stream";
import { logProblem } from "../log.js";
import type { PortIo } from "./port-io.js";
import { AGENT_HELLO_PREFIX, HTTP2_CLIENT_PREFACE, HandshakeLineScanner, Http2FrameScanner, readyLine, startsWithHello } from "@codecourier/protocol";

const defaultPollIntervalMs = 20;
const readBufferBytes = 64 * 1024;
/**
 * Most unconsumed input one session may queue. Far above what flow control lets an honest host send ahead (the
 * session's receive window plus headers of new requests), far below the guest's memory.
 */
const maxQueuedInputBytes = 32 * 1024 * 1024;

export interface SessionLoopOptions {
  /** How often to poll the port while no host is connected (reads return EOF at once then). */
  pollIntervalMs?: number;
  /** Stops the loop (for tests); checked between reads. */
  signal?: AbortSignal;
}

/** Something that can end a session early, e.g. the AgentSession returned by Agent.serveSession. */
export interface ServedSession {
  close(): void;
}

/**
 * Serves one session after another over a virtio-serial port.
 *
 * The port has no "accept": while no host is connected, read() returns 0 bytes immediately and repeatedly. So EOF
 * ends the current session and the loop polls until bytes arrive again. A new connection starts with the host's
 * handshake hello (packages/protocol/src/agent-handshake.ts): every byte before a well-formed hello is skipped
 * (stale frames of a host that left, junk), the agent answers with the ready line echoing the hello's nonce, and
 * the bytes after the hello start a new HTTP/2 session. This is what lets a host reconnect to the same running
 * agent, and a restarted agent serve the host that was connected to its predecessor.
 */
export async function runSessionLoop(
  port: PortIo,
  serve: (duplex: Duplex) => ServedSession | void,
  options: SessionLoopOptions = {},
): Promise<void> {
  const pollIntervalMs = options.pollIntervalMs ?? defaultPollIntervalMs;
  const writer = new PortWriter(port);
  const buffer = Buffer.allocUnsafe(readBufferBytes);
  let current: { stream: PortSessionStream; session: ServedSession | void } | undefined;
  /** While no session runs: looks for the next host's hello. */
  let awaitingHello: HandshakeLineScanner | undefined;
  let lastReadError: string | undefined;
  const endSession = () => {
    current?.stream.hostDisconnected();
    current?.session?.close();
    current = undefined;
  };

  while (!options.signal?.aborted) {
    let bytesRead: number;
    try {
      bytesRead = await port.read(buffer);
      lastReadError = undefined;
    } catch (error) {
      // Polled every few ms: report each distinct failure once instead of flooding the console.
      const description = String(error);
      if (description !== lastReadError) logProblem("port read failed", error);
      lastReadError = description;
      await sleep(pollIntervalMs);
      continue;
    }
    if (bytesRead === 0) {
      // No host: whatever a half-received hello had collected belonged to a connection that is gone.
      endSession();
      awaitingHello = undefined;
      await sleep(pollIntervalMs);
      continue;
    }
    // Copy: the read buffer is reused for the next read while the session may still hold these bytes.
    let bytes: Buffer = Buffer.from(buffer.subarray(0, bytesRead));
    // Each round either hands the bytes to a session or consumes a whole hello line, so this ends.
    while (bytes.length > 0) {
      if (current !== undefined && current.stream.isNewConnection(bytes)) {
        // The host left and a new one connected before this loop saw the EOF in between (the driver only reports
        // "no host" to a read that runs while none is connected). The old session ends as if it had seen the EOF.
        endSession();
      }
      if (current === undefined) {
        awaitingHello ??= new HandshakeLineScanner(AGENT_HELLO_PREFIX);
        const hello = awaitingHello.push(bytes);
        if (hello === undefined) break;
        if (awaitingHello.skippedBytes > 0) logProblem(`skipped ${awaitingHello.skippedBytes} stale bytes before the host's handshake`);
        awaitingHello = undefined;
        current = startSession(writer, serve, hello.nonce);
        bytes = hello.rest;
        continue;
      }
      // A session that ended on our side (protocol error, GOAWAY) swallows the rest of this connection until EOF
      // or the next hello at its start.
      current.stream.deliver(bytes);
      break;
    }
  }
  endSession();
}

/** Answers a hello and starts the session that serves the bytes after it. */
function startSession(
  writer: PortWriter,
  serve: (duplex: Duplex) => ServedSession | void,
  nonce: string,
): { stream: PortSessionStream; session: ServedSession | void } {
  const stream = new PortSessionStream(writer);
  // Queued before the session's first frame (the writer keeps the order).
  stream.sendRaw(readyLine(nonce));
  let session: ServedSession | void = undefined;
  try {
    session = serve(stream);
  } catch (error) {
    logProblem("could not start a session", error);
    stream.destroy();
  }
  return { stream, session };
}

/**
 * Serializes writes to the port across sessions. A write that a session queued but that had not started when its
 * host disconnected is dropped: otherwise it would block until the next host connects and then corrupt that new
 * connection's byte stream. (A write already inside the kernel cannot be recalled; it reaches the next host before
 * this agent's ready line, and the host skips everything before that line: see the handshake.)
 */
class PortWriter {
  #tail: Promise<void> = Promise.resolve();

  constructor(private readonly port: PortIo) {}

  write(data: Uint8Array, stillWanted: () => boolean): Promise<void> {
    const done = this.#tail.then(async () => {
      let offset = 0;
      while (offset < data.length && stillWanted()) {
        offset += await this.port.write(data.subarray(offset));
      }
    });
    this.#tail = done.catch(() => undefined);
    return done;
  }
}

/**
 * The Duplex one HTTP/2 session runs over: reads are fed by the session loop, writes go to the shared port.
 *
 * Incoming bytes are pushed without waiting for the session to want them. The loop must keep reading the port
 * no matter what the session does, because reading is the only way to notice that the host went away (Node's
 * HTTP/2 layer stops reading while one of its writes is pending, and a write to a port whose host has gone blocks
 * until some host connects: waiting for the session here would deadlock). Memory stays bounded because HTTP/2 flow
 * control limits what an honest host sends ahead; a host that floods past {@link maxQueuedInputBytes} loses its
 * session.
 */
class PortSessionStream extends Duplex {
  #hostGone = false;
  #deliveredBytes = 0;
  /** Frame boundaries of the bytes this session's host sent (preface first). */
  readonly #frames = new Http2FrameScanner(HTTP2_CLIENT_PREFACE.length);

  constructor(private readonly writer: PortWriter) {
    super({ allowHalfOpen: false });
  }

  /**
   * Whether `bytes` are the start of a new host connection rather than more of this one: they begin with the
   * handshake hello, and this session has ended or its host's bytes so far end on a frame boundary. (At a frame
   * boundary a hello cannot be a frame: its first bytes read as a length far above the frame size limit, so no
   * byte stream of a live connection looks like this.)
   */
  isNewConnection(bytes: Buffer): boolean {
    if (!startsWithHello(bytes)) return false;
    // Nothing yet: a hello right after a hello is the real host's after one a stale byte stream happened to hold.
    return this.destroyed || this.#hostGone || this.#deliveredBytes === 0 || this.#frames.atBoundary;
  }

  deliver(bytes: Buffer): void {
    if (this.destroyed || this.#hostGone) return;
    this.#deliveredBytes += bytes.length;
    this.#frames.scan(bytes);
    this.push(bytes);
    if (this.readableLength > maxQueuedInputBytes) {
      logProblem(`host sent more than ${maxQueuedInputBytes} bytes the session did not consume; dropping the session`);
      this.destroy();
    }
  }

  /** Writes bytes outside HTTP/2 (the handshake's ready line), in order with the session's own writes. */
  sendRaw(data: Uint8Array): void {
    this.writer.write(data, () => !this.#hostGone).catch((error: unknown) => logProblem("port write failed", error));
  }

  /** EOF on the port: the host is gone. Nothing more is written for this session. */
  hostDisconnected(): void {
    this.#hostGone = true;
    this.push(null);
    this.destroy();
  }

  override _read(): void {
    // Data is pushed by the session loop as it arrives.
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.#send(chunk, callback);
  }

  override _writev(chunks: Array<{ chunk: Buffer }>, callback: (error?: Error | null) => void): void {
    // HTTP/2 emits many small frames at once; one write(2) for all of them matters under slow emulation.
    this.#send(Buffer.concat(chunks.map(({ chunk }) => chunk)), callback);
  }

  #send(data: Buffer, callback: (error?: Error | null) => void): void {
    if (this.#hostGone) return callback();
    this.writer.write(data, () => !this.#hostGone).then(
      () => callback(),
      (error: Error) => callback(error),
    );
  }

  override _final(callback: (error?: Error | null) => void): void {
    callback();
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
