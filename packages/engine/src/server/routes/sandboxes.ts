import {
  CommandResultSchema,
  CreateSandboxRequestSchema,
  LimitsAnswerSchema,
  ForkRequestSchema,
  RunCommandRequestSchema,
  SandboxListSchema,
  SandboxSchema,
  SetTimeoutRequestSchema,
  SnapshotResultSchema,
} from "@codecourier/protocol/api";
import { z } from "zod";
import type { SandboxService } from "../../control/sandbox-service.js";
import { commandResultJson } from "../../control/command-output.js";
import { StreamAnswer, params, type RouteSpec } from "../route.js";

export function sandboxRoutes(sandboxes: SandboxService): RouteSpec[] {
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
    {
      method: "POST",
      url: "/v1/sandboxes/:sandboxId/commands",
      summary: "Run a command to completion (output capped per stream: maxOutputBytes, default 1 MiB; stream bigger output with processes)",
      body: RunCommandRequestSchema,
      response: CommandResultSchema,
      // Written piece by piece as the client reads it (up to 2 × 16 MiB of output): see commandResultJson.
      handler: async (t, r) => new StreamAnswer(commandResultJson(await sandboxes.runCommand(t, params(r).sandboxId!, r.body)), "application/json"),
    },
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
    { method: "GET", url: "/v1/limits", summary: "This tenant's limits and what it uses of them", response: LimitsAnswerSchema, handler: (t) => sandboxes.limits(t) },
    { method: "GET", url: "/v1/snapshots", summary: "List snapshots", handler: async (t) => ({ snapshots: await sandboxes.listSnapshots(t) }) },
    { method: "DELETE", url: "/v1/snapshots/:snapshotId", summary: "Delete a snapshot", status: 204, handler: (t, r) => sandboxes.deleteSnapshot(t, params(r).snapshotId!) },
  ];
}

