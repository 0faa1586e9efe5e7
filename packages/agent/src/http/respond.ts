import { constants as h2, type ServerHttp2Stream } from "node:http2";
import { AGENT_LIMITS, type AgentErrorBody, type AgentErrorCode } from "@codecourier/protocol";

/** A failure that maps to one JSON error response. Thrown by handlers, turned into a response by the router. */
export class RequestError extends Error {
  constructor(
    readonly status: number,
    readonly code: AgentErrorCode,
    message: string,
  ) {
    super(message);
  }
}

export const badRequest = (message: string) => new RequestError(400, "bad_request", message);

const errnoFailures: Record<string, [number, AgentErrorCode]> = {
  ENOENT: [404, "not_found"],
  EISDIR: [409, "is_directory"],
  ENOTDIR: [409, "not_directory"],
  EACCES: [403, "permission_denied"],
  EPERM: [403, "permission_denied"],
  EROFS: [403, "permission_denied"],
  ENAMETOOLONG: [400, "bad_request"],
  EINVAL: [400, "bad_request"],
  ELOOP: [400, "bad_request"],
  EFBIG: [413, "too_large"],
  ENOTEMPTY: [409, "not_empty"],
  EEXIST: [409, "already_exists"],
  // A rename across filesystems (e.g. /tmp is another mount) or of a mount point: the guest's answer, not ours.
  EXDEV: [400, "bad_request"],
  EBUSY: [400, "bad_request"],
};

/** Maps a thrown value (RequestError or a Node errno error) to a response. */
export function toRequestError(error: unknown): RequestError {
  if (error instanceof RequestError) return error;
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  const mapped = code === undefined ? undefined : errnoFailures[code];
  const message = error instanceof Error ? error.message : String(error);
  return mapped ? new RequestError(mapped[0], mapped[1], message) : new RequestError(500, "internal", message);
}

function canRespond(stream: ServerHttp2Stream): boolean {
  return !stream.destroyed && !stream.closed && !stream.headersSent;
}

/**
 * Sends a JSON body. Bodies the host would reject as too large become a 413 instead; `maxBytes` is the host's
 * limit for this answer (larger only where the protocol says so, e.g. listings).
 */
export function sendJson(stream: ServerHttp2Stream, status: number, body: unknown, maxBytes: number = AGENT_LIMITS.maxJsonBytes): void {
  if (!canRespond(stream)) return;
  let json = Buffer.from(JSON.stringify(body), "utf8");
  if (json.length > maxBytes) {
    status = 413;
    json = Buffer.from(JSON.stringify(errorBody("too_large", `response of ${json.length} bytes exceeds the JSON limit`)));
  }
  stream.respond({ ":status": status, "content-type": "application/json", "content-length": json.length });
  stream.end(json);
}

function errorBody(code: AgentErrorCode, message: string): AgentErrorBody {
  // Bounded so that an error about a huge input never produces a huge response.
  return { error: { code, message: message.length > 4096 ? `${message.slice(0, 4096)}…` : message } };
}

/** Sends the JSON error for `error`, or resets the stream if a response has already started. */
export function sendFailure(stream: ServerHttp2Stream, error: unknown): void {
  if (stream.destroyed || stream.closed) return;
  if (stream.headersSent) {
    stream.close(h2.NGHTTP2_INTERNAL_ERROR);
    return;
  }
  const failure = toRequestError(error);
  sendJson(stream, failure.status, errorBody(failure.code, failure.message));
}

/** Reads and parses a JSON request body of at most `maxBytes`. */
export async function readJsonBody(stream: ServerHttp2Stream, maxBytes = AGENT_LIMITS.maxJsonBytes): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of stream as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > maxBytes) throw new RequestError(413, "too_large", `request body exceeds ${maxBytes} bytes`);
    chunks.push(chunk);
  }
  try {
    return JSON.parse(Buffer.concat(chunks, size).toString("utf8")) as unknown;
  } catch {
    throw badRequest("request body is not valid JSON");
  }
}

/** Returns the query parameter `name` (default `path`), which must be an absolute path without NUL bytes. */
export function requirePathParam(query: URLSearchParams, name = "path"): string {
  const path = query.get(name);
  if (path === null || path === "") throw badRequest(`missing query parameter: ${name}`);
  if (!path.startsWith("/")) throw badRequest(`${name} must be absolute`);
  if (path.includes("\0")) throw badRequest(`${name} contains a NUL byte`);
  return path;
}
