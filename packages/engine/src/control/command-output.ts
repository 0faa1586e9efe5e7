import { isUtf8 } from "node:buffer";
import { Readable } from "node:stream";
import { setImmediate as nextTurn } from "node:timers/promises";
import type { ApiOutputEncoding } from "@codecourier/protocol/api";
import type { ExecSpec } from "@codecourier/protocol";
import type { AgentClient, RunResult } from "../agent-client/index.js";
import type { OutputBudget } from "./output-budget.js";
import { spawnErrorLine } from "./processes.js";

/**
 * Run-to-completion commands (POST …/commands): their output is collected up to a cap per stream, counted against
 * the tenant's output budget while it is held, and answered as JSON written piece by piece, so that neither one
 * big answer nor many at once hold the server's memory or its event loop.
 */

/**
 * A finished command's outcome (a spawn error is folded into stderr), holding its collected output until the
 * answer has been sent.
 */
export interface CompletedCommand extends Omit<RunResult, "spawnError"> {
  /** Gives the collected output's bytes back to the budget; idempotent. */
  release(): void;
}

/**
 * Runs a command to completion, keeping at most `maxOutputBytes` of each stream and only what the tenant's budget
 * grants; the rest is read from the guest and discarded, so the command still runs to its end. The caller must
 * release() the result (the JSON answer does once it has been sent).
 */
export async function runToCompletion(
  agent: AgentClient,
  spec: ExecSpec,
  options: { stdin?: string; maxOutputBytes: number; budget: OutputBudget },
): Promise<CompletedCommand> {
  const { budget } = options;
  let reservedBytes = 0;
  let released = false;
  const release = () => {
    if (released) return;
    released = true;
    budget.release(reservedBytes);
  };
  const reserveOutput = (bytes: number) => {
    const granted = budget.reserve(bytes);
    reservedBytes += granted;
    return granted;
  };
  try {
    const result = await agent.run(spec, {
      ...(options.stdin === undefined ? {} : { stdin: options.stdin }),
      maxOutputBytes: options.maxOutputBytes,
      overflow: "truncate",
      reserveOutput,
    });
    // A command that could not start says why where a shell would: on its stderr (a line, not counted as budget).
    const stderr = result.spawnError === undefined ? result.stderr : Buffer.concat([result.stderr, Buffer.from(spawnErrorLine(result.spawnError))]);
    return {
      exitCode: result.exitCode,
      signal: result.signal,
      timedOut: result.timedOut,
      stdout: result.stdout,
      stderr,
      stdoutTotalBytes: result.stdoutTotalBytes,
      stderrTotalBytes: result.stderrTotalBytes + (stderr.length - result.stderr.length),
      stdoutTruncated: result.stdoutTruncated,
      stderrTruncated: result.stderrTruncated,
      release,
    };
  } catch (error) {
    release();
    throw error;
  }
}

/** Bytes scanned between turns of the event loop when deciding how to encode output. */
const scanSliceBytes = 1024 * 1024;
/** Raw bytes per piece of a base64 string in the answer (a multiple of 3, so pieces join without padding). */
const base64PieceBytes = 3 * 16 * 1024;
/** Raw bytes (at most) per piece of a text string in the answer. */
const textPieceBytes = 64 * 1024;

/** Extra bytes JSON needs for each byte value: 5 for control characters (\u00XX), 1 for \b \t \n \f \r " and \\. */
const jsonEscapeExtra = (() => {
  const extra = new Uint8Array(256);
  for (let byte = 0; byte < 0x20; byte++) extra[byte] = 5;
  for (const byte of [0x08, 0x09, 0x0a, 0x0c, 0x0d, 0x22, 0x5c]) extra[byte] = 1;
  return extra;
})();

/**
 * How a stream's bytes should travel: as text when they are UTF-8 without NUL bytes and their JSON string is no
 * bigger than base64's, else as base64 — so an answer is at most ~4/3 of the output, never the 6× of NULs or
 * control characters escaped one by one. Scans in slices, letting other work run between them.
 */
