import { resolveApiKey, resolveUrl, type ConnectionOptions, type EnvReader } from "./env.js";
import { CodeCourierError, TimeoutError, errorFromResponse } from "./errors.js";

/** Per-call options every API method takes. */
export interface RequestOptions {
  /**
   * Cancels the request. An abort rejects with the signal's reason as the platform gives it (an AbortError);
   * a timeout signal (`AbortSignal.timeout(ms)`) becomes a TimeoutError.
   */
  signal?: AbortSignal;
}

export interface ApiRequest extends RequestOptions {
  /** Sent as JSON. Left undefined, no body and no content-type are sent: the server refuses an empty JSON body. */
  body?: unknown;
  query?: URLSearchParams;
}

export interface RawRequest extends RequestOptions {
  body?: BodyInit;
  query?: URLSearchParams;
}

/**
 * The HTTP layer: one server, one API key. Holds no other state, so sandboxes made from one client (fork, connect)
 * share it freely. Uses only fetch, so it runs unchanged on Node 20+, Bun and Deno.
 */
export class ApiClient {
  readonly url: string;
  readonly #apiKey: string;

  constructor(options: ConnectionOptions = {}, env?: EnvReader) {
    this.url = resolveUrl(options, env);
    this.#apiKey = resolveApiKey(options, env);
  }

  /**
   * The raw answer, for byte streams (file content): `body` is sent as is. An error answer still becomes its typed
   * CodeCourierError; a success answer's body is the caller's to read.
   */
  async raw(method: "GET" | "PUT" | "POST" | "DELETE", path: string, request: RawRequest = {}): Promise<Response> {
    const query = request.query?.toString();
    const url = `${this.url}${path}${query ? `?${query}` : ""}`;
    const headers: Record<string, string> = { authorization: `Bearer ${this.#apiKey}` };
    const init: RequestInit & { duplex?: "half" } = { method, headers };
    if (request.body !== undefined) {
      headers["content-type"] = "application/octet-stream";
      init.body = request.body;
      // A streamed request body needs half-duplex mode in fetch (Node and Deno insist; Bun accepts it).
      if (typeof ReadableStream !== "undefined" && request.body instanceof ReadableStream) init.duplex = "half";
    }
    if (request.signal) init.signal = request.signal;
    let response: Response;
    try {
      response = await fetch(url, init);
    } catch (error) {
      throw transportError(error, `${method} ${path}`, this.url, request.signal);
    }
    if (!response.ok) throw errorFromResponse(response.status, await response.text().catch(() => ""));
    return response;
  }

  /** The parsed JSON answer, or undefined for 204; an error answer becomes its typed CodeCourierError. */
  async request<T>(method: "GET" | "PUT" | "POST" | "DELETE", path: string, request: ApiRequest = {}): Promise<T> {
    const query = request.query?.toString();
    const url = `${this.url}${path}${query ? `?${query}` : ""}`;
    const headers: Record<string, string> = { authorization: `Bearer ${this.#apiKey}`, accept: "application/json" };
    if (request.body !== undefined) headers["content-type"] = "application/json";
    const init: RequestInit = { method, headers };
    if (request.body !== undefined) init.body = JSON.stringify(request.body);
    if (request.signal) init.signal = request.signal;

    let response: Response;
    let text: string;
    try {
      response = await fetch(url, init);
      text = await response.text();
    } catch (error) {
      throw transportError(error, `${method} ${path}`, this.url, request.signal);
    }
    if (!response.ok) throw errorFromResponse(response.status, text);
    if (response.status === 204 || text === "") return undefined as T;
    try {
      return JSON.parse(text) as T;
    } catch {
      throw new CodeCourierError(`${method} ${path}: the server answered HTTP ${response.status} with a body that is not JSON`, {
        status: response.status,
        code: "internal",
      });
    }
  }
}

/**
 * What a failed fetch (no HTTP answer at all) is reported as. A caller's abort stays its own error: code that
 * aborts expects an AbortError back, not an SDK error.
 */
function transportError(error: unknown, what: string, baseUrl: string, signal: AbortSignal | undefined): unknown {
  if (signal?.aborted) {
    const reason = signal.reason as { name?: unknown } | undefined;
    return reason?.name === "TimeoutError" ? new TimeoutError(`${what} timed out (its AbortSignal fired)`, { cause: reason }) : error;
  }
  // Node's fetch (undici) waits at most 300 s for response headers, whatever the signal says; a command that runs
  // longer than that ends here, and may still be running in the sandbox.
  const causeCode = (error as { cause?: { code?: unknown } } | undefined)?.cause?.code;
  if (causeCode === "UND_ERR_HEADERS_TIMEOUT" || causeCode === "UND_ERR_BODY_TIMEOUT") {
    return new TimeoutError(`${what}: no answer in time from the server at ${baseUrl} (the fetch implementation's own limit)`, {
      cause: error,
    });
  }
  const message = error instanceof Error ? error.message : String(error);
  const detail = error instanceof Error && error.cause instanceof Error ? ` (${error.cause.message})` : "";
  return new CodeCourierError(`cannot reach the CodeCourier server at ${baseUrl}: ${message}${detail}`, {
    code: "unavailable",
    cause: error,
  });
}
