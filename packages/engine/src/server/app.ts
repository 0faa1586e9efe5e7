import { ErrorBodySchema } from "@codecourier/protocol/api";
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from "fastify";
import type { Socket } from "node:net";
import type { Readable } from "node:stream";
import { z } from "zod";
import { ENGINE_VERSION, bodyIdleTimeoutMs, housekeepingIntervalMs } from "../config.js";
import type { Authenticated, ControlStore } from "../control/control-store.js";
import type { SandboxService } from "../control/sandbox-service.js";
import type { GuestImage } from "../images/guest-image.js";
import type { AcceleratorChoice } from "../vmm/accel.js";
import { ApiError, toApiError } from "./api-error.js";
import { hostCgroups } from "../vmm/cgroups/host-cgroups.js";
import { StreamAnswer, type RouteSpec } from "./route.js";
import { fileRoutes } from "./routes/files.js";
import { processRoutes } from "./routes/processes.js";
import { ProcessService } from "../control/process-service.js";
import { sandboxRoutes } from "./routes/sandboxes.js";
import { watchRoutes } from "./routes/watch.js";
import { networkRoutes } from "./routes/network.js";
import type { NetworkService } from "../network/network-service.js";
import { guardBodyIdle, RequestBodyIdleError } from "./body-idle-guard.js";
import { KeyStreams } from "./key-streams.js";

export interface AppContext {
  accel: AcceleratorChoice;
  image: GuestImage;
  region: string;
  /** Absent: only /health and /openapi.json are served (the server is still starting its engine). */
  store?: ControlStore;
  sandboxes?: SandboxService;
  /** Sandbox networking; absent when the host cannot offer it (the network routes then answer 503). */
  network?: NetworkService;
  /** Why there is no networking, for /health. */
  networkUnavailable?: string;
  /** Where unexpected errors are reported (never to the client). */
  logError?: (message: string) => void;
  /** A request body idle this long fails with 408 (default: config.ts bodyIdleTimeoutMs). */
  bodyIdleTimeoutMs?: number;
  /** How often streams' keys are checked for revocation (default: config.ts housekeepingIntervalMs). */
  keyRevocationPollMs?: number;
}

/** The tenant whose keys see /health's host details (the one the first start makes a key for: the operator). */
export const ADMIN_TENANT = "admin";

/** Request bodies are JSON commands and small files; bulk data takes the files routes (streamed). */
export const API_BODY_LIMIT_BYTES = 20 * 1024 * 1024;

/**
 * The HTTP API. `GET /health` and `GET /openapi.json` need no key; every other route authenticates the caller's
 * API key (`Authorization: Bearer <key>`) and acts only within its tenant.
 */
