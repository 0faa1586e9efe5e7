import {
  ChmodRequestSchema,
  DirEntrySchema,
  FileStatSchema,
  MkdirRequestSchema,
  MtimeSchema,
  RemoveRequestSchema,
  RenameRequestSchema,
  StartUploadRequestSchema,
  UploadStateSchema,
} from "@codecourier/protocol/api";
import { FILE_LIMITS } from "@codecourier/protocol";
import { Readable } from "node:stream";
import type { FastifyRequest } from "fastify";
import { z } from "zod";
import type { Tenant } from "../../control/control-store.js";
import { FileUploads } from "../../control/file-uploads.js";
import { resolveInSandbox, type SandboxService } from "../../control/sandbox-service.js";
import { ApiError } from "../api-error.js";
import { StreamAnswer, params, type RouteSpec } from "../route.js";

const guestPath = z.string().min(1).max(4096);
/** A whole number in a query string (byte offsets, sizes, ms since the epoch). */
const wholeNumber = z
  .string()
  .regex(/^\d{1,16}$/, "a whole number")
  .transform(Number)
  .refine(Number.isSafeInteger, "too large");
const FilePathQuerySchema = z.object({ path: guestPath }).strict();
const FileWriteQuerySchema = z
  .object({
    path: guestPath,
    mode: z.string().regex(/^[0-7]{1,4}$/, "mode is octal, e.g. 644").optional(),
    /** The file's mtime, ms since the epoch: set before the file takes the old one's place. */
    mtime: wholeNumber.pipe(MtimeSchema).optional(),
  })
  .strict();
const ListQuerySchema = z
  .object({ path: guestPath, depth: z.coerce.number().int().min(1).max(FILE_LIMITS.maxListDepth).default(1) })
  .strict();
const ChunkQuerySchema = z.object({ offset: wholeNumber }).strict();
const CompleteQuerySchema = z.object({ size: wholeNumber.optional() }).strict();

