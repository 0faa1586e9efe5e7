import { Readable } from "node:stream";
import {
  ExposeRequestSchema,
  ExposedPortSchema,
  NetworkPolicyChangeSchema,
  NetworkPolicySchema,
  NetworkStateSchema,
  TunnelRequestSchema,
  TunnelSchema,
  type NetworkEvent,
} from "@codecourier/protocol/network";
import { z } from "zod";
import type { SandboxService } from "../../control/sandbox-service.js";
import type { NetworkService } from "../../network/network-service.js";
import { ApiError } from "../api-error.js";
import { StreamAnswer, params, type RouteSpec } from "../route.js";
import type { FastifyRequest } from "fastify";
import type { Tenant } from "../../control/control-store.js";
import { eventLines } from "./watch.js";

const EventsQuerySchema = z.object({ follow: z.enum(["true", "false", "1", "0"]).optional() }).strict();
const PortParamSchema = z.coerce.number().int().min(1).max(65535);

/**
 * A sandbox's network: policy (replace or change), tunnels, exposed ports and the stream of its connection events.
 * Every route first checks that the caller's tenant owns the sandbox and that it has not ended.
 */
export function networkRoutes(sandboxes: SandboxService, network: NetworkService | undefined): RouteSpec[] {
  const live = async (tenant: Tenant, request: FastifyRequest): Promise<{ id: string; service: NetworkService }> => {
    const id = params(request).sandboxId!;
    await sandboxes.liveSandbox(tenant, id);
    if (!network) throw new ApiError("unavailable", "this server runs without sandbox networking (see its log for why)");
    return { id, service: network };
  };
  return [
    {
      method: "GET",
      url: "/v1/sandboxes/:sandboxId/network",
      summary: "The sandbox's network: policy, tunnels, exposed ports (without tokens) and packets dropped by kind",
      response: NetworkStateSchema,
      handler: async (t, r) => {
        const { id, service } = await live(t, r);
        return service.state(id);
      },
    },
    {
      method: "PUT",
      url: "/v1/sandboxes/:sandboxId/network/policy",
      summary: "Replace the sandbox's network policy (applies to new connections and DNS questions)",
      body: NetworkPolicySchema,
      response: NetworkPolicySchema,
      handler: async (t, r) => {
        const { id, service } = await live(t, r);
        return service.setPolicy(id, NetworkPolicySchema.parse(r.body));
      },
    },
    {
      method: "POST",
      url: "/v1/sandboxes/:sandboxId/network/policy",
      summary: "Change the sandbox's network policy: add or remove allow/deny entries, set internet",
      body: NetworkPolicyChangeSchema,
      response: NetworkPolicySchema,
      handler: async (t, r) => {
        const { id, service } = await live(t, r);
        return service.changePolicy(id, NetworkPolicyChangeSchema.parse(r.body));
      },
    },
    {
      method: "POST",
      url: "/v1/sandboxes/:sandboxId/network/tunnels",
      summary: "Make exactly one host:port of the host's network reachable inside the sandbox under a name",
      body: TunnelRequestSchema,
      response: TunnelSchema,
      handler: async (t, r) => {
        const { id, service } = await live(t, r);
        return service.addTunnel(id, TunnelRequestSchema.parse(r.body));
      },
    },
    {
      method: "DELETE",
      url: "/v1/sandboxes/:sandboxId/network/tunnels/:name",
      summary: "Remove a tunnel",
      status: 204,
      handler: async (t, r) => {
        const { id, service } = await live(t, r);
        if (!(await service.removeTunnel(id, params(r).name!))) throw new ApiError("not_found", `no tunnel ${params(r).name}`);
      },
    },
    {
      method: "POST",
      url: "/v1/sandboxes/:sandboxId/network/exposed",
      summary: "Expose a guest port at a host URL (HTTP and WebSocket); the answer's token is needed unless public",
      body: ExposeRequestSchema,
      response: ExposedPortSchema,
      handler: async (t, r) => {
        const { id, service } = await live(t, r);
        const request = ExposeRequestSchema.parse(r.body);
        return service.expose(id, request.port, request.public);
      },
    },
    {
      method: "DELETE",
      url: "/v1/sandboxes/:sandboxId/network/exposed/:port",
      summary: "Stop exposing a guest port",
      status: 204,
      handler: async (t, r) => {
        const { id, service } = await live(t, r);
        const port = PortParamSchema.parse(params(r).port);
        if (!(await service.unexpose(id, port))) throw new ApiError("not_found", `port ${port} is not exposed`);
      },
    },
    {
      method: "GET",
      url: "/v1/sandboxes/:sandboxId/network/events",
      summary:
        'The sandbox\'s connection attempts, DNS questions and dropped packets as NDJSON: first {"type":"ready"}, then the kept events; with ?follow=true new ones as they happen',
      handler: async (t, r) => {
        const { id, service } = await live(t, r);
        const { follow } = EventsQuerySchema.parse(r.query);
        return new StreamAnswer(eventLines(networkEvents(service, id, follow === "true" || follow === "1")), "application/x-ndjson");
      },
    },
  ];
}

/** The kept events, then (following) the live ones, as an object stream; destroying it unsubscribes. */
function networkEvents(service: NetworkService, sandboxId: string, follow: boolean): Readable {
  let unsubscribe: (() => void) | undefined;
  const stream = new Readable({
    objectMode: true,
    read: () => {},
    destroy: (error, callback) => {
      unsubscribe?.();
      callback(error);
    },
  });
  if (follow) unsubscribe = service.subscribe(sandboxId, (event: NetworkEvent) => stream.push(event));
  for (const event of service.recentEvents(sandboxId)) stream.push(event);
  if (!follow) stream.push(null);
  return stream;
}
