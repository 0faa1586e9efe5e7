import { ErrorBodySchema } from "@codecourier/protocol/api";
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from "fastify";
import { z } from "zod";
import { ENGINE_VERSION } from "../config.js";
import type { ControlStore, Tenant } from "../control/control-store.js";
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
}

/** Request bodies are JSON commands and small files; bulk data takes the files routes (streamed). */
export const API_BODY_LIMIT_BYTES = 20 * 1024 * 1024;

/**
 * The HTTP API. `GET /health` and `GET /openapi.json` need no key; every other route authenticates the caller's
 * API key (`Authorization: Bearer <key>`) and acts only within its tenant.
 */
export function buildApp(context: AppContext): FastifyInstance {
  const app = Fastify({ logger: false, bodyLimit: API_BODY_LIMIT_BYTES });
  const routes = context.sandboxes
    ? [...sandboxRoutes(context.sandboxes), ...fileRoutes(context.sandboxes), ...watchRoutes(context.sandboxes), ...processRoutes(new ProcessService(context.sandboxes)), ...networkRoutes(context.sandboxes, context.network)]
    : [];
  // File content arrives as a raw stream: no body limit, no buffering (a 1 GiB write streams into the guest).
  app.addContentTypeParser("application/octet-stream", (_request, payload, done) => done(null, payload));

  app.setErrorHandler((error, _request, reply) => {
    const { apiError, unexpected } = toApiError(error);
    if (unexpected) context.logError?.(`unexpected error: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
    void reply.code(apiError.status).send(apiError.body());
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
    vmLimits: vmLimitsHealth(),
    network: context.network
      ? { available: true, pool: context.network.host.pool }
      : { available: false, reason: context.networkUnavailable ?? "not configured" },
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

/** How VMs are held to their cpu and memory: the cgroup version and controllers, or why they are not. */
function vmLimitsHealth(): Record<string, unknown> {
  const cgroups = hostCgroups();
  return cgroups.available
    ? { enforced: true, cgroup: cgroups.version, controllers: cgroups.controllers, summary: cgroups.summary }
    : { enforced: false, reason: cgroups.reason };
}
