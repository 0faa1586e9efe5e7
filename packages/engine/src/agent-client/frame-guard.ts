import { Duplex } from "node:stream";
import { AGENT_LIMITS, HTTP2_CLIENT_PREFACE, Http2FrameScanner, type Http2FrameHeader } from "@codecourier/protocol";
import { AgentDisconnectedError, AgentProtocolError } from "./errors.js";

const frameTypeSettings = 0x4;
const frameTypeGoaway = 0x7;
const flagAck = 0x1;
/** GOAWAY payload: last stream id (4 bytes), then the error code (4 bytes). */
const goawayCodeEnd = 8;

/**
 * Watches our own outgoing frames for a GOAWAY and reports its error code (the payload's first 8 bytes may
 * arrive in pieces).
 */
function goawayWatcher(onGoawayCode: (code: number) => void): Http2FrameScanner {
  let collecting: { bytes: Buffer; filled: number } | undefined;
  return new Http2FrameScanner(
    HTTP2_CLIENT_PREFACE.length,
    (header) => {
      collecting = header.type === frameTypeGoaway && header.length >= goawayCodeEnd ? { bytes: Buffer.alloc(goawayCodeEnd), filled: 0 } : undefined;
    },
    (slice) => {
      if (collecting === undefined) return;
      const take = Math.min(goawayCodeEnd - collecting.filled, slice.length);
      slice.copy(collecting.bytes, collecting.filled, 0, take);
      collecting.filled += take;
      if (collecting.filled === goawayCodeEnd) {
        const code = collecting.bytes.readUInt32BE(4);
        collecting = undefined;
        onGoawayCode(code);
      }
    },
  );
}

/**
 * A pass-through Duplex between the HTTP/2 client and the socket to the guest, watching frame headers both ways.
 *
 * Why: when nghttp2 detects some connection errors (e.g. an oversized frame header) it sends GOAWAY and ignores all
 * further input, but Node's http2 layer does not surface that, so pending requests would hang until their
 * timeouts. Here the guest's frames are checked for the basics (first frame SETTINGS, length within the
 * advertised maximum), and a GOAWAY with an error code that our own HTTP/2 stack sends means it rejected the
 * guest's data; either way the connection is failed at once with an {@link AgentProtocolError}.
 */
export class Http2FrameGuard extends Duplex {
  readonly #inner: Duplex;
  readonly #fromGuest: Http2FrameScanner;
  readonly #toGuest: Http2FrameScanner;
  #sawFirstFrame = false;

  constructor(
    inner: Duplex,
    private readonly onViolation: (error: AgentProtocolError) => void,
  ) {
    super({ allowHalfOpen: false });
    this.#inner = inner;
    this.#fromGuest = new Http2FrameScanner(0, (header) => this.#checkGuestFrame(header));
    this.#toGuest = goawayWatcher((code) => {
      if (code !== 0) this.#violation(`the HTTP/2 stack rejected the agent's data (GOAWAY error code ${code})`);
    });

    inner.on("data", (chunk: Buffer) => {
      if (this.destroyed) return;
      this.#fromGuest.scan(chunk);
      if (!this.destroyed && !this.push(chunk)) inner.pause();
    });
    inner.on("end", () => this.push(null));
    inner.on("error", (error) => this.destroy(new AgentDisconnectedError(`agent connection failed: ${error.message}`, { cause: error })));
    inner.on("close", () => this.destroy());
  }

  #checkGuestFrame(header: Http2FrameHeader): void {
    if (!this.#sawFirstFrame) {
      this.#sawFirstFrame = true;
      if (header.type !== frameTypeSettings || (header.flags & flagAck) !== 0) {
        return this.#violation("the agent did not start with an HTTP/2 SETTINGS frame");
      }
    }
    if (header.length > AGENT_LIMITS.maxFrameSize) {
      this.#violation(`the agent sent a ${header.length} byte frame (limit ${AGENT_LIMITS.maxFrameSize})`);
    }
  }

  #violation(message: string): void {
    if (this.destroyed) return;
    const error = new AgentProtocolError(message);
    // Destroyed first, so the failing session sends nothing more to the guest (no GOAWAY; see AgentClient.close).
    this.destroy(error);
    this.onViolation(error);
  }

  override _read(): void {
    this.#inner.resume();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.#toGuest.scan(chunk);
    if (this.destroyed) return callback();
    this.#inner.write(chunk, callback);
  }

  override _final(callback: (error?: Error | null) => void): void {
    this.#inner.end(callback);
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.#inner.destroy();
    callback(error);
  }
}
