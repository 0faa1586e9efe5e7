import type { ApiCommandResult, ApiOutputEncoding } from "@codecourier/protocol/api";
import { CodeCourierError } from "./errors.js";

/** What a command run to completion gave: its exit status and its output, as text and as bytes. */
export interface CommandResult {
  exitCode: number | null;
  signal: string | null;
  timedOut: boolean;
  /** stdout as text (UTF-8; bytes that are not UTF-8 read as U+FFFD: see stdoutBytes for the exact bytes). */
  stdout: string;
  stderr: string;
  /** Exactly the bytes of stdout that were kept. */
  stdoutBytes: Uint8Array;
  stderrBytes: Uint8Array;
  /** Whether output past the cap (maxOutputBytes, default 1 MiB; or the server's per-tenant budget) was dropped. */
  stdoutTruncated: boolean;
  stderrTruncated: boolean;
  /** Bytes the stream produced in all, kept or not. */
  stdoutTotalBytes: number;
  stderrTotalBytes: number;
}

/** The parts of a result that code parsing a command's output (git, sync) reads. */
export type CommandOutcome = Pick<CommandResult, "exitCode" | "signal" | "timedOut" | "stdout" | "stderr">;

/** What a run-to-completion result holds per stream unless asked otherwise (the server's default cap). */
export const DEFAULT_COMMAND_OUTPUT_BYTES = 1024 * 1024;

/** The largest `maxOutputBytes` a run-to-completion request may ask for (the server's API_LIMITS.maxCommandOutputBytes). */
export const MAX_COMMAND_OUTPUT_BYTES = 16 * 1024 * 1024;

/** The server's answer, decoded: base64 streams become their bytes, text streams their UTF-8 bytes as well. */
export function decodeCommandResult(answer: ApiCommandResult): CommandResult {
  const stdout = decodeStream(answer.stdout, answer.stdoutEncoding);
  const stderr = decodeStream(answer.stderr, answer.stderrEncoding);
  return {
    exitCode: answer.exitCode,
    signal: answer.signal,
    timedOut: answer.timedOut,
    stdout: stdout.text,
    stderr: stderr.text,
    stdoutBytes: stdout.bytes,
    stderrBytes: stderr.bytes,
    // An older server sends neither flags nor counts: it sent everything.
    stdoutTruncated: answer.stdoutTruncated ?? false,
    stderrTruncated: answer.stderrTruncated ?? false,
    stdoutTotalBytes: answer.stdoutTotalBytes ?? stdout.bytes.length,
    stderrTotalBytes: answer.stderrTotalBytes ?? stderr.bytes.length,
  };
}

function decodeStream(value: string, encoding: ApiOutputEncoding | undefined): { text: string; bytes: Uint8Array } {
  if (encoding === "base64") {
    const bytes = base64ToBytes(value);
    return { text: new TextDecoder().decode(bytes), bytes };
  }
  return { text: value, bytes: new TextEncoder().encode(value) };
}

/**
 * For code that parses a command's whole output (git status, sync's listings): fails instead of parsing a cut one.
 * Such commands ask for the largest cap; output past even that is an error naming what was being done.
 */
export function requireWholeOutput<T extends CommandResult>(result: T, what: string): T {
  if (!result.stdoutTruncated && !result.stderrTruncated) return result;
  const stream = result.stdoutTruncated ? "stdout" : "stderr";
  const total = result.stdoutTruncated ? result.stdoutTotalBytes : result.stderrTotalBytes;
  throw new CodeCourierError(`${what}: the command's ${stream} (${total} bytes) is over the ${MAX_COMMAND_OUTPUT_BYTES}-byte cap of a command's answer`, {
    code: "output_too_large",
  });
}

/** base64 to bytes with web APIs only (atob), so the SDK runs as it is on Node, Bun and Deno. */
export function base64ToBytes(base64: string): Uint8Array {
  const binary = atob(base64);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/** Joins pieces of bytes into one array. */
export function concatBytes(pieces: readonly Uint8Array[]): Uint8Array {
  const total = pieces.reduce((sum, piece) => sum + piece.length, 0);
  const joined = new Uint8Array(total);
  let offset = 0;
  for (const piece of pieces) {
    joined.set(piece, offset);
    offset += piece.length;
  }
  return joined;
}
