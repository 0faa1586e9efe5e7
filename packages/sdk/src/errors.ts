import type { ApiErrorCode } from "@codecourier/protocol/api";
import type { CommandResult } from "./command-result.js";

/**
 * The API error code that goes with a bare HTTP status, for answers without a readable error body (a proxy or
 * load balancer answered). Only the keys are checked against the protocol: the protocol's own status for a code
 * may change (quota_exceeded has been 403 and 429), while a bare 429 from a proxy is still a rate limit and a bare
 * 403 still a refusal. The SDK takes only types from the protocol, hence this copy. It may hold codes the
 * protocol no longer has (forbidden), so that an older server's answers still map.
 */
const STATUS_OF_CODE = {
  bad_request: 400,
  unauthorized: 401,
  forbidden: 403,
  not_found: 404,
  sandbox_gone: 404,
  conflict: 409,
  request_timeout: 408,
  payload_too_large: 413,
  headers_too_large: 431,
  quota_exceeded: 429,
  internal: 500,
  unavailable: 503,
  sandbox_unhealthy: 503,
} as const;
/** Fails the build when the protocol gains an error code this table lacks. */
type CoversEveryCode<T extends Record<ApiErrorCode, number>> = T;
type StatusTableChecked = CoversEveryCode<typeof STATUS_OF_CODE>;

/**
 * What `CodeCourierError.code` can be: an API error code, or one the SDK gives errors that never came from the
 * server. Open-ended, since a newer server may answer with a code this SDK does not know yet.
 */
export type CodeCourierErrorCode = ApiErrorCode | "timeout" | "command_exit" | "not_supported" | "git_failed" | (string & {});

export interface CodeCourierErrorOptions {
  status?: number;
  code?: CodeCourierErrorCode;
  cause?: unknown;
}

/** Every error the SDK throws (bar a caller's own abort, which stays the AbortError the platform gives). */
export class CodeCourierError extends Error {
  override name = "CodeCourierError";
  /** The HTTP status, when the error is the server's answer. */
  readonly status: number | undefined;
  /** Stable across releases, unlike the message: switch on this. */
  readonly code: CodeCourierErrorCode;

  constructor(message: string, options: CodeCourierErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.status = options.status;
    this.code = options.code ?? codeForStatus(options.status) ?? "error";
  }
}

/** A subclass's status and code unless the caller gave them; `status: undefined` given means "not from the server". */
const withDefaults = (options: CodeCourierErrorOptions, status: number | undefined, code: CodeCourierErrorCode) => ({
  ...options,
  status: "status" in options ? options.status : status,
  code: options.code ?? code,
});

/** The API key is missing, unknown or revoked (401), or may not do this (403). */
export class AuthError extends CodeCourierError {
  override name = "AuthError";
  constructor(message: string, options: CodeCourierErrorOptions = {}) {
    super(message, withDefaults(options, 401, "unauthorized"));
  }
}

/**
 * No such sandbox, snapshot or route for this key. Another tenant's sandbox is "not found" too: the server does
 * not say whether an id exists elsewhere.
 */
export class NotFoundError extends CodeCourierError {
  override name = "NotFoundError";
  constructor(message: string, options: CodeCourierErrorOptions = {}) {
    super(message, withDefaults(options, 404, "not_found"));
  }
}

/**
 * The sandbox exists but has stopped or was lost, so it cannot run anything any more. A subclass of NotFoundError
 * because the server answers it as a 404, and code that treats "gone" as "not there" keeps working.
 */
export class SandboxGoneError extends NotFoundError {
  override name = "SandboxGoneError";
}

/** Over one of the tenant's limits (sandboxes, CPUs, memory). The server may send it as 403 or 429. */
export class QuotaError extends CodeCourierError {
  override name = "QuotaError";
  constructor(
    message: string,
    options: CodeCourierErrorOptions = {},
    /** Which limit was hit, when the server says (`getLimits()` shows them all). */
    readonly quota?: QuotaBreach,
  ) {
    super(message, withDefaults(options, 429, "quota_exceeded"));
  }
}

/** The limit a refused request would have passed: its name, its value, what is used and what was asked. */
export interface QuotaBreach {
  limit: string;
  max: number;
  used: number;
  requested: number;
}

/** The operation does not fit the sandbox's or snapshot's current state (e.g. resume of a running sandbox). */
export class ConflictError extends CodeCourierError {
  override name = "ConflictError";
  constructor(message: string, options: CodeCourierErrorOptions = {}) {
    super(message, withDefaults(options, 409, "conflict"));
  }
}

/** The server refused the request as invalid (400) or too large (413); retrying it unchanged cannot help. */
export class BadRequestError extends CodeCourierError {
  override name = "BadRequestError";
  constructor(message: string, options: CodeCourierErrorOptions = {}) {
    super(message, withDefaults(options, 400, "bad_request"));
  }
}

