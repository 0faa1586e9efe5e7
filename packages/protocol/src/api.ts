/**
 * The control-plane HTTP API (server ⇄ SDK / CLI): request and response shapes, defined once as zod schemas. The
 * server validates with them and publishes them in /openapi.json; the SDK uses the inferred types.
 */
import { z } from "zod";
import { NetworkPolicySchema } from "./network.js";

/** Bounds that the API enforces on any request, whatever a tenant's own limits say. */
export const API_LIMITS = {
  maxEnvEntries: 256,
  maxEnvValueBytes: 32 * 1024,
  maxMetadataEntries: 64,
  maxMetadataValueLength: 1024,
  maxCpus: 64,
  maxMemoryMB: 1024 * 1024,
  maxTimeoutMs: 7 * 24 * 3600 * 1000,
  maxPageSize: 1000,
  maxCommandLength: 128 * 1024,
  /** Output kept per process for streams that start late (logs, reconnects). */
  maxProcessOutputBytes: 4 * 1024 * 1024,
  /** Processes (running or exited) a sandbox keeps on the server. */
  maxProcessesPerSandbox: 256,
} as const;

const envName = z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, "environment variable names are letters, digits and _");
const metadataKey = z.string().regex(/^[A-Za-z0-9_.:-]{1,64}$/, "metadata keys are 1-64 of A-Z a-z 0-9 _ . : -");

export const EnvSchema = z
  .record(envName, z.string().max(API_LIMITS.maxEnvValueBytes))
  .refine((env) => Object.keys(env).length <= API_LIMITS.maxEnvEntries, `at most ${API_LIMITS.maxEnvEntries} variables`);

export const MetadataSchema = z
  .record(metadataKey, z.string().max(API_LIMITS.maxMetadataValueLength))
  .refine((m) => Object.keys(m).length <= API_LIMITS.maxMetadataEntries, `at most ${API_LIMITS.maxMetadataEntries} entries`);

/** `unhealthy`: running, but its agent is restarting; calls answer 503 `sandbox_unhealthy` until it is back. */
export const SandboxStateSchema = z.enum(["running", "unhealthy", "paused", "stopped", "lost"]);
export type ApiSandboxState = z.infer<typeof SandboxStateSchema>;

export const CreateSandboxRequestSchema = z
  .object({
    /** A template name, optionally with a version: "base" or "base@3". Default "base". */
    template: z.string().regex(/^[a-z0-9][a-z0-9._-]{0,62}(@[0-9]{1,9})?$/, "template is name or name@version").default("base"),
    cpu: z.number().int().min(1).max(API_LIMITS.maxCpus).optional(),
    memoryMB: z.number().int().min(128).max(API_LIMITS.maxMemoryMB).optional(),
    env: EnvSchema.optional(),
    metadata: MetadataSchema.optional(),
    /** The sandbox ends (or pauses, see onTimeout) this long after creation unless extended. */
    timeoutMs: z.number().int().min(1000).max(API_LIMITS.maxTimeoutMs).optional(),
    onTimeout: z.enum(["kill", "pause"]).default("kill"),
    region: z.string().min(1).max(64).optional(),
    /** The sandbox's network policy; default its template's (for `base`: nothing allowed). */
    network: NetworkPolicySchema.optional(),
  })
  .strict();
export type CreateSandboxRequest = z.input<typeof CreateSandboxRequestSchema>;

export const SandboxSchema = z.object({
  sandboxId: z.string(),
  template: z.string(),
  state: SandboxStateSchema,
  cpu: z.number(),
  memoryMB: z.number(),
  metadata: z.record(z.string(), z.string()),
  region: z.string(),
  createdAt: z.string(),
  /** When the sandbox times out (ISO time), or null without a timeout. */
  timeoutAt: z.string().nullable(),
  onTimeout: z.enum(["kill", "pause"]),
});
export type ApiSandbox = z.infer<typeof SandboxSchema>;

