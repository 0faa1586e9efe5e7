import { DirEntrySchema, FileStatSchema } from "@codecourier/protocol/api";
import { Readable } from "node:stream";
import type { FastifyRequest } from "fastify";
import { z } from "zod";
import type { Tenant } from "../../control/control-store.js";
import { resolveInSandbox, type SandboxService } from "../../control/sandbox-service.js";
import { ApiError } from "../api-error.js";
import { StreamAnswer, params, type RouteSpec } from "../route.js";

const FilePathQuerySchema = z.object({ path: z.string().min(1).max(4096) }).strict();
const FileWriteQuerySchema = z
  .object({ path: z.string().min(1).max(4096), mode: z.string().regex(/^[0-7]{1,4}$/, "mode is octal, e.g. 644").optional() })
  .strict();

export function fileRoutes(sandboxes: SandboxService): RouteSpec[] {
  const sandbox = (t: Tenant, r: FastifyRequest) => sandboxes.runningSandbox(t, params(r).sandboxId!);
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
        return new StreamAnswer(running.agent.readFile(guestPath));
      },
    },
    {
      method: "PUT",
      url: "/v1/sandboxes/:sandboxId/files/content",
      summary: "Write a file atomically from the request body (application/octet-stream); ?path=&mode=",
      response: FileStatSchema,
      handler: async (t, r) => {
        const { path, mode } = FileWriteQuerySchema.parse(r.query);
        if (!(r.body instanceof Readable)) throw new ApiError("bad_request", "send the file's content as the body, with content-type application/octet-stream");
        const running = await sandbox(t, r);
        return running.agent.writeFile(resolveInSandbox(path), r.body, { mode: mode === undefined ? undefined : parseInt(mode, 8) });
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
      summary: "A directory's entries",
      response: z.object({ entries: z.array(DirEntrySchema) }),
      handler: async (t, r) => ({ entries: await (await sandbox(t, r)).agent.list(resolveInSandbox(FilePathQuerySchema.parse(r.query).path)) }),
    },
  ];
}