export async function chooseEncoding(bytes: Buffer): Promise<ApiOutputEncoding> {
  if (bytes.includes(0) || !isUtf8(bytes)) return "base64";
  let jsonBytes = bytes.length;
  for (let start = 0; start < bytes.length; start += scanSliceBytes) {
    if (start > 0) await nextTurn();
    const end = Math.min(bytes.length, start + scanSliceBytes);
    for (let i = start; i < end; i++) jsonBytes += jsonEscapeExtra[bytes[i]!]!;
  }
  return jsonBytes <= base64Length(bytes.length) ? "utf8" : "base64";
}

function base64Length(bytes: number): number {
  return 4 * Math.ceil(bytes / 3);
}

/** Output cut at the cap may end inside a character: those bytes are dropped, so cut text still reads as text. */
export function withoutPartialCharacter(bytes: Buffer): Buffer {
  // A UTF-8 character is at most 4 bytes: look at the last 3 for a lead byte whose character is incomplete.
  for (let back = 1; back <= Math.min(3, bytes.length); back++) {
    const byte = bytes[bytes.length - back]!;
    if ((byte & 0xc0) === 0x80) continue; // a continuation byte: keep looking for its lead
    const needed = byte >= 0xf0 ? 4 : byte >= 0xe0 ? 3 : byte >= 0xc0 ? 2 : 1;
    return needed > back ? bytes.subarray(0, bytes.length - back) : bytes;
  }
  return bytes;
}

/** The contents of a JSON string (no quotes) holding `bytes` as `encoding` says, in pieces. */
export function* jsonStringPieces(bytes: Buffer, encoding: ApiOutputEncoding): Generator<string> {
  if (encoding === "base64") {
    for (let start = 0; start < bytes.length; start += base64PieceBytes) yield bytes.toString("base64", start, Math.min(bytes.length, start + base64PieceBytes));
    return;
  }
  let start = 0;
  while (start < bytes.length) {
    let end = Math.min(bytes.length, start + textPieceBytes);
    // Cut between characters, never inside one (a continuation byte is 10xxxxxx).
    while (end < bytes.length && end > start && (bytes[end]! & 0xc0) === 0x80) end--;
    yield JSON.stringify(bytes.toString("utf8", start, end)).slice(1, -1);
    start = end;
  }
}

/**
 * The command's answer (the CommandResult schema) as a stream of JSON text, written a piece at a time as the
 * client reads it, so a 16 MiB output is never one big string or one long stall. Releases the output's budget
 * once the answer has been sent or abandoned.
 */
export function commandResultJson(command: CompletedCommand): Readable {
  async function* pieces(): AsyncGenerator<string> {
    const stdout = command.stdoutTruncated ? withoutPartialCharacter(command.stdout) : command.stdout;
    const stderr = command.stderrTruncated ? withoutPartialCharacter(command.stderr) : command.stderr;
    const stdoutEncoding = await chooseEncoding(stdout);
    const stderrEncoding = await chooseEncoding(stderr);
    const head = {
      exitCode: command.exitCode,
      signal: command.signal,
      timedOut: command.timedOut,
      stdoutEncoding,
      stderrEncoding,
      stdoutTruncated: command.stdoutTruncated,
      stderrTruncated: command.stderrTruncated,
      stdoutTotalBytes: command.stdoutTotalBytes,
      stderrTotalBytes: command.stderrTotalBytes,
    };
    yield `${JSON.stringify(head).slice(0, -1)},"stdout":"`;
    yield* jsonStringPieces(stdout, stdoutEncoding);
    yield `","stderr":"`;
    yield* jsonStringPieces(stderr, stderrEncoding);
    yield `"}`;
  }
  const stream = Readable.from(pieces(), { objectMode: false });
  stream.once("close", () => command.release());
  return stream;
}