export const ListSandboxesQuerySchema = z
  .object({
    state: SandboxStateSchema.optional(),
    limit: z.coerce.number().int().min(1).max(API_LIMITS.maxPageSize).default(100),
    /** Opaque cursor from a previous page's nextCursor. */
    cursor: z.string().max(200).optional(),
  })
  /** Metadata filters: `metadata.KEY=VALUE` parameters (a sandbox must match all of them). */
  .catchall(z.string());

export const SandboxListSchema = z.object({
  sandboxes: z.array(SandboxSchema),
  nextCursor: z.string().nullable(),
});
export type ApiSandboxList = z.infer<typeof SandboxListSchema>;

export const SetTimeoutRequestSchema = z.object({ timeoutMs: z.number().int().min(1000).max(API_LIMITS.maxTimeoutMs) }).strict();

/** What a command is: the fields of a run-to-completion command and of a process alike. */
const commandFields = {
  /** A shell command line (run with /bin/sh -c) … */
  cmd: z.string().min(1).max(API_LIMITS.maxCommandLength).optional(),
  /** … or an argv. */
  argv: z.array(z.string().max(API_LIMITS.maxCommandLength)).min(1).max(4096).optional(),
  cwd: z.string().max(4096).optional(),
  env: EnvSchema.optional(),
  user: z.string().max(64).optional(),
  timeoutMs: z.number().int().min(1).max(API_LIMITS.maxTimeoutMs).optional(),
  /** stdin as UTF-8 text, given whole. */
  stdin: z.string().max(16 * 1024 * 1024).optional(),
};
const exactlyOneCommand = (r: { cmd?: string; argv?: string[] }) => (r.cmd === undefined) !== (r.argv === undefined);
const exactlyOneCommandMessage = "give exactly one of cmd and argv";

export const RunCommandRequestSchema = z.object(commandFields).strict().refine(exactlyOneCommand, exactlyOneCommandMessage);
export type RunCommandRequest = z.input<typeof RunCommandRequestSchema>;

export const CommandResultSchema = z.object({
  exitCode: z.number().nullable(),
  signal: z.string().nullable(),
  timedOut: z.boolean(),
  stdout: z.string(),
  stderr: z.string(),
});
export type ApiCommandResult = z.infer<typeof CommandResultSchema>;

export const PtySizeSchema = z.object({ rows: z.number().int().min(1).max(1000), cols: z.number().int().min(1).max(1000) }).strict();
export type ApiPtySize = z.infer<typeof PtySizeSchema>;

/**
 * A process: a command that runs on after the request that started it. Its output is kept (the last
 * {@link API_LIMITS.maxProcessOutputBytes}) and streamed to whoever asks, its stdin stays open while `keepStdinOpen`.
 */
export const StartProcessRequestSchema = z
  .object({
    ...commandFields,
    /** Keep stdin open for later writes (POST …/stdin) instead of ending it after `stdin`. */
    keepStdinOpen: z.boolean().default(false),
    /** Run on a pseudo-terminal of this size (output is all on stdout; stdin is the terminal's input). */
    pty: PtySizeSchema.optional(),
  })
  .strict()
  .refine(exactlyOneCommand, exactlyOneCommandMessage);
export type StartProcessRequest = z.input<typeof StartProcessRequestSchema>;

export const ProcessInfoSchema = z.object({
  /** The process's id in the sandbox's agent (stable across pause/resume; reconnect with it). */
  pid: z.string(),
  /** The command as started through the API, or null for one this server did not start. */
  command: z.string().nullable(),
  running: z.boolean(),
  exitCode: z.number().nullable(),
  signal: z.string().nullable(),
  timedOut: z.boolean(),
  pty: z.boolean(),
  startedAt: z.string(),
});
export type ApiProcessInfo = z.infer<typeof ProcessInfoSchema>;

export const SignalRequestSchema = z.object({ signal: z.string().regex(/^SIG[A-Z0-9]{2,8}$/, "a signal name such as SIGTERM").default("SIGKILL") }).strict();

/**
 * One line of a process's output stream (application/x-ndjson): output chunks with their sequence numbers, then
 * one `exit`. `truncated` says output before `seq` was dropped (only the most recent output is kept); `ended`
 * closes a stream that does not follow (`follow=false`) while the process still runs.
 */
