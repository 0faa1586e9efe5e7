import type { Readable } from "node:stream";
import type { FastifyRequest } from "fastify";
import type { z } from "zod";
import type { Tenant } from "../control/control-store.js";

export type Handler = (tenant: Tenant, request: FastifyRequest) => Promise<unknown>;

/** A handler's answer that is a byte stream (file content), not JSON. */
export class StreamAnswer {
  constructor(
    readonly stream: Readable,
    readonly contentType = "application/octet-stream",
  ) {}
}

export interface RouteSpec {
  method: "GET" | "POST" | "PUT" | "DELETE";
  url: string;
  summary: string;
  body?: z.ZodType;
  response?: z.ZodType;
  /** Answer status on success (default 200; 204 sends no body). */
  status?: number;
  handler: Handler;
}

export const params = (request: FastifyRequest) => request.params as Record<string, string>;
