import { createServer, type Http2Server, type IncomingHttpHeaders, type ServerHttp2Stream } from "node:http2";
import { release } from "node:os";
import { AGENT_LIMITS, AGENT_PROTOCOL_VERSION, AgentPath, type AgentHealth, type GuestActivity } from "@codecourier/protocol";
import { handleAttach, sendBackgroundCommands } from "./commands/background.js";
import { Command, handleExec } from "./commands/exec.js";
import type { CommandRegistry } from "./commands/registry.js";
import type { Spawner } from "./commands/spawner.js";
import { handleSignal } from "./commands/signal.js";
import { handleResize } from "./commands/resize.js";
import { commitUpload, handleFileWrite, sendFileContent } from "./files/content.js";
import { sendList, sendStat } from "./files/metadata.js";
import type { FileWatches } from "./files/watch.js";
import { changeMode, makeDirectory, removePath, renamePath } from "./files/operations.js";
import { RequestError, badRequest, requirePathParam, sendFailure, sendJson, toRequestError } from "./http/respond.js";
import type { IdentityRefresher } from "./identity/refresh.js";
import type { ProcessCensus } from "./activity/process-census.js";
import { logProblem } from "./log.js";
import { AGENT_VERSION } from "./version.js";

/** Per-stream receive window: how much stdin / upload data the host may send ahead of the agent. */
const streamWindowBytes = 256 * 1024;

/** What the router needs to know about the agent that owns it. */
export interface AgentState {
  readonly bootId: string;
  readonly startedAt: number;
  readonly timeline: { processStartMs: number; servingMs: number };
  readonly commands: CommandRegistry<Command>;
  readonly identity: IdentityRefresher;
  readonly spawner: Spawner;
  readonly census: ProcessCensus;
  readonly watches: FileWatches;
  sessionIdOf(stream: ServerHttp2Stream): string;
}

/** An HTTP/2 server that never listens: sessions are handed to it with emit("connection", duplex). */
export function createAgentHttp2Server(agent: AgentState): Http2Server {
  const server = createServer({
    settings: {
      maxFrameSize: AGENT_LIMITS.maxFrameSize,
      maxHeaderListSize: AGENT_LIMITS.maxHeaderListSize,
      maxConcurrentStreams: AGENT_LIMITS.maxConcurrentStreams,
      initialWindowSize: streamWindowBytes,
    },
    maxHeaderListPairs: 64,
    // Megabytes. Bounds what the host can make the agent buffer (header tables, queued frames) in a small guest.
    maxSessionMemory: 32,
  });
  server.on("stream", (stream: ServerHttp2Stream, headers: IncomingHttpHeaders) => {
    // Without a listener, a stream error (e.g. a reset with an error code) would be an uncaught exception.
    stream.on("error", (error) => logProblem("stream error", error));
    route(agent, stream, headers).catch((error: unknown) => {
      if (toRequestError(error).status >= 500) logProblem(`${headers[":path"]} failed`, error);
      sendFailure(stream, error);
    });
  });
  server.on("sessionError", (error) => logProblem("session error", error));
  return server;
}

async function route(agent: AgentState, stream: ServerHttp2Stream, headers: IncomingHttpHeaders): Promise<void> {
  const method = headers[":method"];
  const url = parseRequestPath(headers[":path"]);
  const query = url.searchParams;
  if (url.pathname !== AgentPath.health && url.pathname !== AgentPath.identity) {
    // A request that arrived after an identity refresh runs after it: the host may send a restored clone's refresh
    // and its first command back to back, and the command must see the new clock and CRNG.
    await agent.identity.settled();
  }

  switch (url.pathname) {
    case AgentPath.health:
      requireMethod(method, "GET");
      return sendJson(stream, 200, health(agent, stream));
    case AgentPath.exec:
      requireMethod(method, "POST");
      return handleExec(stream, headers, agent.commands, agent.spawner);
    case AgentPath.activity:
      requireMethod(method, "GET");
      return sendJson(stream, 200, {
        runningCommands: agent.commands.size,
        otherProcesses: await agent.census.otherProcesses([process.pid, agent.identity.helperPid, ...agent.spawner.plumbingPids, ...agent.watches.helperPids]),
      } satisfies GuestActivity);
    case AgentPath.commands:
      requireMethod(method, "GET");
      return sendBackgroundCommands(stream, agent.commands);
    case AgentPath.identity:
      requireMethod(method, "POST");
      return agent.identity.handle(stream);
    case AgentPath.file:
      if (method === "PUT") return handleFileWrite(stream, requirePathParam(query), query);
      requireMethod(method, "GET");
      return sendFileContent(stream, requirePathParam(query));
    case AgentPath.stat:
      requireMethod(method, "GET");
      return sendStat(stream, requirePathParam(query));
    case AgentPath.watch:
      requireMethod(method, "GET");
      return agent.watches.handle(stream, query);
    case AgentPath.list:
      requireMethod(method, "GET");
      return sendList(stream, requirePathParam(query), query.get("depth"));
    case AgentPath.mkdir:
      requireMethod(method, "POST");
      return makeDirectory(stream, requirePathParam(query), query);
    case AgentPath.remove:
      requireMethod(method, "POST");
      return removePath(stream, requirePathParam(query), query);
    case AgentPath.rename:
      requireMethod(method, "POST");
      return renamePath(stream, requirePathParam(query), query);
    case AgentPath.chmod:
      requireMethod(method, "POST");
      return changeMode(stream, requirePathParam(query), query);
    case AgentPath.commitUpload:
      requireMethod(method, "POST");
      return commitUpload(stream, requirePathParam(query), query);
  }
  const [, commandId, action] = /^\/v1\/exec\/([^/]+)\/(signal|attach|resize)$/.exec(url.pathname) ?? [];
  if (commandId !== undefined && action === "signal") {
    requireMethod(method, "POST");
    return handleSignal(stream, decodePathSegment(commandId), agent.commands);
  }
  if (commandId !== undefined && action === "attach") {
    requireMethod(method, "GET");
    return handleAttach(stream, decodePathSegment(commandId), agent.commands);
  }
  if (commandId !== undefined && action === "resize") {
    requireMethod(method, "POST");
    return handleResize(stream, decodePathSegment(commandId), agent.commands);
  }
  throw new RequestError(404, "not_found", `no such endpoint: ${url.pathname}`);
}

function health(agent: AgentState, stream: ServerHttp2Stream): AgentHealth {
  return {
    ok: true,
    protocol: AGENT_PROTOCOL_VERSION,
    agentVersion: AGENT_VERSION,
    bootId: agent.bootId,
    sessionId: agent.sessionIdOf(stream),
    kernel: release(),
    uptimeMs: Math.round(performance.now() - agent.startedAt),
    runningCommands: agent.commands.size,
    timeline: agent.timeline,
  };
}

function parseRequestPath(path: string | undefined): URL {
  try {
    return new URL(path ?? "/", "http://agent");
  } catch {
    throw badRequest("malformed request path");
  }
}

function requireMethod(method: string | undefined, expected: string): void {
  if (method !== expected) throw badRequest(`method ${method ?? "(none)"} not allowed here; use ${expected}`);
}

function decodePathSegment(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    throw badRequest("malformed command id");
  }
}
