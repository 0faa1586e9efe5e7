import { mkdtemp, rm } from "node:fs/promises";
import { createServer, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Agent, AgentSession } from "@codecourier/agent";

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
    sessions.push(agent.serveSession(socket));
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
