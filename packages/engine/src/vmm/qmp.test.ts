import { describe, it, afterEach } from "node:test";
import assert from "node:assert/strict";
import { createServer, type Server, type Socket } from "node:net";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { QmpClient, QmpError } from "./qmp.js";

/** A scripted QMP peer on a real Unix socket. */
function fakeQemu(onLine: (socket: Socket, message: { execute: string; id: string }) => void): { server: Server; path: string; dir: string } {
  const dir = mkdtempSync(join(tmpdir(), "qmp-"));
  const path = join(dir, "qmp.sock");
  const server = createServer((socket) => {
    socket.on("error", () => {}); // the client hanging up on us is part of some tests
    socket.write(JSON.stringify({ QMP: { version: {}, capabilities: [] } }) + "\n");
    let buffer = "";
    socket.on("data", (chunk) => {
      buffer += chunk.toString();
      let nl: number;
      while ((nl = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 1);
        onLine(socket, JSON.parse(line));
      }
    });
  });
  server.listen(path);
  return { server, path, dir };
}

describe("QmpClient", () => {
  let cleanup: () => void = () => {};
  afterEach(() => cleanup());

  it("negotiates capabilities, matches replies by id, surfaces errors and events", async () => {
    const peer = fakeQemu((socket, msg) => {
      if (msg.execute === "query-status") {
        // An event first, then the reply: the client must route each correctly.
        socket.write(JSON.stringify({ event: "STOP", data: {} }) + "\n");
        socket.write(JSON.stringify({ return: { status: "paused" }, id: msg.id }) + "\n");
      } else if (msg.execute === "bogus") {
        socket.write(JSON.stringify({ error: { class: "CommandNotFound", desc: "no bogus" }, id: msg.id }) + "\n");
      } else {
        socket.write(JSON.stringify({ return: {}, id: msg.id }) + "\n");
      }
    });
    cleanup = () => {
      peer.server.close();
      rmSync(peer.dir, { recursive: true, force: true });
    };
    const qmp = await QmpClient.connect(peer.path);
    const stopped = qmp.waitForEvent("STOP", 2000);
    assert.deepEqual(await qmp.execute("query-status"), { status: "paused" });
    assert.equal((await stopped).event, "STOP");
    await assert.rejects(qmp.execute("bogus"), (e: unknown) => e instanceof QmpError && e.errorClass === "CommandNotFound");
    qmp.close();
  });

  it("times out a command that gets no reply and rejects pending commands when the peer goes away", async () => {
    let peerSocket: Socket | undefined;
    const peer = fakeQemu((socket, msg) => {
      peerSocket = socket;
      if (msg.execute === "qmp_capabilities") socket.write(JSON.stringify({ return: {}, id: msg.id }) + "\n");
    });
    cleanup = () => {
      peer.server.close();
      rmSync(peer.dir, { recursive: true, force: true });
    };
    const qmp = await QmpClient.connect(peer.path);
    await assert.rejects(qmp.execute("query-status", undefined, 100), /no reply within 100 ms/);
    const pending = qmp.execute("query-status", undefined, 5000);
    peerSocket!.destroy();
    await assert.rejects(pending, /connection closed|ECONNRESET/);
  });

  it("drops a connection whose peer sends an endless line instead of growing without bound", async () => {
    const peer = fakeQemu((socket, msg) => {
      if (msg.execute === "qmp_capabilities") socket.write(JSON.stringify({ return: {}, id: msg.id }) + "\n");
      else socket.write("x".repeat(2 * 1024 * 1024));
    });
    cleanup = () => {
      peer.server.close();
      rmSync(peer.dir, { recursive: true, force: true });
    };
    const qmp = await QmpClient.connect(peer.path);
    await assert.rejects(qmp.execute("query-status", undefined, 5000), /line too long|closed/);
  });
});
