import {
  AGENT_LIMITS,
  AGENT_PROTOCOL_VERSION,
  IDENTITY_LIMITS,
  type AgentErrorBody,
  type AgentErrorCode,
  type AgentHealth,
  type BackgroundCommandInfo,
  type DirEntry,
  type ExecExit,
  FILE_LIMITS,
  type FileStat,
  type FileType,
  type GuestActivity,
  type IdentityResult,
} from "@codecourier/protocol";
import { AgentProtocolError } from "./errors.js";

// Everything here checks JSON that came from the (untrusted) guest before the host relies on its shape.

const fileTypes = new Set<FileType>(["file", "directory", "symlink", "other"]);
const errorCodes = new Set<AgentErrorCode>([
  "bad_request",
  "not_found",
  "is_directory",
  "not_directory",
  "permission_denied",
  "too_large",
  "too_many_commands",
  "not_empty",
  "already_exists",
  "identity_refresh_failed",
  "internal",
]);
const maxIdLength = 128;
const maxNameLength = 4096;

function fail(what: string): never {
  throw new AgentProtocolError(`malformed ${what} from the agent`);
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function isBoundedString(value: unknown, maxLength: number): value is string {
  return typeof value === "string" && value.length <= maxLength;
}

function isCount(value: unknown): value is number {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 0;
}

export function parseHealth(json: unknown): AgentHealth {
  if (!isObject(json) || json.ok !== true || typeof json.protocol !== "number") fail("health response");
  if (json.protocol !== AGENT_PROTOCOL_VERSION) {
    throw new AgentProtocolError(`agent speaks protocol ${json.protocol}, this host speaks ${AGENT_PROTOCOL_VERSION}`);
  }
  const { agentVersion, bootId, sessionId, kernel, uptimeMs, runningCommands, timeline } = json;
  if (
    !isBoundedString(agentVersion, maxIdLength) ||
    !isBoundedString(bootId, maxIdLength) ||
    !isBoundedString(sessionId, maxIdLength) ||
    !isBoundedString(kernel, maxNameLength) ||
    !isCount(uptimeMs) ||
    !isCount(runningCommands) ||
    !isObject(timeline) ||
    !isCount(timeline.processStartMs) ||
    !isCount(timeline.servingMs)
  ) {
    fail("health response");
  }
  const { processStartMs, servingMs } = timeline;
  return {
    ok: true,
    protocol: json.protocol,
    agentVersion,
    bootId,
    sessionId,
    kernel,
    uptimeMs,
    runningCommands,
    timeline: { processStartMs, servingMs },
  };
}

export function parseExecExit(json: unknown): ExecExit {
  if (!isObject(json)) fail("exit record");
  const { exitCode, signal, timedOut, spawnError } = json;
  if (exitCode !== null && !(typeof exitCode === "number" && Number.isInteger(exitCode))) fail("exit record");
  if (signal !== null && !isBoundedString(signal, 32)) fail("exit record");
  if (typeof timedOut !== "boolean") fail("exit record");
  if (spawnError !== undefined && !isBoundedString(spawnError, 64 * 1024)) fail("exit record");
  const exit: ExecExit = { exitCode, signal, timedOut };
  if (spawnError !== undefined) exit.spawnError = spawnError;
  return exit;
}

export function parseFileStat(json: unknown): FileStat {
  if (!isObject(json)) fail("file stat");
  const { path, type, size, mode, mtimeMs } = json;
  if (
    !isBoundedString(path, maxNameLength * 4) ||
    !fileTypes.has(type as FileType) ||
    !isCount(size) ||
    !isCount(mode) ||
    typeof mtimeMs !== "number" ||
    !Number.isFinite(mtimeMs)
  ) {
    fail("file stat");
  }
  return { path, type: type as FileType, size, mode, mtimeMs };
}

export function parseDirEntries(json: unknown): DirEntry[] {
  if (!Array.isArray(json) || json.length > FILE_LIMITS.maxListedEntries) fail("directory listing");
  return json.map((entry: unknown) => {
    if (!isObject(entry) || !isBoundedString(entry.name, maxNameLength) || !fileTypes.has(entry.type as FileType)) {
      fail("directory listing");
    }
    const { size, mtimeMs } = entry;
    if ((size !== undefined && !isCount(size)) || (mtimeMs !== undefined && !(typeof mtimeMs === "number" && Number.isFinite(mtimeMs)))) {
      fail("directory listing");
    }
    const parsed: DirEntry = { name: entry.name, type: entry.type as FileType };
    if (size !== undefined) parsed.size = size;
    if (mtimeMs !== undefined) parsed.mtimeMs = mtimeMs;
    return parsed;
  });
}

export function parseErrorBody(json: unknown): AgentErrorBody["error"] {
  const error = isObject(json) ? json.error : undefined;
  if (!isObject(error) || !errorCodes.has(error.code as AgentErrorCode) || !isBoundedString(error.message, 64 * 1024)) {
    fail("error response");
  }
  return { code: error.code as AgentErrorCode, message: error.message };
}

/** Command ids travel in URLs and logs: accept only short, plain tokens. */
export function parseCommandId(value: unknown): string {
  if (typeof value !== "string" || !/^[A-Za-z0-9_-]{1,128}$/.test(value)) fail("command id");
  return value;
}

/** Running background commands plus remembered exits: the agent never lists more than both limits together. */
const maxListedCommands = AGENT_LIMITS.maxConcurrentCommands + AGENT_LIMITS.maxRememberedExits;

export function parseGuestActivity(json: unknown): GuestActivity {
  if (!isObject(json) || !isCount(json.runningCommands) || !isCount(json.otherProcesses)) fail("activity response");
  return { runningCommands: json.runningCommands, otherProcesses: json.otherProcesses };
}

export function parseBackgroundCommands(json: unknown): BackgroundCommandInfo[] {
  if (!Array.isArray(json) || json.length > maxListedCommands) fail("command list");
  return json.map((entry: unknown) => {
    if (!isObject(entry) || typeof entry.running !== "boolean" || !isCount(entry.startedAtMs)) fail("command list");
    const { running, startedAtMs } = entry;
    const id = parseCommandId(entry.id);
    // A running command has no exit yet; an exited one must say how it ended.
    if (running !== (entry.exit === undefined)) fail("command list");
    const info: BackgroundCommandInfo = { id, running, startedAtMs };
    if (entry.exit !== undefined) info.exit = parseExecExit(entry.exit);
    return info;
  });
}

export function parseIdentityResult(json: unknown): IdentityResult {
  if (!isObject(json)) fail("identity result");
  const { clockSetTo, reseeded, hostname, machineId, machineIdWritten } = json;
  if (
    !isCount(clockSetTo) ||
    reseeded !== true ||
    !isBoundedString(hostname, IDENTITY_LIMITS.maxHostnameLength) ||
    !isBoundedString(machineId, 32) ||
    typeof machineIdWritten !== "boolean"
  ) {
    fail("identity result");
  }
  return { clockSetTo, reseeded, hostname, machineId, machineIdWritten };
}