export function fileRoutes(sandboxes: SandboxService): RouteSpec[] {
  const sandbox = (t: Tenant, r: FastifyRequest) => sandboxes.runningSandbox(t, params(r).sandboxId!);
  const uploads = new FileUploads(sandboxes);
  const uploadUrl = "/v1/sandboxes/:sandboxId/files/uploads/:uploadId";
  const uploadOf = (r: FastifyRequest) => [params(r).sandboxId!, params(r).uploadId!] as const;
  return [
    {
      method: "GET",
      url: "/v1/sandboxes/:sandboxId/files/content",
      summary: "Read a file (streamed bytes); ?path= absolute or relative to /root",
      handler: async (t, r) => {
        const { path } = FilePathQuerySchema.parse(r.query);
        const running = await sandbox(t, r);
        const guestPath = resolveInSandbox(path);
        // The first stat answers "not found" / "is a directory" as a clean error before any byte is sent.
        const info = await running.agent.stat(guestPath);
        if (info.type === "directory") throw new ApiError("bad_request", `${path} is a directory`);
        if (info.type === "other") throw new ApiError("bad_request", `${path} is not a regular file (a FIFO, socket or device)`);
        // A symlink is read through (stat describes the link itself): whether it leads anywhere readable — and
        // whether the guest swapped the file meanwhile — is known from the read's first answer, so it is waited
        // for, and a refusal is a clean error answer rather than a stream that fails before its first byte.
        return new StreamAnswer(await firstAnswer(running.agent.readFile(guestPath)));
      },
    },
    {
      method: "PUT",
      url: "/v1/sandboxes/:sandboxId/files/content",
      summary: "Write a file atomically from the request body (application/octet-stream); ?path=&mode=&mtime=",
      response: FileStatSchema,
      handler: async (t, r) => {
        const { path, mode, mtime } = FileWriteQuerySchema.parse(r.query);
        const body = requireStreamBody(r);
        const running = await sandbox(t, r);
        const announced = Number(r.headers["content-length"]);
        return running.agent.writeFile(resolveInSandbox(path), body, {
          mode: mode === undefined ? undefined : parseInt(mode, 8),
          mtimeMs: mtime,
          // A client that hangs up mid-body must not leave the bytes that came as the file.
          expectedBytes: Number.isSafeInteger(announced) && announced >= 0 ? announced : undefined,
        });
      },
    },
    {
      method: "GET",
      url: "/v1/sandboxes/:sandboxId/files/stat",
      summary: "A file's type, size, mode and mtime",
      response: FileStatSchema,
      handler: async (t, r) => (await sandbox(t, r)).agent.stat(resolveInSandbox(FilePathQuerySchema.parse(r.query).path)),
    },
    {
      method: "GET",
      url: "/v1/sandboxes/:sandboxId/files/list",
      summary: `A directory's entries; ?depth=N walks N levels (names relative to path, symlinks not followed, at most ${FILE_LIMITS.maxListedEntries} entries)`,
      response: z.object({ entries: z.array(DirEntrySchema) }),
      handler: async (t, r) => {
        const { path, depth } = ListQuerySchema.parse(r.query);
        return { entries: await (await sandbox(t, r)).agent.list(resolveInSandbox(path), { depth }) };
      },
    },
    {
      method: "POST",
      url: "/v1/sandboxes/:sandboxId/files/mkdir",
      summary: "Make a directory (recursive, the default: like mkdir -p)",
      body: MkdirRequestSchema,
      response: FileStatSchema,
      handler: async (t, r) => {
        const { path, recursive } = MkdirRequestSchema.parse(r.body);
        return (await sandbox(t, r)).agent.mkdir(resolveInSandbox(path), { recursive });
      },
    },
    {
      method: "POST",
      url: "/v1/sandboxes/:sandboxId/files/remove",
      summary: "Remove a file, symlink or directory (one with entries only with recursive: true)",
      body: RemoveRequestSchema,
      status: 204,
      handler: async (t, r) => {
        const { path, recursive } = RemoveRequestSchema.parse(r.body);
        await (await sandbox(t, r)).agent.remove(resolveInSandbox(path), { recursive });
      },
    },
    {
      method: "POST",
      url: "/v1/sandboxes/:sandboxId/files/rename",
      summary: "Rename (atomic rename(2); replaces a file at `to`)",
      body: RenameRequestSchema,
      response: FileStatSchema,
      handler: async (t, r) => {
        const { from, to } = RenameRequestSchema.parse(r.body);
        return (await sandbox(t, r)).agent.rename(resolveInSandbox(from), resolveInSandbox(to));
      },
    },
    {
      method: "POST",
      url: "/v1/sandboxes/:sandboxId/files/chmod",
      summary: "Change a file's permission bits (follows symlinks)",
      body: ChmodRequestSchema,
      response: FileStatSchema,
      handler: async (t, r) => {
        const { path, mode } = ChmodRequestSchema.parse(r.body);
        return (await sandbox(t, r)).agent.chmod(resolveInSandbox(path), mode);
      },
    },
    {
      method: "POST",
      url: "/v1/sandboxes/:sandboxId/files/uploads",
      summary: "Start a resumable upload: {path, mode?, mtime?} → {uploadId, received: 0}",
      body: StartUploadRequestSchema,
      response: UploadStateSchema,
      status: 201,
      handler: (t, r) => uploads.start(t, params(r).sandboxId!, StartUploadRequestSchema.parse(r.body)),
    },
    {
      method: "GET",
      url: uploadUrl,
      summary: "An upload's state: how many bytes it holds (the offset of the next chunk)",
      response: UploadStateSchema,
      handler: async (t, r) => uploads.status(t, ...uploadOf(r)),
    },
    {
      method: "PUT",
      url: uploadUrl,
      summary: "Append a chunk (application/octet-stream, with Content-Length) at ?offset=, which must equal `received` (else 409)",
      response: UploadStateSchema,
      handler: async (t, r) => {
        const body = requireStreamBody(r);
        const query = ChunkQuerySchema.safeParse(r.query);
        const length = Number(r.headers["content-length"]);
        if (!query.success || !Number.isSafeInteger(length)) {
          body.resume(); // drained, so the client reads the answer instead of a reset
          if (!query.success) throw query.error;
          // The declared length is what tells a whole chunk from one whose sender went away half-way.
          throw new ApiError("bad_request", "send each chunk with a Content-Length");
        }
        return uploads.append(t, ...uploadOf(r), query.data.offset, length, body);
      },
    },
    {
      method: "POST",
      url: `${uploadUrl}/complete`,
      summary: "Finish an upload: fsync, mode and mtime, atomic rename into place (?size= checks the total) → its stat",
      response: FileStatSchema,
      handler: async (t, r) => uploads.complete(t, ...uploadOf(r), CompleteQuerySchema.parse(r.query).size),
    },
    {
      method: "DELETE",
      url: uploadUrl,
      summary: "Abort an upload and remove its partial data",
      status: 204,
      handler: (t, r) => uploads.abort(t, ...uploadOf(r)),
    },
  ];
}

function requireStreamBody(r: FastifyRequest): Readable {
  if (!(r.body instanceof Readable)) throw new ApiError("bad_request", "send the file's content as the body, with content-type application/octet-stream");
  return r.body;
}

/**
 * `stream` once its first bytes (or its end) arrived, or its error: the agent's refusal (not found, not a regular
 * file) becomes the API's error answer, with the status still to be chosen.
 */
function firstAnswer(stream: Readable): Promise<Readable> {
  return new Promise((resolve, reject) => {
    const onData = (chunk: Buffer) => {
      settle();
      stream.pause();
      stream.unshift(chunk);
      resolve(stream);
    };
    const onEnd = () => {
      settle();
      resolve(Readable.from([]));
    };
    const onError = (error: Error) => {
      settle();
      reject(error);
    };
    const settle = () => {
      stream.off("data", onData);
      stream.off("end", onEnd);
      stream.off("error", onError);
    };
    stream.on("data", onData);
    stream.once("end", onEnd);
    stream.once("error", onError);
  });
}
