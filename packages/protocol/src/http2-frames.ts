/**
 * Following HTTP/2 frame boundaries in a byte stream without an HTTP/2 stack: both ends of the agent protocol
 * need it (the agent to recognise a new host at a frame boundary, the host to police the guest's frames).
 */

/** Every HTTP/2 connection from a client starts with these 24 bytes, then the client's SETTINGS frame. */
export const HTTP2_CLIENT_PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");
export const HTTP2_FRAME_HEADER_BYTES = 9;

export interface Http2FrameHeader {
  length: number;
  type: number;
  flags: number;
}

/**
 * Tracks frame boundaries in one direction of an HTTP/2 byte stream in constant memory: it reads the 9 byte
 * headers and hands each payload slice to `onPayload` as it passes (a payload may arrive in several slices).
 */
export class Http2FrameScanner {
  #skip: number;
  readonly #header = Buffer.alloc(HTTP2_FRAME_HEADER_BYTES);
  #headerFilled = 0;
  #payloadLeft = 0;

  /** @param skipFirst bytes before the first frame (the client preface, for the client → server direction). */
  constructor(
    skipFirst: number,
    private readonly onHeader: (header: Http2FrameHeader) => void = () => {},
    private readonly onPayload: (slice: Buffer) => void = () => {},
  ) {
    this.#skip = skipFirst;
  }

  /** True between frames (and after the skipped prefix). */
  get atBoundary(): boolean {
    return this.#skip === 0 && this.#headerFilled === 0 && this.#payloadLeft === 0;
  }

  scan(chunk: Buffer): void {
    let offset = Math.min(this.#skip, chunk.length);
    this.#skip -= offset;
    while (offset < chunk.length) {
      if (this.#payloadLeft > 0) {
        const take = Math.min(this.#payloadLeft, chunk.length - offset);
        this.#payloadLeft -= take;
        this.onPayload(chunk.subarray(offset, offset + take));
        offset += take;
        continue;
      }
      const take = Math.min(HTTP2_FRAME_HEADER_BYTES - this.#headerFilled, chunk.length - offset);
      chunk.copy(this.#header, this.#headerFilled, offset, offset + take);
      this.#headerFilled += take;
      offset += take;
      if (this.#headerFilled < HTTP2_FRAME_HEADER_BYTES) return;
      this.#headerFilled = 0;
      const header = { length: this.#header.readUIntBE(0, 3), type: this.#header[3] ?? 0, flags: this.#header[4] ?? 0 };
      this.#payloadLeft = header.length;
      this.onHeader(header);
    }
  }
}
