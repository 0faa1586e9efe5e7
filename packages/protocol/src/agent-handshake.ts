import type { Duplex } from "node:stream";

/**
 * The line exchange that opens every host ↔ agent connection, before HTTP/2.
 *
 * The virtio-serial port is one byte pipe that outlives connections: bytes one side wrote for an earlier connection
 * (output still streaming when the host hung up, the frames a restarted agent never read, junk a guest process
 * wrote) can arrive at the start of the next one. So the host opens with a hello line carrying a fresh random
 * nonce; the agent skips everything before a well-formed hello and answers with a ready line echoing that nonce;
 * the host skips everything before the echo of its own nonce. Both sides then speak HTTP/2 from the byte after the
 * line. Which bytes are stale is decided by content, not by a quiet period.
 *
 * A stale byte stream may contain a hello (a file the tenant uploaded, say): the agent then answers a nonce nobody
 * waits for, which the host skips, and the host's real hello reaches an HTTP/2 session, which fails; the host hangs
 * up (the agent reads EOF and waits for a hello again) and retries. A guest can waste attempts, never be believed.
 */

/**
 * The host's first line: `CCHELLO1 <nonce>\n`. Its first three bytes read as a frame length of 0x434348 (far above
 * any frame size limit), so at a frame boundary a hello can never be mistaken for an HTTP/2 frame.
 */
export const AGENT_HELLO_PREFIX = Buffer.from("CCHELLO1 ", "latin1");
/** The agent's answer: `CCREADY1 <nonce>\n`, the nonce copied from the hello. */
export const AGENT_READY_PREFIX = Buffer.from("CCREADY1 ", "latin1");

export const AGENT_HANDSHAKE_LIMITS = {
  /** Random bytes in a nonce; written as twice as many lowercase hex digits. */
  nonceBytes: 16,
  /** Longest handshake line, newline included; a longer candidate is junk. */
  maxLineBytes: 64,
  /** Most bytes the host skips while waiting for its echo: a guest that sends more is not stale, it is hostile. */
  maxSkippedBytes: 16 * 1024 * 1024,
} as const;

const nonceHexLength = AGENT_HANDSHAKE_LIMITS.nonceBytes * 2;
const newline = 0x0a;

/** Whether `nonce` is a well-formed nonce: exactly the expected number of lowercase hex digits. */
export function isHandshakeNonce(nonce: string): boolean {
  return nonce.length === nonceHexLength && /^[0-9a-f]+$/.test(nonce);
}

export function helloLine(nonce: string): Buffer {
  if (!isHandshakeNonce(nonce)) throw new RangeError("malformed handshake nonce");
  return Buffer.concat([AGENT_HELLO_PREFIX, Buffer.from(`${nonce}\n`, "latin1")]);
}

export function readyLine(nonce: string): Buffer {
  if (!isHandshakeNonce(nonce)) throw new RangeError("malformed handshake nonce");
  return Buffer.concat([AGENT_READY_PREFIX, Buffer.from(`${nonce}\n`, "latin1")]);
}

/** True if `bytes` begin with the hello prefix (or, when shorter, are a prefix of it). */
export function startsWithHello(bytes: Uint8Array): boolean {
  const length = Math.min(bytes.length, AGENT_HELLO_PREFIX.length);
  return length > 0 && Buffer.from(bytes.buffer, bytes.byteOffset, length).equals(AGENT_HELLO_PREFIX.subarray(0, length));
}

/** A handshake line found in a byte stream: its nonce and the bytes after it (the start of HTTP/2). */
export interface HandshakeLine {
  nonce: string;
  rest: Buffer;
}

/**
 * Finds the first well-formed `<prefix><nonce>\n` line in a byte stream that may begin with anything, in bounded
 * memory: at most one line's worth of bytes is kept between pushes. A candidate that is too long, has no newline
 * within the line limit or a malformed nonce is skipped like any other junk, and the search goes on after its
 * prefix. Once a line is found the scanner is spent; make a new one per connection.
 */
export class HandshakeLineScanner {
  #pending: Buffer = Buffer.alloc(0);
  #skipped = 0;
  #found = false;

  /** @param expectedNonce when given, only a line with exactly this nonce counts (the host's side). */
  constructor(
    private readonly prefix: Buffer,
    private readonly expectedNonce?: string,
  ) {}

  /** Bytes skipped so far (junk before the line, rejected candidates). */
  get skippedBytes(): number {
    return this.#skipped;
  }

  /** Feeds the next bytes; returns the line once it is complete, undefined while more bytes are needed. */
  push(chunk: Uint8Array): HandshakeLine | undefined {
    if (this.#found) throw new Error("the handshake line was already found");
    let buffer = this.#pending.length === 0 ? Buffer.from(chunk) : Buffer.concat([this.#pending, chunk]);
    for (;;) {
      const start = findPrefixCandidate(buffer, this.prefix);
      if (start < 0) {
        // No candidate at all: keep only a tail that could be the beginning of a prefix split across pushes.
        const keep = Math.min(buffer.length, this.prefix.length - 1);
        this.#skip(buffer.length - keep);
        this.#pending = Buffer.from(buffer.subarray(buffer.length - keep));
        return undefined;
      }
      this.#skip(start);
      buffer = buffer.subarray(start);
      if (buffer.length < this.prefix.length) {
        // A partial prefix at the very end.
        this.#pending = Buffer.from(buffer);
        return undefined;
      }
      const lineEnd = buffer.indexOf(newline, this.prefix.length);
      const limit = AGENT_HANDSHAKE_LIMITS.maxLineBytes;
      if (lineEnd < 0 && buffer.length < limit) {
        this.#pending = Buffer.from(buffer);
        return undefined;
      }
      if (lineEnd >= 0 && lineEnd < limit) {
        const nonce = buffer.subarray(this.prefix.length, lineEnd).toString("latin1");
        if (isHandshakeNonce(nonce) && (this.expectedNonce === undefined || nonce === this.expectedNonce)) {
          this.#found = true;
          this.#pending = Buffer.alloc(0);
          return { nonce, rest: Buffer.from(buffer.subarray(lineEnd + 1)) };
        }
      }
      // Not a handshake line: skip its first byte, so a real prefix inside the candidate is still found.
      this.#skip(1);
      buffer = buffer.subarray(1);
    }
  }

  #skip(bytes: number): void {
    this.#skipped += bytes;
  }
}

