import {
  CommandResultSchema,
  CreateSandboxRequestSchema,
  DirEntrySchema,
  FileStatSchema,
  ErrorBodySchema,
  ForkRequestSchema,
  RunCommandRequestSchema,
  SandboxListSchema,
  SandboxSchema,
  SetTimeoutRequestSchema,
  SnapshotResultSchema,
} from "@codecourier/protocol/api";
import { Readable } from "node:stream";
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from "fastify";
import { z } from "zod";
import { ENGINE_VERSION } from "../config.js";
import type { ControlStore, Tenant } from "../control/control-store.js";
import { resolveInSandbox, type SandboxService } from "../control/sandbox-service.js";
import type { GuestImage } from "../images/guest-image.js";
import type { AcceleratorChoice } from "../vmm/accel.js";
import { ApiError, toApiError } from "./api-error.js";

export interface AppContext {
  accel: AcceleratorChoice;
  image: GuestImage;
  region: string;
  /** Absent: only /health and /openapi.json are served (the server is still starting its engine). */
  store?: ControlStore;
  sandboxes?: SandboxService;
  /** Where unexpected errors are reported (never to the client). */
  logError?: (message: string) => void;
}

/** Request bodies are JSON commands and small files; bulk data takes the files routes (streamed). */
export const API_BODY_LIMIT_BYTES = 20 * 1024 * 1024;

type Handler = (tenant: Tenant, request: FastifyRequest) => Promise<unknown>;

/** A handler's answer that is a byte stream (file content), not JSON. */
export class StreamAnswer {
  constructor(
    readonly stream: Readable,
    readonly contentType = "application/octet-stream",
  ) {}
}

interface RouteSpec {
  method: "GET" | "POST" | "PUT" | "DELETE";
  url: string;
  summary: string;
  body?: z.ZodType;
  response?: z.ZodType;
  /** Answer status on success (default 200; 204 sends no body). */
  status?: number;
  handler: Handler;
}

const params = (request: FastifyRequest) => request.params as Record<string, string>;
const FilePathQuerySchema = z.object({ path: z.string().min(1).max(4096) }).strict();
const FileWriteQuerySchema = z
  .object({ path: z.string().min(1).max(4096), mode: z.string().regex(/^[0-7]{1,4}$/, "mode is octal, e.g. 644").optional() })
  .strict();

