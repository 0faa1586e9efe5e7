import { Readable } from "node:stream";
import { WATCH_CONTENT_TYPE, type WatchEvent } from "@codecourier/protocol";
import { z } from "zod";
import { AgentClientError, AgentDisconnectedError, AgentError } from "../../agent-client/errors.js";
import { resolveInSandbox, type SandboxService } from "../../control/sandbox-service.js";
import { ApiError, toApiError } from "../api-error.js";
import { StreamAnswer, params, type RouteSpec } from "../route.js";

const WatchQuerySchema = z
  .object({ path: z.string().min(1).max(4096), recursive: z.enum(["true", "false", "1", "0"]).optional() })
  .strict();

/**
 * A blank line this often while no event comes: some clients give up on a body that stays silent (Node's fetch
 * after 300 s), and proxies drop idle connections. Readers of NDJSON skip blank lines.
 */
const HEARTBEAT_MS = 30_000;

/** File watching: `GET …/files/watch` streams a path's changes as NDJSON for as long as the client stays. */
export function watchRoutes(sandboxes: SandboxService): RouteSpec[] {
  return [
    {
      method: "GET",
      url: "/v1/sandboxes/:sandboxId/files/watch",
      summary:
        'Watch a path (?path=&recursive=true) for creates, writes, removes and renames: NDJSON events, first {"type":"ready"} once watching',
      handler: async (t, r) => {
        const { path, recursive } = WatchQuerySchema.parse(r.query);
        const running = await sandboxes.runningSandbox(t, params(r).sandboxId!);
        const events = await running.agent.watch(resolveInSandbox(path), { recursive: recursive === "true" || recursive === "1" });
        return new StreamAnswer(eventLines(events), WATCH_CONTENT_TYPE);
      },
    },
  ];
}

/**
 * The guest's events as NDJSON lines: first `{"type":"ready"}` (the guest is watching; it also makes the answer's
 * headers go out now instead of with the first event), then one line per event, blank lines as a heartbeat. A
 * failure after the headers is told in a last line, `{"type":"error","status":…,"error":{code,message}}`, since
 * the status can no longer say it. Destroying the result (the client went away) ends the watch in the guest.
 */
export function eventLines(events: Readable): Readable {
  const output = new Readable({
    read: () => {
      events.resume();
    },
    destroy: (error, callback) => {
      clearInterval(heartbeat);
      events.destroy();
      callback(error);
    },
  });
  const heartbeat = setInterval(() => output.push("\n"), HEARTBEAT_MS);
  heartbeat.unref();
  output.push(`${JSON.stringify({ type: "ready" })}\n`);
  events.on("data", (event: WatchEvent) => {
    if (!output.push(`${JSON.stringify(event)}\n`)) events.pause();
  });
  events.once("end", () => {
    clearInterval(heartbeat);
    output.push(null);
  });
  events.once("error", (error) => {
    clearInterval(heartbeat);
    const { apiError } = toApiError(midStreamError(error));
    output.push(`${JSON.stringify({ type: "error", status: apiError.status, error: { code: apiError.code, message: apiError.message } })}\n`);
    output.push(null);
  });
  return output;
}

/** What the client is told when a watch breaks off: the session to the guest ended, or the guest misbehaved. */
function midStreamError(error: Error): unknown {
  if (error instanceof AgentDisconnectedError) {
    return new ApiError("unavailable", "the watch ended with the sandbox's connection (it was paused, stopped or restarted); watch again");
  }
  if (error instanceof AgentClientError && !(error instanceof AgentError)) return new ApiError("unavailable", `the watch broke off: ${error.message}`);
  return error;
}
