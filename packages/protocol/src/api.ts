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
  maxMemoryMB: 64 * 1024,
  maxDiskMB: 1024 * 1024,
  maxTimeoutMs: 7 * 24 * 3600 * 1000,
  maxPageSize: 1000,
  maxCommandLength: 128 * 1024,
  /** Output kept per process for streams that start late (logs, reconnects). */
  maxProcessOutputBytes: 4 * 1024 * 1024,
  /** Processes (running or exited) a sandbox keeps on the server. */
  maxProcessesPerSandbox: 256,
  /** Output a run-to-completion command returns per stream unless its request asks for another cap. */
  defaultCommandOutputBytes: 1024 * 1024,
  /** The largest cap a run-to-completion request may ask for, per stream; more output takes the process API. */
  maxCommandOutputBytes: 16 * 1024 * 1024,
  /**
   * Output the server holds for one tenant at a time: kept process output and run-to-completion output being
   * collected, together. Past it the oldest kept process output is dropped; commands' output is truncated.
   */
  tenantOutputBudgetBytes: 64 * 1024 * 1024,
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
    /** vCPUs; rounded up to the next of SANDBOX_SHAPES.cpus. */
    cpu: z.number().int().min(1).max(API_LIMITS.maxCpus).optional(),
    /** Guest RAM; rounded up to the next of SANDBOX_SHAPES.memoryMB. */
    memoryMB: z.number().int().min(128).max(API_LIMITS.maxMemoryMB).optional(),
    /**
     * Root disk size: what the guest's / can hold and the most its disk layers can take on the host. Default and
     * minimum: the template's; rounded up to whole GiB (1024 MB); grown in the guest at create.
     */
    diskMB: z.number().int().min(1).max(API_LIMITS.maxDiskMB).optional(),
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
  diskMB: z.number(),
  metadata: z.record(z.string(), z.string()),
  region: z.string(),
  createdAt: z.string(),
  /** When the sandbox times out (ISO time), or null without a timeout. */
  timeoutAt: z.string().nullable(),
  onTimeout: z.enum(["kill", "pause"]),
  /** What the create asked for, when it was rounded up to a shape (cpu and memoryMB above are what it got). */
  requested: z.object({ cpu: z.number(), memoryMB: z.number(), diskMB: z.number().optional() }).optional(),
});
export type ApiSandbox = z.infer<typeof SandboxSchema>;

/**
 * The VM shapes a host offers: a create's cpu and memoryMB are rounded up to the next step of each list. Each shape
 * is a template snapshot of its own (a clone has its template's vCPUs and RAM), so a fixed list bounds how many of
 * them one host can be made to boot and keep.
 */
export const SANDBOX_SHAPES = {
  cpus: [1, 2, 4, 8, 16, 32, 64],
  memoryMB: [256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536],
} as const;

/** A tenant's limits and what it uses of them now (`GET /v1/limits`). */
export const TenantLimitsSchema = z.object({
  /** Live (running or paused) sandboxes at once. */
  maxSandboxes: z.number(),
  /** vCPUs of one sandbox. */
  maxCpus: z.number(),
  /** RAM of one sandbox. */
  maxMemoryMB: z.number(),
  /** vCPUs of all live sandboxes together. */
  maxTotalCpus: z.number(),
  /** RAM of all live sandboxes together. */
  maxTotalMemoryMB: z.number(),
  /** Root disk of one sandbox. */
  maxDiskMB: z.number(),
  /** Root disks of all live sandboxes together (each counted at its full size: what it may take on the host). */
  maxTotalDiskMB: z.number(),
  /** Snapshots kept (not counting pauses). */
  maxSnapshots: z.number(),
  /** Bytes of all kept snapshots together (memory file + disk layer, as measured when each was taken). */
  maxSnapshotBytes: z.number(),
});
export type ApiTenantLimits = z.infer<typeof TenantLimitsSchema>;
export const TenantUsageSchema = z.object({
  sandboxes: z.number(),
  cpus: z.number(),
  memoryMB: z.number(),
  diskMB: z.number(),
  snapshots: z.number(),
  snapshotBytes: z.number(),
});
export type ApiTenantUsage = z.infer<typeof TenantUsageSchema>;
export const LimitsAnswerSchema = z.object({
  tenant: z.string(),
  limits: TenantLimitsSchema,
  usage: TenantUsageSchema,
  /** Per sandbox, the same for every tenant of this host. */
  sandbox: z.object({
    /** Size of a sandbox's root disk unless it asks for more (its template's). */
    defaultDiskMB: z.number(),
    /** The most of its serial console the host keeps. */
    consoleLogBytes: z.number(),
  }),
  shapes: z.object({ cpus: z.array(z.number()), memoryMB: z.array(z.number()) }),
});
export type ApiLimitsAnswer = z.infer<typeof LimitsAnswerSchema>;

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

