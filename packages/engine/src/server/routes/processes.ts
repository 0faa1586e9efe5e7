import { ProcessInfoSchema, PtySizeSchema, SignalRequestSchema, StartProcessRequestSchema } from "@codecourier/protocol/api";
import { Readable } from "node:stream";
import { z } from "zod";
import type { ProcessService } from "../../control/process-service.js";
import { ApiError } from "../api-error.js";
import { StreamAnswer, params, type RouteSpec } from "../route.js";

const OutputQuerySchema = z
  .object({
    /** First output sequence number wanted (0: everything still kept). */
    from: z.coerce.number().int().min(0).default(0),
    /** false: end once caught up instead of waiting for the exit. */
    follow: z.enum(["true", "false"]).default("true"),
  })
  .strict();

/** Processes: commands that outlive their request (background work, streamed output, terminals). */
export function processRoutes(processes: ProcessService): RouteSpec[] {
  const base = "/v1/sandboxes/:sandboxId/processes";
  const ids = (r: Parameters<RouteSpec["handler"]>[1]) => [params(r).sandboxId!, params(r).pid!] as const;
  return [
    {
      method: "POST",
      url: base,
      summary: "Start a process (runs on after this request; stream its output from …/output)",
      body: StartProcessRequestSchema,
      response: ProcessInfoSchema,
      status: 201,
      handler: (t, r) => processes.start(t, params(r).sandboxId!, r.body),
    },
    {
      method: "GET",
      url: base,
      summary: "List the sandbox's processes (running and recently exited)",
      response: z.object({ processes: z.array(ProcessInfoSchema) }),
      handler: async (t, r) => ({ processes: await processes.list(t, params(r).sandboxId!) }),
    },
    {
      method: "GET",
      url: `${base}/:pid`,
      summary: "A process's state and exit status",
      response: ProcessInfoSchema,
      handler: (t, r) => processes.get(t, ...ids(r)),
    },
    {
      method: "GET",
      url: `${base}/:pid/output`,
      summary: "Stream a process's output as NDJSON events (stdout/stderr chunks in base64, then exit); ?from=&follow=",
      handler: async (t, r) => {
        const query = OutputQuerySchema.parse(r.query);
        return new StreamAnswer(await processes.output(t, ...ids(r), query.from, query.follow === "true"), "application/x-ndjson");
      },
    },
    {
      method: "POST",
      url: `${base}/:pid/stdin`,
      summary: "Write bytes to a process's stdin (application/octet-stream; the process was started with keepStdinOpen)",
      status: 204,
      handler: async (t, r) => {
        if (!(r.body instanceof Readable)) throw new ApiError("bad_request", "send the bytes as the body, with content-type application/octet-stream");
        await processes.writeStdin(t, ...ids(r), r.body);
      },
    },
    { method: "POST", url: `${base}/:pid/stdin/close`, summary: "End a process's stdin (EOF)", status: 204, handler: (t, r) => processes.closeStdin(t, ...ids(r)) },
    {
      method: "POST",
      url: `${base}/:pid/signal`,
      summary: "Send a signal to a process's process group (default SIGKILL)",
      body: SignalRequestSchema,
      response: ProcessInfoSchema,
      handler: (t, r) => processes.signal(t, ...ids(r), r.body),
    },
    {
      method: "POST",
      url: `${base}/:pid/resize`,
      summary: "Resize a process's terminal (pty processes)",
      body: PtySizeSchema,
      status: 204,
      handler: (t, r) => processes.resize(t, ...ids(r), r.body),
    },
  ];
}
