import { RequestActivity } from "./request-activity.js";
import {
  constants as h2,
  type ClientHttp2Session,
  type ClientHttp2Stream,
  type IncomingHttpHeaders,
  type IncomingHttpStatusHeader,
  type OutgoingHttpHeaders,
} from "node:http2";
import { AGENT_LIMITS } from "@codecourier/protocol";
import {
  AgentClientError,
  AgentDisconnectedError,
  AgentError,
  AgentProtocolError,
  AgentTimeoutError,
} from "./errors.js";
import { parseErrorBody } from "./validate.js";

export type ResponseHeaders = IncomingHttpHeaders & IncomingHttpStatusHeader;

export interface BodyLimits {
  maxBytes: number;
  /** Absolute time (Date.now() scale) by which the whole body must have arrived. */
  deadline?: number;
  /** Longest silence allowed between chunks. */
  idleTimeoutMs?: number;
  /** The error for a body over maxBytes; default: a protocol error (the guest sent more than allowed). */
  tooLarge?: () => AgentClientError;
}

export interface ResponseHead {
  status: number;
  headers: ResponseHeaders;
}

/** Stream reset codes that mean "the guest broke HTTP/2", as opposed to a plain cancellation. */
const protocolResetCodes = new Set<number>([
  h2.NGHTTP2_PROTOCOL_ERROR,
  h2.NGHTTP2_FLOW_CONTROL_ERROR,
  h2.NGHTTP2_FRAME_SIZE_ERROR,
  h2.NGHTTP2_COMPRESSION_ERROR,
  h2.NGHTTP2_STREAM_CLOSED,
]);

/**
 * One HTTP/2 session to the agent plus the request plumbing every call shares: opening streams, bounded reads,
 * timeouts, and turning whatever went wrong into one of the typed agent errors.
 */
export class AgentConnection {
  /** Set once the whole session failed; every later stream failure reports this cause. */
  #failure: AgentClientError | undefined;
  readonly activity = new RequestActivity();
  /** Whether close() ended the session (the host hung up on purpose), rather than the guest or the transport. */
  #closedByHost = false;
  /** Resolves once the session has closed, with what ended it. */
  readonly ended: Promise<{ failure: AgentClientError; byHost: boolean }>;

