import type { ServerHttp2Stream } from "node:http2";
import {
  AGENT_LIMITS,
  EXEC_ID_HEADER,
  EXEC_RECORDS_CONTENT_TYPE,
  OutputKind,
  encodeRecord,
  type ExecExit,
} from "@codecourier/protocol";

/** Starts an exec-records response: the same headers for exec and attach. */
export function respondWithRecords(stream: ServerHttp2Stream, commandId: string): void {
  stream.respond({ ":status": 200, "content-type": EXEC_RECORDS_CONTENT_TYPE, [EXEC_ID_HEADER]: commandId });
}

/** Ends a records response with the exit record. */
export function endWithExit(stream: ServerHttp2Stream, exit: ExecExit): void {
  stream.end(encodeRecord(OutputKind.exit, Buffer.from(JSON.stringify(exit), "utf8")));
  // The host may still be sending stdin; drain it so the stream can close.
  stream.resume();
}

/**
 * The response stream a command's output currently goes to: the exec stream that started it or, for a
 * background command, the stream of its latest attach. Headers must already have been sent.
 */
export class Attachment {
  constructor(readonly stream: ServerHttp2Stream) {}

  get isOpen(): boolean {
    return !this.stream.destroyed && !this.stream.closed && this.stream.writable;
  }

  /**
   * Writes output as records of at most AGENT_LIMITS.maxOutputRecord bytes. Returns false when the stream's
   * buffer is full: the caller should stop reading the child's pipes until whenWritable() fires.
   */
  writeOutput(kind: typeof OutputKind.stdout | typeof OutputKind.stderr, chunk: Buffer): boolean {
    let writable = true;
    for (let offset = 0; offset < chunk.length; offset += AGENT_LIMITS.maxOutputRecord) {
      const payload = chunk.subarray(offset, offset + AGENT_LIMITS.maxOutputRecord);
      writable = this.stream.write(encodeRecord(kind, payload));
    }
    return writable;
  }

  /** Calls `resume` once the stream's buffer has drained. Never fires if the stream closes first. */
  whenWritable(resume: () => void): void {
    this.stream.once("drain", resume);
  }

  /** Ends the response with the command's exit record. */
  end(exit: ExecExit): void {
    if (this.isOpen) endWithExit(this.stream, exit);
  }

  /** Ends the response because another attachment took over; the command keeps running. */
  detach(): void {
    if (!this.isOpen) return;
    this.stream.end(encodeRecord(OutputKind.detached, new Uint8Array(0)));
    this.stream.resume();
  }
}
