import { randomUUID } from "node:crypto";
import type { Http2Server, ServerHttp2Session, ServerHttp2Stream } from "node:http2";
import type { Duplex } from "node:stream";
import { AGENT_LIMITS } from "@codecourier/protocol";
import type { Command } from "./commands/exec.js";
import { CommandRegistry } from "./commands/registry.js";
import { HelperSpawner, NodeSpawner, type Spawner } from "./commands/spawner.js";
import { IdentityRefresher, type IdentityOptions } from "./identity/refresh.js";
import { ProcessCensus } from "./activity/process-census.js";
import { FileWatches } from "./files/watch.js";
import { logProblem } from "./log.js";
import { createAgentHttp2Server, type AgentState } from "./server.js";

/** Connection-level receive window; larger than one stream's so several uploads can proceed at full speed. */
const sessionWindowBytes = 8 * 1024 * 1024;

export interface AgentOptions {
  /** Defaults to AGENT_LIMITS.maxConcurrentCommands. */
  maxConcurrentCommands?: number;
  /** Where POST /v1/identity finds its helper and what it writes; see IdentityOptions. */
  identity?: IdentityOptions;
  /** The guest-spawner helper that starts commands; unset (an agent outside a guest): Node's own spawn. */
  spawnerPath?: string;
  /** The guest-watch helper behind GET /v1/files/watch; unset: watches are refused. */
  watcherPath?: string;
}

/** One HTTP/2 session served over one host connection. */
export interface AgentSession {
  readonly sessionId: string;
  /** Resolves when the session has ended, for whatever reason. */
  readonly closed: Promise<void>;
  /** Ends the session at once; its foreground commands are killed because their streams close. */
  close(): void;
}

/**
 * The agent: state that outlives host connections (boot id, running commands) plus an HTTP/2 server that serves
 * any number of sessions, one per host connection, over arbitrary duplex streams.
 */
export class Agent implements AgentState {
  readonly bootId = randomUUID();
  readonly startedAt = performance.now();
  /** Filled in by markServing(); zeros until then (in-process tests never call it). */
  timeline = { processStartMs: 0, servingMs: 0 };
  readonly commands: CommandRegistry<Command>;
  readonly identity: IdentityRefresher;
  readonly spawner: Spawner;
  readonly census: ProcessCensus;
  readonly watches: FileWatches;
  readonly #server: Http2Server;
  readonly #sessionIds = new WeakMap<object, string>();

  constructor(options: AgentOptions = {}) {
    this.commands = new CommandRegistry(
      options.maxConcurrentCommands ?? AGENT_LIMITS.maxConcurrentCommands,
      AGENT_LIMITS.maxRememberedExits,
    );
    this.identity = new IdentityRefresher(options.identity);
    this.spawner = options.spawnerPath === undefined ? new NodeSpawner() : new HelperSpawner(options.spawnerPath);
    // After the helpers started: everything running now is plumbing.
    this.census = new ProcessCensus();
    this.watches = new FileWatches(options.watcherPath, this.spawner);
    this.#server = createAgentHttp2Server(this);
  }

  /** Records the boot timeline in guest-kernel uptime, for the host's boot-time breakdown. */
  markServing(kernelUptimeMs: number): void {
    this.timeline = { processStartMs: Math.max(0, Math.round(kernelUptimeMs - performance.now())), servingMs: Math.round(kernelUptimeMs) };
  }

  sessionIdOf(stream: ServerHttp2Stream): string {
    return this.#sessionIds.get(stream.session ?? {}) ?? "unknown";
  }

  /** Serves one HTTP/2 session (agent = server) over `duplex` until either side ends it. */
  serveSession(duplex: Duplex): AgentSession {
    const sessionId = randomUUID();
    let session: ServerHttp2Session | undefined;
    const capture = (created: ServerHttp2Session) => (session = created);
    // The server creates the session synchronously inside emit("connection").
    this.#server.once("session", capture);
    this.#server.emit("connection", duplex);
    this.#server.off("session", capture);
    if (session === undefined) throw new Error("HTTP/2 server did not create a session");
    const served: ServerHttp2Session = session;

    this.#sessionIds.set(served, sessionId);
    duplex.on("error", (error: NodeJS.ErrnoException) => {
      // A host that hangs up mid-write is routine, not a problem worth a console line.
      if (error.code !== "ECONNRESET" && error.code !== "EPIPE") logProblem("transport error", error);
    });
    served.on("error", (error) => logProblem("session error", error));
    try {
      served.setLocalWindowSize(sessionWindowBytes);
    } catch (error) {
      logProblem("could not enlarge the session window", error);
    }
    const closed = new Promise<void>((resolve) => served.once("close", resolve));
    return {
      sessionId,
      closed,
      close: () => {
        served.destroy();
        duplex.destroy();
      },
    };
  }

  /** Kills every running command, background ones too, with their process groups. */
  killAllCommands(): void {
    for (const command of this.commands.values()) command.signal("SIGKILL");
  }
}

export function createAgent(options?: AgentOptions): Agent {
  return new Agent(options);
}

let processAgent: Agent | undefined;

/** Serves a session with the process-wide agent (created on first use). */
export function serveSession(duplex: Duplex): AgentSession {
  processAgent ??= new Agent();
  return processAgent.serveSession(duplex);
}