  constructor(
    readonly session: ClientHttp2Session,
    readonly requestTimeoutMs: number,
  ) {
    session.on("error", (error) => this.#recordFailure(classify(error, "the agent session failed")));
    session.on("goaway", (code: number) => {
      if (code !== h2.NGHTTP2_NO_ERROR) this.#recordFailure(new AgentProtocolError(`the agent ended the session with error code ${code}`));
    });
    let settleEnded!: (outcome: { failure: AgentClientError; byHost: boolean }) => void;
    this.ended = new Promise((resolve) => (settleEnded = resolve));
    session.on("close", () => {
      this.#recordFailure(new AgentDisconnectedError("the agent session is closed"));
      settleEnded({ failure: this.#failure!, byHost: this.#closedByHost });
    });
  }

  get isClosed(): boolean {
    return this.session.closed || this.session.destroyed;
  }

  /** Fails the whole session (e.g. garbage on the wire) and tears it down. */
  fail(error: AgentClientError): void {
    this.#recordFailure(error);
    this.session.destroy();
  }

  #recordFailure(error: AgentClientError): void {
    this.#failure ??= error;
  }

  /**
   * Opens a request stream. Never emits an unhandled 'error': a no-op listener is attached at once. `listensOnly`:
   * a request whose response, once its headers are in, only waits on the guest changing (a file watch, open for as
   * long as its caller likes). From then on it no longer counts as in flight, so it does not keep the guest awake:
   * a guest whose vCPUs are stopped changes nothing until another request wakes it.
   */
  open(method: string, path: string, headers: OutgoingHttpHeaders = {}, endStream = true, { listensOnly = false } = {}): ClientHttp2Stream {
    if (this.#failure !== undefined) throw this.#failure;
    if (this.isClosed) throw new AgentDisconnectedError("the agent session is closed");
    // Before the request exists: a listener may send a request of its own that must reach the guest first.
    this.activity.requestStarting();
    let stream: ClientHttp2Stream;
    try {
      stream = this.session.request({ ":method": method, ":path": path, ...headers }, { endStream });
    } catch (error) {
      this.activity.requestEnded();
      throw this.failureOf(undefined, error);
    }
    stream.on("error", () => {
      // Errors are reported through the promises that use the stream; see failureOf().
    });
    let counted = true;
    const stopCounting = () => {
      if (counted) this.activity.requestEnded();
      counted = false;
    };
    stream.once("close", stopCounting);
    if (listensOnly) stream.once("response", stopCounting);
    return stream;
  }

  /**
   * Checks a stream that emitted 'end'. Node also ends a response's readable side, as if complete, when the session
   * goes away under it (closed by us, or the guest's end of the socket closed): a body cut short that way must not
   * pass for a whole one. Returns the failure to report, or undefined if the agent really ended the stream.
   */
  endFailure(stream: ClientHttp2Stream): AgentClientError | undefined {
    if (this.#failure === undefined && !this.isClosed) return undefined;
    return this.failureOf(stream);
  }

  /** The error that best explains why `stream` ended abnormally. */
  failureOf(stream: ClientHttp2Stream | undefined, error?: unknown): AgentClientError {
    if (this.#failure !== undefined) return this.#failure;
    if (error instanceof AgentClientError) return error;
    if (error !== undefined && hasCode(error, "ERR_HTTP2_ERROR")) return classify(error, "HTTP/2 error");
    const resetCode = stream?.rstCode;
    if (resetCode !== undefined && protocolResetCodes.has(resetCode)) {
      return new AgentProtocolError(`the request was reset with HTTP/2 error code ${resetCode}`, { cause: error });
    }
    if (resetCode === h2.NGHTTP2_INTERNAL_ERROR && !this.isClosed) {
      return new AgentError("internal", "the agent aborted the response", 500);
    }
    if (resetCode === h2.NGHTTP2_REFUSED_STREAM) {
      return new AgentDisconnectedError("the agent refused the request (too many concurrent streams)", { cause: error });
    }
    const detail = error instanceof Error ? `: ${error.message}` : "";
    return new AgentDisconnectedError(`the request to the agent ended early${detail}`, { cause: error });
  }

  /**
   * Waits for response headers, at most `timeoutMs`. With `afterRequestBody`, the clock starts only once the
   * request body has been handed over, so a long upload does not count against it.
   */
  responseHead(
    stream: ClientHttp2Stream,
    timeoutMs = this.requestTimeoutMs,
    { afterRequestBody = false }: { afterRequestBody?: boolean } = {},
  ): Promise<ResponseHead> {
    return new Promise((resolve, reject) => {
      if (stream.destroyed) return reject(this.failureOf(stream));
      let timer: NodeJS.Timeout | undefined;
      const armTimer = () => {
        timer = setTimeout(() => {
          cleanup();
          stream.close(h2.NGHTTP2_CANCEL);
          reject(new AgentTimeoutError(`no response from the agent within ${timeoutMs} ms`));
        }, timeoutMs);
      };
      if (afterRequestBody && !stream.writableFinished) stream.once("finish", armTimer);
      else armTimer();
      const onResponse = (headers: ResponseHeaders) => {
        cleanup();
        const status = headers[":status"];
        if (typeof status !== "number") return reject(new AgentProtocolError("response without a status"));
        resolve({ status, headers });
      };
      const onError = (error: unknown) => {
        cleanup();
        reject(this.failureOf(stream, error));
      };
      const onClose = () => onError(undefined);
      const cleanup = () => {
        clearTimeout(timer);
        stream.off("finish", armTimer);
        stream.off("response", onResponse);
        stream.off("error", onError);
        stream.off("close", onClose);
      };
      stream.on("response", onResponse);
      stream.on("error", onError);
      stream.on("close", onClose);
    });
  }

  /**
   * Reads the whole response body, failing (and cancelling the stream) past `maxBytes`: the guest decides how
   * much it sends, so the host never buffers more than it agreed to. `deadline` bounds the whole read,
   * `idleTimeoutMs` the silence between chunks.
   */
  readBody(stream: ClientHttp2Stream, limits: BodyLimits): Promise<Buffer> {
    const { maxBytes, deadline, idleTimeoutMs } = limits;
    const tooLarge = limits.tooLarge ?? (() => new AgentProtocolError(`response body exceeds ${maxBytes} bytes`));
    return new Promise((resolve, reject) => {
      // An empty body may already have ended (and the stream been destroyed) before anyone listened; a destroyed
      // stream emits nothing more, so without these checks the promise would never settle.
      if (stream.readableEnded) return resolve(Buffer.alloc(0));
      if (stream.destroyed) return reject(this.failureOf(stream));
      const chunks: Buffer[] = [];
      let size = 0;
      const timeout = (what: string) => () => finish(new AgentTimeoutError(`the agent ${what}`));
      const deadlineTimer =
        deadline === undefined ? undefined : setTimeout(timeout("did not finish its response in time"), Math.max(0, deadline - Date.now()));
      let idleTimer: NodeJS.Timeout | undefined;
      const armIdleTimer = () => {
        if (idleTimeoutMs === undefined) return;
        clearTimeout(idleTimer);
        idleTimer = setTimeout(timeout(`sent nothing for ${idleTimeoutMs} ms`), idleTimeoutMs);
      };
      const finish = (error?: AgentClientError) => {
        clearTimeout(deadlineTimer);
        clearTimeout(idleTimer);
        stream.off("data", onData);
        stream.off("end", onEnd);
        stream.off("error", onError);
        stream.off("close", onClose);
        if (error === undefined) return resolve(Buffer.concat(chunks, size));
        if (!stream.closed) stream.close(h2.NGHTTP2_CANCEL);
        reject(error);
      };
      const onData = (chunk: Buffer) => {
        size += chunk.length;
        if (size > maxBytes) return finish(tooLarge());
        chunks.push(chunk);
        armIdleTimer();
      };
      const onEnd = () => finish(this.endFailure(stream));
      const onError = (error: unknown) => finish(this.failureOf(stream, error));
      const onClose = () => onError(undefined);
      armIdleTimer();
      stream.on("data", onData);
      stream.on("end", onEnd);
      stream.on("error", onError);
      stream.on("close", onClose);
    });
  }

  /** Reads and parses a JSON body of at most `maxBytes`, by `deadline` (default: one request timeout). */
  async readJson(stream: ClientHttp2Stream, deadline = Date.now() + this.requestTimeoutMs, maxBytes: number = AGENT_LIMITS.maxJsonBytes): Promise<unknown> {
    const body = await this.readBody(stream, { maxBytes, deadline });
    try {
      return JSON.parse(body.toString("utf8")) as unknown;
    } catch {
      throw new AgentProtocolError("the agent sent invalid JSON");
    }
  }

  /** Turns a non-2xx response into an AgentError (or a protocol error if the body is not a valid error body). */
  async errorResponse(stream: ClientHttp2Stream, status: number, deadline?: number): Promise<AgentClientError> {
    try {
      const { code, message } = parseErrorBody(await this.readJson(stream, deadline));
      return new AgentError(code, message, status);
    } catch (error) {
      return error instanceof AgentClientError ? error : this.failureOf(stream, error);
    }
  }

  /** Ends the session; in-flight and later requests fail with `failure` (default: "the agent client was closed"). */
  close(failure: AgentClientError = new AgentDisconnectedError("the agent client was closed")): void {
    this.#closedByHost = true;
    this.#recordFailure(failure);
    this.session.destroy();
  }
}

function hasCode(error: unknown, code: string): boolean {
  return typeof error === "object" && error !== null && (error as { code?: unknown }).code === code;
}

/** Session-level errors: HTTP/2 violations are the guest's fault, everything else is a lost connection. */
function classify(error: unknown, context: string): AgentClientError {
  if (error instanceof AgentClientError) return error;
  const message = error instanceof Error ? error.message : String(error);
  if (hasCode(error, "ERR_HTTP2_ERROR") || hasCode(error, "ERR_HTTP2_SESSION_ERROR")) {
    return new AgentProtocolError(`${context}: ${message}`, { cause: error });
  }
  return new AgentDisconnectedError(`${context}: ${message}`, { cause: error });
}
