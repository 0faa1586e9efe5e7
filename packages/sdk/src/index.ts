/**
 * @codecourier/sdk: the TypeScript client of a CodeCourier server's HTTP API. Runs unchanged on Node 20+, Bun and
 * Deno: it uses only fetch, URL and AbortSignal, and takes nothing but types from @codecourier/protocol.
 */
export { health, type ClientOptions, type ServerHealth } from "./health.js";
export { DEFAULT_URL, type ConnectionOptions } from "./env.js";
export type { RequestOptions } from "./client.js";
export {
  AuthError,
  BadRequestError,
  CodeCourierError,
  CommandExitError,
  ConflictError,
  GitError,
  NotFoundError,
  NotSupportedError,
  QuotaError,
  type QuotaBreach,
  SandboxGoneError,
  TimeoutError,
  type CodeCourierErrorCode,
  type CodeCourierErrorOptions,
  type GitFailureReason,
} from "./errors.js";
export {
  Sandbox,
  createSandbox,
  listSandboxes,
  type BackgroundCommandOptions,
  type CommandResult,
  type CreateSandboxOptions,
  type ListSandboxesQuery,
  type RunCommandOptions,
  type SandboxInfo,
  type SandboxList,
  type SandboxState,
} from "./sandbox.js";
export { SandboxNetwork, type ExposedPort, type NetworkEvent, type NetworkEventsOptions, type NetworkPolicy, type NetworkPolicyInput, type NetworkState, type Tunnel } from "./network.js";
export {
  CommandProcess,
  PtyProcess,
  SandboxProcesses,
  SandboxPty,
  type OutputChunk,
  type OutputOptions,
  type ProcessInfo,
  type PtyOptions,
  type PtySize,
  type StartProcessOptions,
  type WaitOptions,
} from "./processes.js";
export {
  SandboxGit,
  type GitChange,
  type GitCheckoutOptions,
  type GitCloneOptions,
  type GitCommandOptions,
  type GitCommitOptions,
  type GitCredentials,
  type GitDiffOptions,
  type GitFileChange,
  type GitInitOptions,
  type GitPushOptions,
  type GitStatus,
  type GitStatusOptions,
} from "./git.js";
export type { SyncOptions, SyncResult } from "./sync.js";
export { SandboxFiles, type DirEntry, type FileData, type FileStat, type ReadOptions, type WriteOptions } from "./files.js";
export type { FileWatch, WatchEvent, WatchOptions } from "./watch.js";
export { deleteSnapshot, listSnapshots, type SnapshotInfo } from "./snapshots.js";
export { getLimits, type TenantLimits } from "./limits.js";
