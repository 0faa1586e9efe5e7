import { constants as h2, type ClientHttp2Stream } from "node:http2";
import { Readable } from "node:stream";
import {
  EXEC_ID_HEADER,
  ExecRecordDecoder,
  ExecRecordFormatError,
  type ExecExit,
  type ExecRecord,
} from "@codecourier/protocol";
import type { AgentConnection } from "./connection.js";
import { AgentClientError, AgentDisconnectedError, AgentError, AgentExitedError, AgentProtocolError, CommandDetachedError } from "./errors.js";
import { parseCommandId, parseExecExit } from "./validate.js";

export interface AttachOptions {
  /**
   * Aborting resets the request. The agent then SIGKILLs the command's process group, unless it is a background
   * command: that one keeps running, only this handle lets go of it.
   */
  signal?: AbortSignal;
}

export interface ExecOptions extends AttachOptions {
  /** The command's stdin. Omitted: stdin is empty (EOF at once). A Readable is streamed with backpressure. */
  stdin?: Readable | Buffer | string;
}

/** @internal What a handle asks of the agent about its command, by id (AgentClient's requests). */
export interface CommandControl {
  signal(id: string, signal: string): Promise<void>;
  resize(id: string, rows: number, cols: number): Promise<void>;
}

/** Buffered per output stream before the HTTP/2 stream is paused (which, in turn, pauses the guest's child). */
const outputHighWaterMark = 64 * 1024;

const ignore = () => {};

/** A readable side of a command (stdout or stderr). It never emits 'error': failures surface through wait(). */
class CommandOutput extends Readable {
  constructor(private readonly onDemand: () => void) {
    super({ highWaterMark: outputHighWaterMark });
  }

  override _read(): void {
    this.onDemand();
  }
}

/**
 * A command running in the guest.
 *
 * stdout and stderr are separate streams fed from one HTTP/2 response: if either is not consumed, the response is
 * paused, the HTTP/2 window fills up and the agent stops reading the child's pipes, so the child blocks — the
 * same backpressure a local child process has. Consume both (or use AgentClient.run) to avoid stalling.
 * wait() resolves only after the exit record, which comes after all output.
 *
 * A handle of a background command (ExecSpec.background) sees its output only while attached: from exec() until
 * the session ends, or from AgentClient.attach(). If another attach takes over, wait() rejects with
 * CommandDetachedError and the command runs on.
 */
export class CommandHandle {
  /** Resolves with the agent's command id once the command has started (response headers received). */
  readonly id: Promise<string>;
  readonly stdout: Readable;
  readonly stderr: Readable;
  readonly #exit: Promise<ExecExit>;
  #resolveId: (id: string) => void = ignore;
  #rejectId: (error: Error) => void = ignore;
  #resolveExit: (exit: ExecExit) => void = ignore;
  #rejectExit: (error: Error) => void = ignore;

  readonly #connection: AgentConnection;
  readonly #control: CommandControl;
  readonly #decoder = new ExecRecordDecoder();
  /** Outputs whose buffers are full; the response is paused until this is empty. */
  readonly #blocked = new Set<Readable>();
  #request: ClientHttp2Stream | undefined;
  #exitRecord: ExecExit | undefined;
  #settled = false;
  /** The agent confirmed the start (sent the command's id). */
  #started = false;
  #readingErrorBody = false;
  #removeAbortListener = ignore;

  /** Set for attach: the id the response must carry. */
  readonly #expectedId: string | undefined;