/**
 * Index of the first place in `buffer` where `prefix` starts, or where a prefix of it fills the end of the buffer
 * (it may continue in the next push); -1 if neither.
 */
function findPrefixCandidate(buffer: Buffer, prefix: Buffer): number {
  const whole = buffer.indexOf(prefix);
  if (whole >= 0) return whole;
  for (let start = Math.max(0, buffer.length - prefix.length + 1); start < buffer.length; start++) {
    const tail = buffer.subarray(start);
    if (tail.equals(prefix.subarray(0, tail.length))) return start;
  }
  return -1;
}

/** Why a host could not complete the handshake. */
export class AgentHandshakeError extends Error {
  constructor(
    readonly reason: "timeout" | "closed" | "flooded",
    message: string,
  ) {
    super(message);
    this.name = "AgentHandshakeError";
  }
}

/**
 * Sends a hello with `nonce` and consumes the stream up to and including the agent's echo of it. Resolves with the
 * stream paused and the bytes after the echo put back (unshift), so an HTTP/2 client reading it next starts exactly
 * at the agent's first frame. Rejects with {@link AgentHandshakeError} on timeout, on the stream ending, or when the
 * guest sends more than {@link AGENT_HANDSHAKE_LIMITS.maxSkippedBytes} before the echo.
 */
export function performHostHandshake(stream: Duplex, nonce: string, timeoutMs: number): Promise<void> {
  const scanner = new HandshakeLineScanner(AGENT_READY_PREFIX, nonce);
  const hello = helloLine(nonce);
  return new Promise<void>((resolve, reject) => {
    const finish = (error?: AgentHandshakeError, rest?: Buffer) => {
      clearTimeout(timer);
      stream.pause();
      stream.off("data", onData);
      stream.off("close", onClose);
      stream.off("end", onClose);
      stream.off("error", onError);
      if (error !== undefined) return reject(error);
      if (rest !== undefined && rest.length > 0) stream.unshift(rest);
      resolve();
    };
    const onData = (chunk: Buffer) => {
      const line = scanner.push(chunk);
      if (line !== undefined) return finish(undefined, line.rest);
      if (scanner.skippedBytes > AGENT_HANDSHAKE_LIMITS.maxSkippedBytes) {
        finish(new AgentHandshakeError("flooded", `the guest sent more than ${AGENT_HANDSHAKE_LIMITS.maxSkippedBytes} bytes before answering the handshake`));
      }
    };
    const onClose = () => finish(new AgentHandshakeError("closed", "the agent connection closed during the handshake"));
    const onError = (error: Error) => finish(new AgentHandshakeError("closed", `the agent connection failed during the handshake: ${error.message}`));
    const timer = setTimeout(() => finish(new AgentHandshakeError("timeout", `the agent did not answer the handshake within ${timeoutMs} ms`)), timeoutMs);
    stream.on("data", onData);
    stream.on("close", onClose);
    stream.on("end", onClose);
    stream.on("error", onError);
    stream.write(hello);
  });
}

/**
 * The agent's half over a stream that carries one connection (a Unix socket in tests; the guest agent itself works
 * on the port's raw bytes, see its session loop): skips everything before a well-formed hello, answers it, and
 * resolves with the stream paused and the bytes after the hello put back, for an HTTP/2 server to read next.
 * Rejects with {@link AgentHandshakeError} if the stream ends first or nothing arrives within `timeoutMs`.
 */
export function answerHostHandshake(stream: Duplex, timeoutMs = 30_000): Promise<void> {
  const scanner = new HandshakeLineScanner(AGENT_HELLO_PREFIX);
  return new Promise<void>((resolve, reject) => {
    const finish = (error?: AgentHandshakeError, line?: HandshakeLine) => {
      clearTimeout(timer);
      stream.pause();
      stream.off("data", onData);
      stream.off("close", onClose);
      stream.off("end", onClose);
      stream.off("error", onClose);
      if (error !== undefined || line === undefined) return reject(error);
      if (line.rest.length > 0) stream.unshift(line.rest);
      stream.write(readyLine(line.nonce));
      resolve();
    };
    const onData = (chunk: Buffer) => {
      const line = scanner.push(chunk);
      if (line !== undefined) finish(undefined, line);
    };
    const onClose = () => finish(new AgentHandshakeError("closed", "the host's connection ended before its hello"));
    const timer = setTimeout(() => finish(new AgentHandshakeError("timeout", `no hello from the host within ${timeoutMs} ms`)), timeoutMs);
    stream.on("data", onData);
    stream.on("close", onClose);
    stream.on("end", onClose);
    stream.on("error", onClose);
  });
}
