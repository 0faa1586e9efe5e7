/**
 * The control-plane HTTP API (server ⇄ SDK / CLI): request and response shapes, defined once as zod schemas. The
 * server validates with them and publishes them in /openapi.json; the SDK uses the inferred types.
 */
import { z } from "zod";

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
} as const;

const envName = z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, "environment variable names are letters, digits and _");
const metadataKey = z.string().regex(/^[A-Za-z0-9_.:-]{1,64}$/, "metadata keys are 1-64 of A-Z a-z 0-9 _ . : -");

export const EnvSchema = z
  .record(envName, z.string().max(API_LIMITS.maxEnvValueBytes))
  .refine((env) => Object.keys(env).length <= API_LIMITS.maxEnvEntries, `at most ${API_LIMITS.maxEnvEntries} variables`);

export const MetadataSchema = z
  .record(metadataKey, z.string().max(API_LIMITS.maxMetadataValueLength))
  .refine((m) => Object.keys(m).length <= API_LIMITS.maxMetadataEntries, `at most ${API_LIMITS.maxMetadataEntries} entries`);

export const SandboxStateSchema = z.enum(["running", "paused", "stopped", "lost"]);
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

export const RunCommandRequestSchema = z
  .object({
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
  })
  .strict()
  .refine((r) => (r.cmd === undefined) !== (r.argv === undefined), "give exactly one of cmd and argv");
export type RunCommandRequest = z.input<typeof RunCommandRequestSchema>;

export const CommandResultSchema = z.object({
  exitCode: z.number().nullable(),
  signal: z.string().nullable(),
  timedOut: z.boolean(),
  stdout: z.string(),
  stderr: z.string(),
});
export type ApiCommandResult = z.infer<typeof CommandResultSchema>;

export const FileTypeSchema = z.enum(["file", "directory", "symlink", "other"]);
export const FileStatSchema = z.object({
  path: z.string(),
  type: FileTypeSchema,
  size: z.number(),
  mode: z.number(),
  mtimeMs: z.number(),
});
export type ApiFileStat = z.infer<typeof FileStatSchema>;
export const DirEntrySchema = z.object({ name: z.string(), type: FileTypeSchema });
export type ApiDirEntry = z.infer<typeof DirEntrySchema>;

export const SnapshotResultSchema = z.object({ snapshotId: z.string() });
export const ForkRequestSchema = z.object({ count: z.number().int().min(1).max(64).default(1) }).strict();

/** Every error answer: `{ "error": { "code": ..., "message": ... } }` with a matching HTTP status. */
export const API_ERROR_CODES = {
  bad_request: 400,
  unauthorized: 401,
  not_found: 404,
  conflict: 409,
  payload_too_large: 413,
  quota_exceeded: 403,
  internal: 500,
  unavailable: 503,
} as const;
export type ApiErrorCode = keyof typeof API_ERROR_CODES;

export const ErrorBodySchema = z.object({
  error: z.object({ code: z.string(), message: z.string() }),
});
export type ApiErrorBody = z.infer<typeof ErrorBodySchema>;

export const KeyCreatedSchema = z.object({ apiKey: z.string(), tenant: z.string(), keyId: z.string() });
