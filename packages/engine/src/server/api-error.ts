import { API_ERROR_CODES, type ApiErrorCode } from "@codecourier/protocol/api";
import { ZodError } from "zod";
import { NetworkRequestError } from "../network/network-service.js";
import { PolicyError } from "../network/policy.js";
import { AgentDisconnectedError, AgentError, AgentProtocolError } from "../agent-client/errors.js";
import { QuotaExceededError, type QuotaBreach } from "../control/tenant-quota.js";
import {
  InvalidRequestError,
  SandboxError,
  SandboxNotFoundError,
  SandboxStateError,
  SandboxUnhealthyError,
  SnapshotInUseError,
  SnapshotNotFoundError,
} from "../sandboxes/errors.js";

/** An error the API answers with `{ "error": { "code", "message" } }` and the code's HTTP status. */
export class ApiError extends Error {
  readonly status: number;

  constructor(
    readonly code: ApiErrorCode,
    message: string,
    /** For quota_exceeded: the limit, as the error body's `quota`. */
    readonly quota?: QuotaBreach,
  ) {
    super(message);
    this.name = "ApiError";
    this.status = API_ERROR_CODES[code];
  }

  /** The answer's body. */
  body(): { error: { code: ApiErrorCode; message: string; quota?: QuotaBreach } } {
    return { error: { code: this.code, message: this.message, ...(this.quota ? { quota: this.quota } : {}) } };
  }
}

export const notFound = (what: string) => new ApiError("not_found", what);

/**
 * What the client is told about any error. Engine errors keep their message (they say what to do); anything
 * unexpected becomes a generic 500 so that no internal detail (paths, stack) leaks; the caller logs it.
 */
export function toApiError(error: unknown): { apiError: ApiError; unexpected: boolean } {
  if (error instanceof ApiError) return { apiError: error, unexpected: false };
  if (error instanceof QuotaExceededError) return { apiError: new ApiError("quota_exceeded", error.message, error.breach), unexpected: false };
  // The request's own failure underneath the one it caused: a body that timed out (408) while streaming into the
  // guest fails the agent call that was reading it.
  if (error instanceof Error && error.cause instanceof ApiError) return { apiError: error.cause, unexpected: false };
  if (error instanceof ZodError) {
    const issues = error.issues.map((issue) => `${issue.path.join(".") || "body"}: ${issue.message}`).join("; ");
    return { apiError: new ApiError("bad_request", issues), unexpected: false };
  }
  if (error instanceof SandboxNotFoundError || error instanceof SnapshotNotFoundError) {
    return { apiError: new ApiError("not_found", error.message), unexpected: false };
  }
  if (error instanceof SandboxStateError || error instanceof SnapshotInUseError) {
    return { apiError: new ApiError("conflict", error.message), unexpected: false };
  }
  if (error instanceof SandboxUnhealthyError) return { apiError: new ApiError("sandbox_unhealthy", error.message), unexpected: false };
  if (error instanceof AgentDisconnectedError || error instanceof AgentProtocolError) {
    // The session a request ran on ended under it: the agent exited (it is restarted and the engine reconnects),
    // the guest broke the protocol (the engine reconnects), or the sandbox ended (the next call says so).
    const message = "the sandbox's agent connection was lost during the request (its agent is restarting, or the sandbox ended); retry";
    return { apiError: new ApiError("sandbox_unhealthy", message), unexpected: false };
  }
  if (error instanceof AgentError) {
    // The guest's own answer (e.g. a file that does not exist): the tenant's guest, so its message is passed on.
    const code: ApiErrorCode =
      error.code === "not_found"
        ? "not_found"
        : error.code === "too_large"
          ? "payload_too_large"
          : error.code === "internal"
            ? "internal"
            : error.code === "not_empty" || error.code === "already_exists"
              ? "conflict"
              : "bad_request";
    return { apiError: new ApiError(code, `in the sandbox: ${error.message}`), unexpected: code === "internal" };
  }
  if (error instanceof InvalidRequestError) return { apiError: new ApiError("bad_request", error.message), unexpected: false };
  if (error instanceof PolicyError || error instanceof NetworkRequestError) return { apiError: new ApiError("bad_request", error.message), unexpected: false };
  // Logged all the same (the operator should know), but the client learns it is passing and worth a retry.
  if (outOfDescriptors(error)) {
    return { apiError: new ApiError("unavailable", "the server is out of file descriptors right now; retry shortly"), unexpected: true };
  }
  if (error instanceof SandboxError) return { apiError: new ApiError("internal", error.message), unexpected: true };
  const fastify = error as { statusCode?: number; code?: string; message?: string; validation?: unknown };
  if (fastify.statusCode === 413) return { apiError: new ApiError("payload_too_large", "the request body is too large"), unexpected: false };
  if (fastify.validation !== undefined || (fastify.statusCode !== undefined && fastify.statusCode >= 400 && fastify.statusCode < 500)) {
    return { apiError: new ApiError("bad_request", fastify.message ?? "bad request"), unexpected: false };
  }
  return { apiError: new ApiError("internal", "internal error; see the server log"), unexpected: true };
}

/**
 * Whether an error, or one it was caused by, is the server running out of file descriptors (EMFILE: its own limit;
 * ENFILE: the host's). A failed spawn of a tool says so only in its message ("spawn qemu-img EMFILE").
 */
function outOfDescriptors(error: unknown): boolean {
  for (let cause = error, depth = 0; cause instanceof Error && depth < 8; cause = cause.cause, depth++) {
    const code = (cause as NodeJS.ErrnoException).code;
    if (code === "EMFILE" || code === "ENFILE" || /\bE[MN]FILE\b/.test(cause.message)) return true;
  }
  return false;
}
