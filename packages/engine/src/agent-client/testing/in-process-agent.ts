import { mkdtemp, rm } from "node:fs/promises";
import type { Http2Server } from "node:http2";
import { createServer, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Agent, AgentSession } from "@codecourier/agent";
import { answerHostHandshake, type AgentHealth } from "@codecourier/protocol";
import { AgentClient } from "../client.js";

/** An agent served in this process on a Unix socket, the way QEMU exposes the guest's port to the host. */
export interface InProcessAgent {
  readonly agent: Agent;
  /** A fresh directory of its own (the socket lives there; tests may use it too). */
  readonly dir: string;
  readonly socketPath: string;
  /** The sessions served so far, one per connection. */
  readonly sessions: AgentSession[];
  /** Kills its commands, ends its sessions and connections, closes the socket and removes `dir`. */
  stop(): Promise<void>;
}

export async function serveAgentInProcess(agent: Agent, prefix = "cc-agent-test-"): Promise<InProcessAgent> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  const socketPath = join(dir, "agent.sock");
  const sessions: AgentSession[] = [];
  const sockets = new Set<Socket>();
  const server = createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    // As the guest's session loop does: the host's handshake first, then HTTP/2.
    answerHostHandshake(socket).then(
      () => sessions.push(agent.serveSession(socket)),
      () => socket.destroy(),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(socketPath, resolve);
  });
  return {
    agent,
    dir,
    socketPath,
    sessions,
    async stop() {
      agent.killAllCommands();
      for (const session of sessions) session.close();
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/**
 * Serves a scripted HTTP/2 "agent" on a real Unix socket, runs `check` with a connected client, cleans up.
 * `onSocket` sees each connection once its handshake is answered (what it writes reaches the host's HTTP/2).
 */
export async function serveFakeAgent(
  dir: string,
  socketPath: string,
  http2: Http2Server,
  check: (client: AgentClient) => Promise<void>,
  onSocket: (socket: Socket) => void = () => {},
): Promise<void> {
  const server = createServer((socket) => {
    socket.on("error", () => {});
    answerHostHandshake(socket).then(
      () => {
        onSocket(socket);
        http2.emit("connection", socket);
      },
      () => socket.destroy(),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(socketPath, resolve);
  });
  const client = await AgentClient.connect(socketPath);
  try {
    await check(client);
  } finally {
    await client.close();
    await new Promise((resolve) => server.close(resolve));
    await rm(dir, { recursive: true, force: true });
  }
}

/** A valid health answer, for scripted fake agents (the client checks health when it connects). */
export const FAKE_AGENT_HEALTH: AgentHealth = {
  ok: true,
  protocol: 1,
  agentVersion: "x",
  bootId: "b",
  sessionId: "s",
  kernel: "k",
  uptimeMs: 1,
  runningCommands: 0,
  timeline: { processStartMs: 0, servingMs: 0 },
};
