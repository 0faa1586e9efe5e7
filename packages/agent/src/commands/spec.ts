import { TERMINAL_LIMITS, decodeExecSpecHeader, type ExecSpec, type TerminalSize } from "@codecourier/protocol";
import { badRequest } from "../http/respond.js";

const knownKeys = new Set(["argv", "shell", "env", "cwd", "user", "timeoutMs", "stdin", "background", "pty"]);
const maxArgs = 65_536;
const maxEnvVars = 4_096;
/** setTimeout's largest delay; longer values would fire immediately. */
const maxTimeoutMs = 2 ** 31 - 1;

/** Decodes and strictly validates the exec spec header; any problem is a 400 bad_request. */
export function parseExecSpecHeader(header: string | string[] | undefined): ExecSpec {
  if (typeof header !== "string") throw badRequest("missing or repeated exec spec header");
  let raw: unknown;
  try {
    raw = decodeExecSpecHeader(header);
  } catch {
    throw badRequest("exec spec header is not base64url JSON");
  }
  return validateExecSpec(raw);
}

export function validateExecSpec(raw: unknown): ExecSpec {
  if (!isPlainObject(raw)) throw badRequest("exec spec must be a JSON object");
  for (const key of Object.keys(raw)) {
    if (!knownKeys.has(key)) throw badRequest(`unknown exec spec field: ${key.slice(0, 64)}`);
  }
  const spec: ExecSpec = {};
  const { argv, shell, env, cwd, user, timeoutMs, stdin, background, pty } = raw;

  if ((argv === undefined) === (shell === undefined)) throw badRequest("exactly one of argv and shell is required");
  if (argv !== undefined) {
    if (!Array.isArray(argv) || argv.length === 0 || argv.length > maxArgs) {
      throw badRequest("argv must be a non-empty array of strings");
    }
    for (const arg of argv) requireCleanString(arg, "argv entries");
    if (argv[0] === "") throw badRequest("argv[0] must not be empty");
    spec.argv = argv as string[];
  } else {
    requireCleanString(shell, "shell");
    if (shell === "") throw badRequest("shell must not be empty");
    spec.shell = shell;
  }

  if (env !== undefined) {
    if (!isPlainObject(env)) throw badRequest("env must be an object of strings");
    const entries = Object.entries(env);
    if (entries.length > maxEnvVars) throw badRequest("env has too many variables");
    for (const [name, value] of entries) {
      if (name === "" || name.includes("=") || name.includes("\0")) throw badRequest("invalid env variable name");
      requireCleanString(value, "env values");
    }
    spec.env = env as Record<string, string>;
  }

  if (cwd !== undefined) {
    requireCleanString(cwd, "cwd");
    if (!cwd.startsWith("/")) throw badRequest("cwd must be an absolute path");
    spec.cwd = cwd;
  }

  if (user !== undefined) {
    if (typeof user === "number") {
      if (!Number.isInteger(user) || user < 0 || user >= 2 ** 32 - 1) throw badRequest("user id out of range");
    } else if (typeof user !== "string" || !/^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,63}\$?$/.test(user)) {
      throw badRequest("user must be a user name or numeric uid");
    }
    spec.user = user;
  }

  if (timeoutMs !== undefined) {
    if (typeof timeoutMs !== "number" || !Number.isInteger(timeoutMs) || timeoutMs <= 0 || timeoutMs > maxTimeoutMs) {
      throw badRequest(`timeoutMs must be an integer between 1 and ${maxTimeoutMs}`);
    }
    spec.timeoutMs = timeoutMs;
  }

  if (stdin !== undefined) {
    if (typeof stdin !== "boolean") throw badRequest("stdin must be a boolean");
    spec.stdin = stdin;
  }

  if (background !== undefined) {
    if (typeof background !== "boolean") throw badRequest("background must be a boolean");
    spec.background = background;
  }

  if (pty !== undefined) spec.pty = validateTerminalSize(pty, "pty");
  return spec;
}

/** A terminal size: exactly `rows` and `cols`, integers from 1 to TERMINAL_LIMITS. Anything else is a 400. */
export function validateTerminalSize(raw: unknown, what: string): TerminalSize {
  if (!isPlainObject(raw)) throw badRequest(`${what} must be an object {rows, cols}`);
  for (const key of Object.keys(raw)) {
    if (key !== "rows" && key !== "cols") throw badRequest(`unknown ${what} field: ${key.slice(0, 64)}`);
  }
  const { rows, cols } = raw;
  const inRange = (value: unknown, max: number): value is number => Number.isInteger(value) && (value as number) >= 1 && (value as number) <= max;
  if (!inRange(rows, TERMINAL_LIMITS.maxRows) || !inRange(cols, TERMINAL_LIMITS.maxCols)) {
    throw badRequest(`${what} needs integer rows 1..${TERMINAL_LIMITS.maxRows} and cols 1..${TERMINAL_LIMITS.maxCols}`);
  }
  return { rows, cols };
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function requireCleanString(value: unknown, what: string): asserts value is string {
  if (typeof value !== "string") throw badRequest(`${what} must be strings`);
  // execve takes C strings: a NUL byte would silently truncate the argument.
  if (value.includes("\0")) throw badRequest(`${what} must not contain NUL bytes`);
}