export type ApiProcessEvent =
  | { type: "stdout" | "stderr"; seq: number; /** base64 */ data: string }
  | { type: "exit"; exitCode: number | null; signal: string | null; timedOut: boolean }
  | { type: "truncated"; seq: number }
  | { type: "ended" };

export const FileTypeSchema = z.enum(["file", "directory", "symlink", "other"]);
export const FileStatSchema = z.object({
  path: z.string(),
  type: FileTypeSchema,
  size: z.number(),
  mode: z.number(),
  mtimeMs: z.number(),
});
export type ApiFileStat = z.infer<typeof FileStatSchema>;
export const DirEntrySchema = z.object({
  /** The entry's name; in a listing deeper than 1, its path relative to the listed directory ("a/b.txt"). */
  name: z.string(),
  type: FileTypeSchema,
  /** lstat's size and mtime (a symlink's own). */
  size: z.number().optional(),
  mtimeMs: z.number().optional(),
});
export type ApiDirEntry = z.infer<typeof DirEntrySchema>;

/** A guest path: absolute, or relative to the sandbox's working directory (/root); never normalised on the host. */
const guestPath = z.string().min(1).max(4096);
/** Permission bits: a number (0o755 is 493) or an octal string ("755"). */
export const FileModeSchema = z.union([
  z.number().int().min(0).max(0o7777),
  z.string().regex(/^[0-7]{1,4}$/, "mode is octal, e.g. 644").transform((octal) => Number.parseInt(octal, 8)),
]);
/** A file's modification time: whole milliseconds since the epoch, up to the end of year 9999. */
export const MtimeSchema = z.number().int().min(0).max(253_402_300_799_999);

/** `recursive` (the default) is mkdir -p: missing parents are made and an existing directory is fine. */
export const MkdirRequestSchema = z.object({ path: guestPath, recursive: z.boolean().default(true) }).strict();
/** A directory that has entries is removed only with `recursive`; a symlink is removed, never followed. */
export const RemoveRequestSchema = z.object({ path: guestPath, recursive: z.boolean().default(false) }).strict();
export const RenameRequestSchema = z.object({ from: guestPath, to: guestPath }).strict();
export const ChmodRequestSchema = z.object({ path: guestPath, mode: FileModeSchema }).strict();

/** Starts a resumable upload; the file appears at `path` (with `mode` and `mtime`) only when it is completed. */
export const StartUploadRequestSchema = z.object({ path: guestPath, mode: FileModeSchema.optional(), mtime: MtimeSchema.optional() }).strict();
export type StartUploadRequest = z.input<typeof StartUploadRequestSchema>;
export const UploadStateSchema = z.object({
  uploadId: z.string(),
  /** The destination, resolved in the guest (relative paths against /root). */
  path: z.string(),
  /** Bytes stored so far: the offset the next chunk must be sent at. */
  received: z.number(),
});
export type ApiUploadState = z.infer<typeof UploadStateSchema>;

export const SnapshotResultSchema = z.object({ snapshotId: z.string() });
export const ForkRequestSchema = z.object({ count: z.number().int().min(1).max(64).default(1) }).strict();

/** Every error answer: `{ "error": { "code": ..., "message": ... } }` with a matching HTTP status. */
export const API_ERROR_CODES = {
  bad_request: 400,
  unauthorized: 401,
  not_found: 404,
  /** The sandbox exists (it is the caller's) but has ended: killed, timed out or lost. */
  sandbox_gone: 404,
  conflict: 409,
  payload_too_large: 413,
  quota_exceeded: 403,
  internal: 500,
  unavailable: 503,
  /** The sandbox runs but its agent is restarting (it exited, or the guest broke the session): retry shortly. */
  sandbox_unhealthy: 503,
} as const;
export type ApiErrorCode = keyof typeof API_ERROR_CODES;

export const ErrorBodySchema = z.object({
  error: z.object({ code: z.string(), message: z.string() }),
});
export type ApiErrorBody = z.infer<typeof ErrorBodySchema>;

export const KeyCreatedSchema = z.object({ apiKey: z.string(), tenant: z.string(), keyId: z.string() });