function fileRoutes(sandboxes: SandboxService): RouteSpec[] {
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

function sandboxRoutes(sandboxes: SandboxService): RouteSpec[] {
  return [
    { method: "POST", url: "/v1/sandboxes", summary: "Create a sandbox", body: CreateSandboxRequestSchema, response: SandboxSchema, status: 201, handler: (t, r) => sandboxes.create(t, r.body) },
    { method: "GET", url: "/v1/sandboxes", summary: "List sandboxes (filter: state, metadata.KEY=VALUE; paginated)", response: SandboxListSchema, handler: (t, r) => sandboxes.list(t, r.query) },
    { method: "GET", url: "/v1/sandboxes/:sandboxId", summary: "Get a sandbox", response: SandboxSchema, handler: (t, r) => sandboxes.get(t, params(r).sandboxId!) },
    { method: "DELETE", url: "/v1/sandboxes/:sandboxId", summary: "Kill a sandbox", status: 204, handler: (t, r) => sandboxes.kill(t, params(r).sandboxId!) },
    {
      method: "POST",
      url: "/v1/sandboxes/:sandboxId/timeout",
      summary: "Set the sandbox's timeout, counted from now",
      body: SetTimeoutRequestSchema,
      response: SandboxSchema,
      handler: (t, r) => sandboxes.setTimeout(t, params(r).sandboxId!, SetTimeoutRequestSchema.parse(r.body).timeoutMs),
    },
    { method: "POST", url: "/v1/sandboxes/:sandboxId/connect", summary: "Connect (resumes a paused sandbox)", response: SandboxSchema, handler: (t, r) => sandboxes.connect(t, params(r).sandboxId!) },
    { method: "POST", url: "/v1/sandboxes/:sandboxId/commands", summary: "Run a command to completion", body: RunCommandRequestSchema, response: CommandResultSchema, handler: (t, r) => sandboxes.runCommand(t, params(r).sandboxId!, r.body) },
    { method: "POST", url: "/v1/sandboxes/:sandboxId/snapshot", summary: "Snapshot a running sandbox (it keeps running)", response: SnapshotResultSchema, status: 201, handler: (t, r) => sandboxes.snapshot(t, params(r).sandboxId!) },
    { method: "POST", url: "/v1/sandboxes/:sandboxId/pause", summary: "Pause a sandbox (its memory is saved, its VM stops)", response: SandboxSchema, handler: (t, r) => sandboxes.pause(t, params(r).sandboxId!) },
    { method: "POST", url: "/v1/sandboxes/:sandboxId/resume", summary: "Resume a paused sandbox", response: SandboxSchema, handler: (t, r) => sandboxes.resume(t, params(r).sandboxId!) },
    {
      method: "POST",
      url: "/v1/sandboxes/:sandboxId/fork",
      summary: "Fork a sandbox or snapshot into new sandboxes",
      body: ForkRequestSchema,
      response: z.object({ sandboxes: z.array(SandboxSchema) }),
      status: 201,
      handler: async (t, r) => ({ sandboxes: await sandboxes.fork(t, params(r).sandboxId!, ForkRequestSchema.parse(r.body ?? {}).count) }),
    },
    { method: "GET", url: "/v1/snapshots", summary: "List snapshots", handler: async (t) => ({ snapshots: await sandboxes.listSnapshots(t) }) },
    { method: "DELETE", url: "/v1/snapshots/:snapshotId", summary: "Delete a snapshot", status: 204, handler: (t, r) => sandboxes.deleteSnapshot(t, params(r).snapshotId!) },
  ];
}

/**
 * The HTTP API. `GET /health` and `GET /openapi.json` need no key; every other route authenticates the caller's
 * API key (`Authorization: Bearer <key>`) and acts only within its tenant.
 */
export function buildApp(context: AppContext): FastifyInstance {
  const app = Fastify({ logger: false, bodyLimit: API_BODY_LIMIT_BYTES });
  const routes = context.sandboxes ? [...sandboxRoutes(context.sandboxes), ...fileRoutes(context.sandboxes)] : [];
  // File content arrives as a raw stream: no body limit, no buffering (a 1 GiB write streams into the guest).
  app.addContentTypeParser("application/octet-stream", (_request, payload, done) => done(null, payload));

  app.setErrorHandler((error, _request, reply) => {
    const { apiError, unexpected } = toApiError(error);
    if (unexpected) context.logError?.(`unexpected error: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
    void reply.code(apiError.status).send({ error: { code: apiError.code, message: apiError.message } });
  });
  app.setNotFoundHandler((request, reply) => {
    void reply.code(404).send({ error: { code: "not_found", message: `no route ${request.method} ${request.url.split("?")[0]}` } });
  });

  app.get("/health", async () => ({
    ok: true,
    version: ENGINE_VERSION,
    accel: context.accel.accel,
    accelReason: context.accel.reason,
    region: context.region,
    image: { id: context.image.id, kernel: context.image.kernelVersion },
  }));
  const openApi = openApiDocument(routes);
  app.get("/openapi.json", async () => openApi);

  for (const route of routes) {
    app.route({
      method: route.method,
      url: route.url,
      handler: async (request: FastifyRequest, reply: FastifyReply) => {
        const tenant = await authenticate(context, request);
        const result = await route.handler(tenant, request);
        const status = route.status ?? 200;
        if (status === 204) return reply.code(204).send();
        if (result instanceof StreamAnswer) return reply.code(status).type(result.contentType).send(result.stream);
        return reply.code(status).send(result);
      },
    });
  }
  return app;
}

async function authenticate(context: AppContext, request: FastifyRequest): Promise<Tenant> {
  const header = request.headers.authorization;
  const apiKey = typeof header === "string" && header.startsWith("Bearer ") ? header.slice("Bearer ".length).trim() : undefined;
  if (apiKey === undefined || apiKey === "") {
    throw new ApiError("unauthorized", "missing API key: send Authorization: Bearer <key> (create one with `codecourier keys create --tenant NAME`)");
  }
  const tenant = await context.store?.authenticate(apiKey);
  if (tenant === undefined) throw new ApiError("unauthorized", "unknown or revoked API key");
  return tenant;
}

/** OpenAPI 3.1 built from the same route table and zod schemas the server runs with. */
function openApiDocument(routes: RouteSpec[]): Record<string, unknown> {
  const paths: Record<string, Record<string, unknown>> = {};
  const errorResponse = { description: "error", content: { "application/json": { schema: z.toJSONSchema(ErrorBodySchema, { io: "output" }) } } };
  for (const route of routes) {
    const path = route.url.replace(/:([A-Za-z]+)/g, "{$1}");
    const pathParams = [...route.url.matchAll(/:([A-Za-z]+)/g)].map((m) => ({ name: m[1], in: "path", required: true, schema: { type: "string" } }));
    const status = String(route.status ?? 200);
    paths[path] ??= {};
    paths[path][route.method.toLowerCase()] = {
      summary: route.summary,
      security: [{ apiKey: [] }],
      parameters: pathParams,
      ...(route.body ? { requestBody: { required: true, content: { "application/json": { schema: z.toJSONSchema(route.body, { io: "input", unrepresentable: "any" }) } } } } : {}),
      responses: {
        [status]: route.response && status !== "204"
          ? { description: "ok", content: { "application/json": { schema: z.toJSONSchema(route.response, { io: "output", unrepresentable: "any" }) } } }
          : { description: "ok" },
        default: errorResponse,
      },
    };
  }
  return {
    openapi: "3.1.0",
    info: { title: "CodeCourier API", version: ENGINE_VERSION },
    components: { securitySchemes: { apiKey: { type: "http", scheme: "bearer" } } },
    paths: {
      "/health": { get: { summary: "Server health and accelerator (no key needed)", responses: { "200": { description: "ok" } } } },
      ...paths,
    },
  };
}
