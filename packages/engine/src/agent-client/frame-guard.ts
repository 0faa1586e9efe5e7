import { Duplex } from "node:stream";
import { AGENT_LIMITS } from "@codecourier/protocol";
import { AgentDisconnectedError, AgentProtocolError } from "./errors.js";

const frameHeaderBytes = 9;
const frameTypeSettings = 0x4;
const frameTypeGoaway = 0x7;
const flagAck = 0x1;
/** The client connection preface ("PRI * HTTP/2.0…") precedes the client's first frame. */
const clientPrefaceBytes = 24;
/** GOAWAY payload: last stream id (4 bytes), then the error code (4 bytes). */
const goawayCodeEnd = 8;

interface FrameHeader {
  length: number;
  type: number;
  flags: number;
}

/**
 * Follows frame boundaries in one direction of an HTTP/2 byte stream, reading only the 9 byte headers (plus the
 * first 8 payload bytes of GOAWAY frames). Memory use is constant whatever the input.
 */
class FrameScanner {
  #skip: number;
  readonly #header = Buffer.alloc(frameHeaderBytes);
  #headerFilled = 0;
  #payloadLeft = 0;
  /** Collects the start of a GOAWAY payload when it spans chunks. */
  #goaway: { header: FrameHeader; bytes: Buffer; filled: number } | undefined;

  constructor(
    skipFirst: number,
    private readonly onHeader: (header: FrameHeader) => void,
    private readonly onGoawayCode: (code: number) => void,
  ) {
    this.#skip = skipFirst;
  }

  scan(chunk: Buffer): void {
    let offset = Math.min(this.#skip, chunk.length);
    this.#skip -= offset;
    while (offset < chunk.length) {
      if (this.#payloadLeft > 0) {
        const take = Math.min(this.#payloadLeft, chunk.length - offset);
        this.#collectGoaway(chunk.subarray(offset, offset + take));
        this.#payloadLeft -= take;
        offset += take;
        continue;
      }
      const take = Math.min(frameHeaderBytes - this.#headerFilled, chunk.length - offset);
      chunk.copy(this.#header, this.#headerFilled, offset, offset + take);
      this.#headerFilled += take;
      offset += take;
      if (this.#headerFilled < frameHeaderBytes) return;
      this.#headerFilled = 0;
      const header = { length: this.#header.readUIntBE(0, 3), type: this.#header[3] ?? 0, flags: this.#header[4] ?? 0 };
      this.onHeader(header);
      this.#payloadLeft = header.length;
      if (header.type === frameTypeGoaway && header.length >= goawayCodeEnd) {
        this.#goaway = { header, bytes: Buffer.alloc(goawayCodeEnd), filled: 0 };
      }
    }
  }

  #collectGoaway(payload: Buffer): void {
    const goaway = this.#goaway;
    if (goaway === undefined) return;
    const take = Math.min(goawayCodeEnd - goaway.filled, payload.length);
    payload.copy(goaway.bytes, goaway.filled, 0, take);
    goaway.filled += take;
    if (goaway.filled === goawayCodeEnd) {
      this.#goaway = undefined;
      this.onGoawayCode(goaway.bytes.readUInt32BE(4));
    }
  }
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
  readonly #fromGuest: FrameScanner;
  readonly #toGuest: FrameScanner;
  #sawFirstFrame = false;

  constructor(
    inner: Duplex,
    private readonly onViolation: (error: AgentProtocolError) => void,
  ) {
    super({ allowHalfOpen: false });
    this.#inner = inner;
    this.#fromGuest = new FrameScanner(0, (header) => this.#checkGuestFrame(header), () => {});
    this.#toGuest = new FrameScanner(clientPrefaceBytes, () => {}, (code) => {
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

  #checkGuestFrame(header: FrameHeader): void {
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