/**
 * Something ran out of time: a command run with `check: true` (its `result` is attached), or a request whose
 * AbortSignal was a timeout (`AbortSignal.timeout(ms)`) or that the platform's fetch gave up on.
 */
export class TimeoutError extends CodeCourierError {
  override name = "TimeoutError";
  readonly result: CommandResult | undefined;
  constructor(message: string, options: CodeCourierErrorOptions & { result?: CommandResult } = {}) {
    super(message, withDefaults(options, undefined, "timeout"));
    this.result = options.result;
  }
}

/** A command run with `check: true` did not exit 0. The whole result is kept, output included. */
export class CommandExitError extends CodeCourierError {
  override name = "CommandExitError";
  constructor(
    message: string,
    readonly result: CommandResult,
    options: CodeCourierErrorOptions = {},
  ) {
    super(message, withDefaults(options, undefined, "command_exit"));
  }
}

/** A feature the SDK declares (so code can be written against it) but this server version does not offer yet. */
export class NotSupportedError extends CodeCourierError {
  override name = "NotSupportedError";
  constructor(message: string, options: CodeCourierErrorOptions = {}) {
    super(message, withDefaults(options, undefined, "not_supported"));
  }
}

/**
 * Why a git command failed, read from its messages: switch on this rather than on the text. "other" when none of
 * the known causes matched (the stderr is still there).
 */
export type GitFailureReason =
  | "not_a_repository"
  | "authentication_failed"
  | "repository_not_found"
  | "network"
  | "rejected"
  | "nothing_to_commit"
  | "identity_unknown"
  | "conflict"
  | "already_exists"
  | "unknown_ref"
  | "path_not_found"
  | "timeout"
  | "git_missing"
  | "other";

/**
 * A git command in the sandbox (sandbox.git) failed. Carries the subcommand, the exit code, git's stderr and the
 * reason; credentials given to the command are replaced by "***" in all of them.
 */
export class GitError extends CodeCourierError {
  override name = "GitError";
  readonly subcommand: string;
  readonly exitCode: number | null;
  readonly stderr: string;
  readonly reason: GitFailureReason;

  constructor(
    message: string,
    details: { subcommand: string; exitCode: number | null; stderr: string; reason: GitFailureReason },
    options: CodeCourierErrorOptions = {},
  ) {
    super(message, withDefaults(options, undefined, "git_failed"));
    this.subcommand = details.subcommand;
    this.exitCode = details.exitCode;
    this.stderr = details.stderr;
    this.reason = details.reason;
  }
}

function codeForStatus(status: number | undefined): string | undefined {
  if (status === undefined) return undefined;
  return Object.entries(STATUS_OF_CODE).find(([, s]) => s === status)?.[0];
}

/** The `{ error: { code, message } }` body, or undefined when the answer is something else (a proxy's page). */
function parseErrorBody(text: string): { code: string; message: string; quota?: QuotaBreach } | undefined {
  try {
    const error = (JSON.parse(text) as { error?: { code?: unknown; message?: unknown; quota?: unknown } } | null)?.error;
    if (typeof error?.code === "string" && typeof error.message === "string") {
      return { code: error.code, message: error.message, quota: isQuotaBreach(error.quota) ? error.quota : undefined };
    }
  } catch {
    // Not JSON: handled by the caller from the status alone.
  }
  return undefined;
}

/**
 * The typed error for an API error answer. The class follows the body's code, not the status, because one code
 * may come with more than one status (quota_exceeded is 403 or 429); without a readable body (a proxy or load
 * balancer answered) the status decides.
 */
export function errorFromResponse(status: number, bodyText: string): CodeCourierError {
  const body = parseErrorBody(bodyText);
  const code = body?.code ?? codeForStatus(status) ?? "error";
  const snippet = bodyText.trim().slice(0, 200);
  const message = body?.message ?? `the server answered HTTP ${status}${snippet ? `: ${snippet}` : ""}`;
  const options = { status, code };
  switch (code) {
    case "unauthorized":
    case "forbidden":
      return new AuthError(message, options);
    case "sandbox_gone":
      return new SandboxGoneError(message, options);
    case "not_found":
      // Servers before the sandbox_gone code said so only in the message.
      return /is no longer running/.test(message) ? new SandboxGoneError(message, options) : new NotFoundError(message, options);
    case "quota_exceeded":
      return new QuotaError(message, options, body?.quota);
    case "conflict":
      return new ConflictError(message, options);
    case "bad_request":
    case "payload_too_large":
      return new BadRequestError(message, options);
    default:
      return new CodeCourierError(message, options);
  }
}

function isQuotaBreach(value: unknown): value is QuotaBreach {
  const v = value as Partial<QuotaBreach> | null;
  return typeof v === "object" && v !== null && typeof v.limit === "string" && [v.max, v.used, v.requested].every((n) => typeof n === "number");
}