  /** @internal Use AgentClient.exec() or AgentClient.attach(). */
  constructor(
    connection: AgentConnection,
    openRequest: (endStream: boolean) => ClientHttp2Stream,
    control: CommandControl,
    options: ExecOptions & { stdinEnabled: boolean; expectedId?: string },
  ) {
    this.#expectedId = options.expectedId;
    this.#connection = connection;
    this.#control = control;
    this.id = new Promise((resolve, reject) => ((this.#resolveId = resolve), (this.#rejectId = reject)));
    this.#exit = new Promise((resolve, reject) => ((this.#resolveExit = resolve), (this.#rejectExit = reject)));
    // Callers may never look at one of these; a rejection nobody awaits must not crash the host.
    this.id.catch(ignore);
    this.#exit.catch(ignore);
    this.stdout = new CommandOutput(() => this.#unblock(this.stdout));
    this.stderr = new CommandOutput(() => this.#unblock(this.stderr));
    // A consumer that destroys an output no longer wants it: its records are dropped from then on.
    this.stdout.on("close", () => this.#unblock(this.stdout));
    this.stderr.on("close", () => this.#unblock(this.stderr));

    const { signal } = options;
    if (signal?.aborted) {
      this.#fail(abortReason(signal));
      return;
    }
    if (signal !== undefined) {
      const onAbort = () => this.#fail(abortReason(signal));
      signal.addEventListener("abort", onAbort, { once: true });
      this.#removeAbortListener = () => signal.removeEventListener("abort", onAbort);
    }

    const stdin = options.stdinEnabled ? options.stdin : undefined;
    let request: ClientHttp2Stream;
    try {
      request = openRequest(stdin === undefined);
    } catch (error) {
      this.#fail(connection.failureOf(undefined, error));
      return;
    }
    this.#request = request;
    if (stdin !== undefined) this.#feedStdin(request, stdin);
    request.on("close", () => {
      if (!this.#readingErrorBody) this.#fail(connection.failureOf(request));
    });
    connection
      .responseHead(request)
      .then((head) => this.#onResponse(request, head.status, head.headers[EXEC_ID_HEADER]))
      .catch((error: unknown) => this.#fail(connection.failureOf(request, error)));
  }

  /** Resolves with the exit status once the command has finished and all its output has been received. */
  wait(): Promise<ExecExit> {
    return this.#exit;
  }

  /**
   * Signals the command's whole process group in the guest. A no-op once the command has finished or if it never
   * started.
   */
  async kill(signal: string = "SIGKILL"): Promise<void> {
    await this.#whileRunning((id) => this.#control.signal(id, signal));
  }

  /**
   * Sets the window size of the command's terminal (ExecSpec.pty); its foreground job gets SIGWINCH. A no-op once
   * the command has finished or if it never started. Fails with AgentError "bad_request" for a command without a
   * pty, RangeError for a size outside 1..TERMINAL_LIMITS.
   */
  async resize(rows: number, cols: number): Promise<void> {
    await this.#whileRunning((id) => this.#control.resize(id, rows, cols));
  }

  /** Sends a request about the running command; nothing once it has finished (or if it never started). */
  async #whileRunning(send: (id: string) => Promise<void>): Promise<void> {
    if (this.#settled) return;
    let id: string;
    try {
      id = await this.id;
    } catch {
      return;
    }
    if (this.#settled) return;
    try {
      await send(id);
    } catch (error) {
      if (error instanceof AgentError && error.code === "not_found") return; // it finished meanwhile
      throw error;
    }
  }

  /**
   * Abandons the command: resets its stream (the agent SIGKILLs the group, or for a background command only
   * detaches); wait() rejects with `reason`.
   */
  cancel(reason: AgentClientError = new AgentDisconnectedError("the command was cancelled")): void {
    this.#fail(reason);
  }

  async #onResponse(request: ClientHttp2Stream, status: number, idHeader: unknown): Promise<void> {
    if (status !== 200) {
      // The stream may close while the error body is read; the body's verdict is the one to report.
      this.#readingErrorBody = true;
      this.#fail(await this.#connection.errorResponse(request, status));
      return;
    }
    let id: string;
    try {
      id = parseCommandId(idHeader);
      if (this.#expectedId !== undefined && id !== this.#expectedId) {
        throw new AgentProtocolError(`attached to command ${this.#expectedId}, but the agent answered for ${id}`);
      }
    } catch (error) {
      this.#fail(error as AgentProtocolError, h2.NGHTTP2_PROTOCOL_ERROR);
      return;
    }
    this.#started = true;
    this.#resolveId(id);
    request.on("data", (chunk: Buffer) => this.#onData(chunk));
    request.on("end", () => {
      if (this.#exitRecord !== undefined) {
        this.#succeed(this.#exitRecord); // the last record: all output arrived before it
      } else {
        // Cut short by the session going away, or ended by the agent without an exit record.
        this.#fail(this.#connection.endFailure(request) ?? new AgentProtocolError("the exec stream ended without an exit record"));
      }
    });
  }

  #onData(chunk: Buffer): void {
    if (this.#settled) return;
    try {
      this.#decoder.push(chunk, (record) => this.#onRecord(record));
    } catch (error) {
      if (!(error instanceof ExecRecordFormatError) && !(error instanceof AgentProtocolError)) throw error;
      this.#fail(new AgentProtocolError(`malformed exec stream: ${error.message}`), h2.NGHTTP2_PROTOCOL_ERROR);
    }
  }

  #onRecord(record: ExecRecord): void {
    if (this.#settled) return; // e.g. detached by an earlier record of the same chunk
    if (this.#exitRecord !== undefined) throw new AgentProtocolError("data after the exit record");
    if (record.kind === "detached") {
      this.#fail(new CommandDetachedError("another attach took over the command's output; the command keeps running"));
      return;
    }
    if (record.kind === "exit") {
      let json: unknown;
      try {
        json = JSON.parse(Buffer.from(record.payload).toString("utf8"));
      } catch {
        throw new AgentProtocolError("exit record is not JSON");
      }
      this.#exitRecord = parseExecExit(json);
      return;
    }
    const output = record.kind === "stdout" ? this.stdout : this.stderr;
    if (output.destroyed) return;
    const bytes = Buffer.from(record.payload.buffer, record.payload.byteOffset, record.payload.byteLength);
    if (!output.push(bytes)) {
      this.#blocked.add(output);
      this.#request?.pause();
    }
  }

  #unblock(output: Readable): void {
    // Only undo our own pause: resuming a stream before its 'data' listener exists would drop data.
    if (!this.#blocked.delete(output)) return;
    if (this.#blocked.size === 0 && !this.#settled) this.#request?.resume();
  }

  #feedStdin(request: ClientHttp2Stream, stdin: Readable | Buffer | string): void {
    if (!(stdin instanceof Readable)) {
      request.end(stdin);
      return;
    }
    // pipe() pauses the source while the agent's window is full and ends the request body with the source.
    stdin.pipe(request);
    stdin.on("error", (error) => this.#fail(new AgentClientError(`the stdin source failed: ${error.message}`, { cause: error })));
    request.on("close", () => stdin.unpipe(request));
  }

  #succeed(exit: ExecExit): void {
    if (this.#settled) return;
    this.#settle();
    this.#resolveExit(exit);
    // The command is over; stop sending any stdin still in flight.
    if (this.#request !== undefined && !this.#request.closed) this.#request.close(h2.NGHTTP2_NO_ERROR);
  }

  #fail(error: Error, resetCode: number = h2.NGHTTP2_CANCEL): void {
    if (this.#settled) return;
    if (error instanceof AgentExitedError && this.#started) {
      // Not a lost connection to a command that may run on: the agent died, and guest-spawner SIGKILLed the
      // command's process group with it. That is its exit, and a reader of its output learns so.
      return this.#succeed({ exitCode: null, signal: "SIGKILL", timedOut: false });
    }
    this.#settle();
    this.#rejectId(error);
    this.#rejectExit(error);
    if (this.#request !== undefined && !this.#request.closed) this.#request.close(resetCode);
  }

  #settle(): void {
    this.#settled = true;
    this.#removeAbortListener();
    this.stdout.push(null);
    this.stderr.push(null);
  }
}

function abortReason(signal: AbortSignal): Error {
  return signal.reason instanceof Error ? signal.reason : new DOMException("The command was aborted", "AbortError");
}