export const RunCommandRequestSchema = z
  .object({
    ...commandFields,
    /**
     * Most bytes returned per output stream (default 1 MiB, at most 16 MiB). Past it the rest is read and discarded,
     * the command runs to its end, and the result says so (`stdoutTruncated`). Stream bigger output (processes).
     */
    maxOutputBytes: z.number().int().min(0).max(API_LIMITS.maxCommandOutputBytes).optional(),
  })
  .strict()
  .refine(exactlyOneCommand, exactlyOneCommandMessage);
export type RunCommandRequest = z.input<typeof RunCommandRequestSchema>;

/** How a stream's bytes travel in a command result: UTF-8 text, or base64 for output that is not (NUL bytes, binary). */
export const OutputEncodingSchema = z.enum(["utf8", "base64"]);
export type ApiOutputEncoding = z.infer<typeof OutputEncodingSchema>;

export const CommandResultSchema = z.object({
  exitCode: z.number().nullable(),
  signal: z.string().nullable(),
  timedOut: z.boolean(),
  /** The output kept (see stdoutTruncated), as stdoutEncoding says. */
  stdout: z.string(),
  stderr: z.string(),
  stdoutEncoding: OutputEncodingSchema,
  stderrEncoding: OutputEncodingSchema,
  /** Whether output past the cap (maxOutputBytes, or the tenant's output budget) was dropped. */
  stdoutTruncated: z.boolean(),
  stderrTruncated: z.boolean(),
  /** Bytes the stream produced in all, kept or not. */
  stdoutTotalBytes: z.number(),
  stderrTotalBytes: z.number(),
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
  | {
      type: "exit";
      exitCode: number | null;
      signal: string | null;
      timedOut: boolean;
      /** Bytes of each stream this server received (kept or not; since it attached, for a process it re-attached). */
      stdoutBytes?: number;
      stderrBytes?: number;
    }
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
  /** A request body that sent nothing for longer than the server's body idle timeout (docs/api.md). */
  request_timeout: 408,
  payload_too_large: 413,
  /** The request's headers are larger than the server accepts. */
  headers_too_large: 431,
  quota_exceeded: 403,
  internal: 500,
  unavailable: 503,
  /** The sandbox runs but its agent is restarting (it exited, or the guest broke the session): retry shortly. */
  sandbox_unhealthy: 503,
} as const;
export type ApiErrorCode = keyof typeof API_ERROR_CODES;

export const ErrorBodySchema = z.object({
  error: z.object({
    code: z.string(),
    message: z.string(),
    /** For quota_exceeded: which limit, its value, what is used and what the request asked for. */
    quota: z.object({ limit: z.string(), max: z.number(), used: z.number(), requested: z.number() }).optional(),
  }),
});
export type ApiErrorBody = z.infer<typeof ErrorBodySchema>;

export const KeyCreatedSchema = z.object({ apiKey: z.string(), tenant: z.string(), keyId: z.string() });