export function buildApp(context: AppContext): FastifyInstance {
  const app = Fastify({ logger: false, bodyLimit: API_BODY_LIMIT_BYTES, clientErrorHandler: answerClientError });
  const idleMs = context.bodyIdleTimeoutMs ?? bodyIdleTimeoutMs();
  const keyStreams = context.store ? new KeyStreams(context.store, context.keyRevocationPollMs ?? housekeepingIntervalMs(), (line) => context.logError?.(line)) : undefined;
  app.addHook("onClose", async () => keyStreams?.close());
  // Every body (JSON or a file's bytes) fails with 408 once its client stops sending: a trickled body would pin a
  // guest write or an upload chunk's lock for as long as the client likes.
  app.addHook("preParsing", async (request, _reply, payload) => (hasBody(request) ? guardBodyIdle(payload, idleMs) : payload));
  const routes = context.sandboxes
    ? [...sandboxRoutes(context.sandboxes), ...fileRoutes(context.sandboxes), ...watchRoutes(context.sandboxes), ...processRoutes(new ProcessService(context.sandboxes)), ...networkRoutes(context.sandboxes, context.network)]
    : [];
  // File content arrives as a raw stream: no body limit, no buffering (a 1 GiB write streams into the guest).
  app.addContentTypeParser("application/octet-stream", (_request, payload, done) => done(null, payload));

  app.setErrorHandler((error, request, reply) => {
    const { apiError, unexpected } = toApiError(error);
    // A client that closed its socket mid-request is an everyday event, not a fault: nobody reads this answer.
    if (unexpected && !clientWentAway(request)) context.logError?.(`unexpected error: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
    // The rest of an abandoned body is not waited for: the connection ends with this answer.
    if (apiError instanceof RequestBodyIdleError || error instanceof RequestBodyIdleError) void reply.header("connection", "close");
    // JSON whatever the route had set (a stream that failed before its first byte had set application/octet-stream).
    void reply.code(apiError.status).type("application/json; charset=utf-8").send(apiError.body());
  });
  app.setNotFoundHandler((request, reply) => {
    void reply.code(404).send({ error: { code: "not_found", message: `no route ${request.method} ${request.url.split("?")[0]}` } });
  });

  // Without a key: what a client needs to pick a server, nothing about the host (paths, cgroups, address pools).
  // With the admin tenant's key: why limits or networking are missing, and where.
  app.get("/health", async (request) => {
    const hostDetails = (await optionalAuthentication(context, request))?.tenant.name === ADMIN_TENANT;
    const cgroups = hostCgroups();
    return {
      ok: true,
      version: ENGINE_VERSION,
      accel: context.accel.accel,
      accelReason: context.accel.reason,
      region: context.region,
      vmLimits: hostDetails ? vmLimitsHealth() : { enforced: cgroups.available, ...(cgroups.available ? { cgroup: cgroups.version } : {}) },
      network: context.network
        ? { available: true, ...(hostDetails ? { pool: context.network.host.pool } : {}) }
        : { available: false, ...(hostDetails ? { reason: context.networkUnavailable ?? "not configured" } : {}) },
      image: { id: context.image.id, kernel: context.image.kernelVersion },
    };
  });
  const openApi = openApiDocument(routes);
  app.get("/openapi.json", async () => openApi);

  for (const route of routes) {
    app.route({
      method: route.method,
      url: route.url,
      handler: async (request: FastifyRequest, reply: FastifyReply) => {
        const { tenant, keyId } = await authenticate(context, request);
        const result = await route.handler(tenant, request);
        const status = route.status ?? 200;
        if (status === 204) return reply.code(204).send();
        if (result instanceof StreamAnswer) {
          const stream = keyStreams ? keyStreams.track(keyId, result.stream, result.contentType) : result.stream;
          logStreamFailures(context, request, stream);
          return reply.code(status).type(result.contentType).send(stream);
        }
        return reply.code(status).send(result);
      },
    });
  }
  return app;
}

/** The key of `Authorization: Bearer <key>`; the scheme's name is case-insensitive (RFC 9110 §11.1). */
function bearerKey(request: FastifyRequest): string | undefined {
  const header = request.headers.authorization;
  const match = typeof header === "string" ? /^bearer[ \t]+(\S+)[ \t]*$/i.exec(header) : null;
  return match?.[1];
}

async function authenticate(context: AppContext, request: FastifyRequest): Promise<Authenticated> {
  const apiKey = bearerKey(request);
  if (apiKey === undefined) {
    throw new ApiError("unauthorized", "missing API key: send Authorization: Bearer <key> (create one with `codecourier keys create --tenant NAME`)");
  }
  const authenticated = await context.store?.authenticateKey(apiKey);
  if (authenticated === undefined) throw new ApiError("unauthorized", "unknown or revoked API key");
  return authenticated;
}

/** The caller's key where it sent a valid one; a missing or bad key is no error here (/health needs none). */
async function optionalAuthentication(context: AppContext, request: FastifyRequest): Promise<Authenticated | undefined> {
  const apiKey = bearerKey(request);
  return apiKey === undefined ? undefined : context.store?.authenticateKey(apiKey);
}

/** Whether the request comes with a body (a length over 0, or chunked): the rest have nothing to time out. */
function hasBody(request: FastifyRequest): boolean {
  const length = request.headers["content-length"];
  return request.headers["transfer-encoding"] !== undefined || (length !== undefined && length !== "0");
}

/**
 * Whether the client closed its connection before its answer: its request's errors are nobody's concern. (A request
 * is also `destroyed` once its body was read to the end, so only a request destroyed before it was complete counts.)
 */
function clientWentAway(request: FastifyRequest): boolean {
  return request.raw.socket?.destroyed === true || (!request.raw.complete && (request.raw.destroyed || request.raw.readableAborted));
}

/** A stream that fails after its answer began (the status is sent): logged when unexpected, since the client only sees a cut. */
function logStreamFailures(context: AppContext, request: FastifyRequest, stream: Readable): void {
  stream.once("error", (error) => {
    if (clientWentAway(request)) return;
    const { unexpected } = toApiError(error);
    if (unexpected) context.logError?.(`unexpected error in a streamed answer of ${request.method} ${request.url.split("?")[0]}: ${error.stack ?? error.message}`);
  });
}

/**
 * Errors Node's HTTP parser finds before any route runs (headers too large, malformed requests), answered in the
 * API's error shape rather than Node's or Fastify's own; the connection then closes.
 */
function answerClientError(error: Error & { code?: string }, socket: Socket): void {
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  const apiError =
    error.code === "HPE_HEADER_OVERFLOW"
      ? new ApiError("headers_too_large", "the request's headers are too large")
      : error.code === "ERR_HTTP_REQUEST_TIMEOUT"
        ? new ApiError("request_timeout", "the request took too long to arrive")
        : new ApiError("bad_request", "malformed HTTP request");
  const body = JSON.stringify({ error: { code: apiError.code, message: apiError.message } });
  socket.end(
    `HTTP/1.1 ${apiError.status} ${apiError.code}\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
  );
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

/** How VMs are held to their cpu and memory: the cgroup version and controllers, or why they are not. */
function vmLimitsHealth(): Record<string, unknown> {
  const cgroups = hostCgroups();
  return cgroups.available
    ? { enforced: true, cgroup: cgroups.version, controllers: cgroups.controllers, summary: cgroups.summary }
    : { enforced: false, reason: cgroups.reason };
}
