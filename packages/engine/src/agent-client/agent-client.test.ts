import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { createWriteStream } from "node:fs";
import { chmod, mkdir, mkdtemp, readFile, readdir, rm, symlink, writeFile } from "node:fs/promises";
import { createServer as createHttp2Server, type Http2Server, type ServerHttp2Stream } from "node:http2";
import { createConnection, createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Duplex, Readable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { createAgent, type Agent, type AgentOptions } from "@codecourier/agent";
import { compileGuestHelper, guestHelper } from "../images/guest-helpers.js";
import { FAKE_AGENT_HEALTH, serveAgentInProcess, serveFakeAgent } from "./testing/in-process-agent.js";
import { AGENT_HANDSHAKE_LIMITS, AgentPath, EXEC_ID_HEADER, OutputKind, answerHostHandshake, encodeRecord, readyLine } from "@codecourier/protocol";
import {
  AgentClient,
  AgentDisconnectedError,
  AgentError,
  AgentProtocolError,
  AgentTimeoutError,
  CommandDetachedError,
  createIdentityRequest,
  type CommandHandle,
} from "./index.js";

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function listen(server: Server, path: string): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(path, () => resolve());
  });
}

/**
 * The guest-spawner helper, compiled once for this file: commands start through it as they do in a guest (the
 * agent's fallback, Node's own spawn, is covered by the agent package's tests).
 */
const spawnerDir = await mkdtemp(join(tmpdir(), "cc-spawner-"));
after(() => rm(spawnerDir, { recursive: true, force: true }));
let spawnerBinary: Promise<string> | undefined;
function guestSpawner(): Promise<string> {
  spawnerBinary ??= compileGuestHelper(guestHelper("guest-spawner"), join(spawnerDir, "guest-spawner")).then(() => join(spawnerDir, "guest-spawner"));
  return spawnerBinary;
}

async function createGuestLikeAgent(options: AgentOptions = {}): Promise<Agent> {
  return createAgent({ ...options, spawnerPath: await guestSpawner() });
}

/** The agent served in-process on a Unix socket, the way QEMU exposes the guest's port to the host. */
async function startAgent(given?: Agent) {
  return serveAgentInProcess(given ?? (await createGuestLikeAgent()));
}

/** Processes of a process group that are still alive (zombies excluded). */
async function liveProcessesInGroup(pgid: number): Promise<number[]> {
  const live: number[] = [];
  for (const entry of await readdir("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    const stat = await readFile(`/proc/${entry}/stat`, "utf8").catch(() => "");
    // Fields after the parenthesised command name: state, ppid, pgrp, ...
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    if (Number(fields[2]) === pgid && fields[0] !== "Z") live.push(Number(entry));
  }
  return live;
}

async function firstLine(command: CommandHandle): Promise<string> {
  let text = "";
  for await (const chunk of command.stdout) {
    text += String(chunk);
    if (text.includes("\n")) break;
  }
  return text.split("\n")[0] ?? "";
}

describe("AgentClient against the in-process agent", () => {
  let harness: Awaited<ReturnType<typeof startAgent>>;
  let client: AgentClient;

  before(async () => {
    harness = await startAgent();
    client = await AgentClient.connect(harness.socketPath, { timeoutMs: 5_000 });
  });

  after(async () => {
    await client.close();
    await harness.stop();
  });

  it("reports health", async () => {
    const health = await client.health();
    assert.equal(health.ok, true);
    assert.equal(health.bootId, harness.agent.bootId);
    assert.equal(health.sessionId, harness.sessions.at(-1)?.sessionId);
  });

  it("runs argv and shell commands with their exit codes", async () => {
    const echo = await client.run({ argv: ["echo", "hello", "world"] });
    assert.equal(echo.stdout.toString(), "hello world\n");
    assert.equal(echo.exitCode, 0);
    assert.equal(echo.signal, null);
    assert.equal(echo.timedOut, false);

    const shell = await client.run({ shell: "echo \"$GREETING\" from $(pwd); exit 7", env: { GREETING: "hi" }, cwd: "/tmp" });
    assert.equal(shell.stdout.toString(), "hi from /tmp\n");
    assert.equal(shell.exitCode, 7);
  });

  it("gives commands pipes for stdio, so /dev/stdout and /dev/stderr can be opened by name", async () => {
    const result = await client.run({ shell: "echo out > /dev/stdout; echo err > /dev/stderr; cat /dev/stdin" }, { stdin: "in\n" });
    assert.equal(result.stderr.toString(), "err\n");
    assert.equal(result.stdout.toString(), "out\nin\n");
    assert.equal(result.exitCode, 0);
  });

  it("reports death by signal", async () => {
    const result = await client.run({ shell: "kill -TERM $$" });
    assert.equal(result.exitCode, null);
    assert.equal(result.signal, "SIGTERM");
  });

  it("keeps stdout and stderr separate and in order", async () => {
    const result = await client.run({ shell: "for i in 1 2 3 4 5; do echo out$i; echo err$i >&2; done" });
    assert.equal(result.stdout.toString(), "out1\nout2\nout3\nout4\nout5\n");
    assert.equal(result.stderr.toString(), "err1\nerr2\nerr3\nerr4\nerr5\n");
  });

  it("round-trips stdin from a buffer and from a stream", async () => {
    assert.equal((await client.run({ argv: ["cat"] }, { stdin: "ping\n" })).stdout.toString(), "ping\n");
    const data = randomBytes(3 * 1024 * 1024 + 17);
    const chunks = Array.from({ length: Math.ceil(data.length / 65_536) }, (_, i) => data.subarray(i * 65_536, (i + 1) * 65_536));
    const result = await client.run({ argv: ["cat"] }, { stdin: Readable.from(chunks) });
    assert.ok(result.stdout.equals(data));
    const noStdin = await client.run({ shell: "cat; echo done", stdin: false }, { stdin: "ignored" });
    assert.equal(noStdin.stdout.toString(), "done\n");
  });

  it("runs 20 commands concurrently", async () => {
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, i) => client.run({ shell: `sleep 0.2; echo ${i}; echo e${i} >&2` })),
    );
    results.forEach((result, i) => {
      assert.equal(result.stdout.toString(), `${i}\n`);
      assert.equal(result.stderr.toString(), `e${i}\n`);
      assert.equal(result.exitCode, 0);
    });
  });

  it("kills the whole process group", async () => {
    const command = client.exec({ shell: "echo $$; sleep 100 & sleep 100 & wait" });
    const pgid = Number(await firstLine(command));
    assert.ok(pgid > 1);
    for (let i = 0; i < 100 && (await liveProcessesInGroup(pgid)).length < 3; i++) await sleep(10);
    assert.equal((await liveProcessesInGroup(pgid)).length, 3, "sh and two sleeps");
    await command.kill();
    const exit = await command.wait();
    assert.equal(exit.signal, "SIGKILL");
    for (let i = 0; i < 100 && (await liveProcessesInGroup(pgid)).length > 0; i++) await sleep(10);
    assert.deepEqual(await liveProcessesInGroup(pgid), []);
    await command.kill(); // a no-op once finished
  });

  it("delivers other signals to the command", async () => {
    const command = client.exec({ shell: "trap 'echo got-term; exit 3' TERM; echo ready; while :; do sleep 0.05; done" });
    assert.equal(await firstLine(command), "ready");
    await command.kill("SIGTERM");
    const exit = await command.wait();
    assert.equal(exit.exitCode, 3);
  });

  it("kills commands that exceed their timeout", async () => {
    const started = Date.now();
    const result = await client.run({ shell: "echo start; sleep 100", timeoutMs: 300 });
    assert.equal(result.timedOut, true);
    assert.equal(result.signal, "SIGKILL");
    assert.equal(result.stdout.toString(), "start\n");
    assert.ok(Date.now() - started < 5_000);
  });

  it("cancels the command when the caller aborts", async () => {
    const controller = new AbortController();
    const command = client.exec({ shell: "echo $$; exec sleep 100" }, { signal: controller.signal });
    const pgid = Number(await firstLine(command));
    controller.abort();
    await assert.rejects(command.wait(), { name: "AbortError" });
    for (let i = 0; i < 100 && (await liveProcessesInGroup(pgid)).length > 0; i++) await sleep(10);
    assert.deepEqual(await liveProcessesInGroup(pgid), []);
  });

  it("streams 50 MB of stdout intact", async () => {
    const size = 50 * 1024 * 1024;
    const file = join(harness.dir, "big.bin");
    const expected = createHash("sha256");
    await new Promise<void>((resolve, reject) => {
      const out = createWriteStream(file);
      out.on("error", reject);
      for (let written = 0; written < size; written += 1024 * 1024) {
        const block = randomBytes(1024 * 1024);
        expected.update(block);
        out.write(block);
      }
      out.end(resolve);
    });
    const command = client.exec({ argv: ["cat", file] });
    const actual = createHash("sha256");
    let received = 0;
    for await (const chunk of command.stdout as AsyncIterable<Buffer>) {
      actual.update(chunk);
      received += chunk.length;
    }
    assert.equal((await command.wait()).exitCode, 0);
    assert.equal(received, size);
    assert.equal(actual.digest("hex"), expected.digest("hex"));
  });

  it("applies backpressure to a command whose output is not read", async () => {
    const command = client.exec({ shell: "head -c 20000000 /dev/zero; echo finished >&2" });
    await command.id;
    await sleep(500);
    assert.equal(harness.agent.commands.size, 1, "the command is blocked writing, not finished");
    let received = 0;
    for await (const chunk of command.stdout as AsyncIterable<Buffer>) received += chunk.length;
    assert.equal(received, 20_000_000);
    assert.equal((await command.wait()).exitCode, 0);
  });

  it("enforces the collected output limit of run()", async () => {
    await assert.rejects(client.run({ shell: "head -c 100000 /dev/zero" }, { maxOutputBytes: 1000 }), {
      name: "AgentError",
      code: "too_large",
    });
  });

  it("truncates instead with overflow: truncate, draining the rest so the command runs to its end", async () => {
    const result = await client.run({ shell: "head -c 3000000 /dev/zero; echo tail >&2; exit 5" }, { maxOutputBytes: 1000, overflow: "truncate" });
    assert.equal(result.exitCode, 5, "it ran to its end");
    assert.deepEqual([result.stdout.length, result.stdoutTotalBytes, result.stdoutTruncated], [1000, 3_000_000, true]);
    assert.deepEqual([result.stderr.toString(), result.stderrTotalBytes, result.stderrTruncated], ["tail\n", 5, false]);
  });

  it("keeps only what reserveOutput grants, as a prefix", async () => {
    let granted = 0;
    const reserveOutput = (bytes: number) => {
      const grant = Math.min(bytes, 2500 - granted);
      granted += grant;
      return grant;
    };
    const result = await client.run({ shell: "head -c 100000 /dev/zero" }, { maxOutputBytes: 50_000, overflow: "truncate", reserveOutput });
    assert.deepEqual([result.stdout.length, result.stdoutTotalBytes, result.stdoutTruncated, granted], [2500, 100_000, true, 2500]);
  });

  it("reports spawn errors as exit records", async () => {
    const missing = await client.run({ argv: ["/nonexistent/binary"] });
    assert.equal(missing.exitCode, 127);
    assert.match(missing.spawnError ?? "", /ENOENT/);
    const badCwd = await client.run({ argv: ["true"], cwd: "/nonexistent-dir" });
    assert.equal(badCwd.exitCode, 127);
    assert.match(badCwd.spawnError ?? "", /working directory/);
    const badUser = await client.run({ argv: ["true"], user: "no-such-user-here" });
    assert.equal(badUser.exitCode, 126);
    assert.match(badUser.spawnError ?? "", /unknown user/);
  });

  it("rejects invalid specs with AgentError bad_request", async () => {
    const command = client.exec({ argv: ["true"], shell: "true" });
    await assert.rejects(command.wait(), { name: "AgentError", code: "bad_request", status: 400 });
    await assert.rejects(command.id, AgentError);
  });

  it("writes, reads, stats and lists files", async () => {
    const dir = join(harness.dir, "files");
    await mkdir(dir);
    const path = join(dir, "hello.txt");
    const written = await client.writeFile(path, "hello\n", { mode: 0o600 });
    assert.deepEqual([written.type, written.size, written.mode], ["file", 6, 0o600]);
    assert.equal(await readFile(path, "utf8"), "hello\n");
    assert.equal((await client.readFileBuffer(path)).toString(), "hello\n");

    const big = randomBytes(2 * 1024 * 1024);
    await client.writeFile(path, Readable.from([big.subarray(0, 1_000_000), big.subarray(1_000_000)]));
    const chunks: Buffer[] = [];
    for await (const chunk of client.readFile(path) as AsyncIterable<Buffer>) chunks.push(chunk);
    assert.ok(Buffer.concat(chunks).equals(big));
    assert.equal((await client.stat(path)).mode, 0o600, "replacing keeps the mode");

    await mkdir(join(dir, "sub"));
    await symlink("hello.txt", join(dir, "link"));
    assert.deepEqual((await client.list(dir)).map(({ name, type }) => ({ name, type })), [
      { name: "hello.txt", type: "file" },
      { name: "link", type: "symlink" },
      { name: "sub", type: "directory" },
    ]);
    assert.equal((await client.stat(join(dir, "link"))).type, "symlink");
    assert.deepEqual(
      (await readdir(dir)).filter((name) => name.includes("cc-upload")),
      [],
      "no temporary files left behind",
    );

    await assert.rejects(client.readFileBuffer(join(dir, "missing")), { name: "AgentError", code: "not_found", status: 404 });
    await assert.rejects(client.readFileBuffer(dir), { code: "is_directory" });
    await assert.rejects(client.list(path), { code: "not_directory" });
    await assert.rejects(client.stat("relative/path"), { code: "bad_request" });
    // Missing parent directories are created, as a program writing to a disk would make them.
    const nested = join(dir, "new-dir", "deeper", "x");
    assert.equal((await client.writeFile(nested, "x")).size, 1);
    assert.equal(await readFile(nested, "utf8"), "x");
    await writeFile(join(dir, "a-file"), "");
    await assert.rejects(client.writeFile(join(dir, "a-file", "x"), "x"), { code: "not_directory" });
    await assert.rejects(client.readFileBuffer(path, { maxBytes: 1000 }), { code: "too_large" });
    const failedRead = client.readFile(join(dir, "missing"));
    await assert.rejects(async () => {
      for await (const _ of failedRead) void _;
    }, { code: "not_found" });
  });
});

describe("reconnecting", () => {
  it("serves a new session on the same agent after the client reconnects", async () => {
    const harness = await startAgent();
    try {
      const first = await AgentClient.connect(harness.socketPath);
      const firstHealth = await first.health();
      const running = first.exec({ argv: ["sleep", "100"] });
      await running.id;
      assert.equal(harness.agent.commands.size, 1);
      await first.close();
      assert.ok(first.closed);
      await assert.rejects(first.health(), AgentDisconnectedError);
      await assert.rejects(running.wait(), AgentDisconnectedError);
      for (let i = 0; i < 200 && harness.agent.commands.size > 0; i++) await sleep(10);
      assert.equal(harness.agent.commands.size, 0, "the abandoned command was killed");

      const second = await AgentClient.connect(harness.socketPath);
      const secondHealth = await second.health();
      assert.equal(secondHealth.bootId, firstHealth.bootId);
      assert.notEqual(secondHealth.sessionId, firstHealth.sessionId);
      assert.equal((await second.run({ argv: ["echo", "again"] })).stdout.toString(), "again\n");
      await second.close();
    } finally {
      await harness.stop();
    }
  });

  it("runs over any connected byte stream", async () => {
    const harness = await startAgent();
    try {
      const socket = createConnection(harness.socketPath);
      await new Promise((resolve) => socket.once("connect", resolve));
      const client = await AgentClient.overStream(socket);
      assert.equal((await client.run({ shell: "echo over" })).stdout.toString(), "over\n");
      await client.close();
      assert.ok(socket.destroyed);
    } finally {
      await harness.stop();
    }
  });

  it("closes by hanging up, without a GOAWAY the agent would answer", async () => {
    // Over virtio-serial, an answer the agent writes after the host left arrives at the start of the next
    // connection; so the host must not send anything that asks for one when it closes.
    const dir = await mkdtemp(join(tmpdir(), "cc-close-"));
    const socketPath = join(dir, "agent.sock");
    const agent = await createGuestLikeAgent();
    const frameTypes: number[] = [];
    let hungUp!: () => void;
    const serverSawClose = new Promise<void>((resolve) => (hungUp = resolve));
    const server = createServer(async (socket) => {
      socket.on("error", () => {});
      await answerHostHandshake(socket);
      socket.resume();
      const duplex = new Duplex({
        read() {},
        write(chunk: Buffer, _encoding, callback) {
          socket.write(chunk, () => callback());
        },
      });
      let pending = Buffer.alloc(0);
      let skip = 24; // the client preface
      socket.on("data", (chunk: Buffer) => {
        pending = Buffer.concat([pending, chunk]);
        const skipped = Math.min(skip, pending.length);
        pending = pending.subarray(skipped);
        skip -= skipped;
        while (skip === 0 && pending.length >= 9 && pending.length >= 9 + pending.readUIntBE(0, 3)) {
          frameTypes.push(pending[3] ?? -1);
          pending = pending.subarray(9 + pending.readUIntBE(0, 3));
        }
        duplex.push(chunk);
      });
      socket.on("close", () => {
        duplex.destroy();
        hungUp();
      });
      agent.serveSession(duplex);
    });
    await listen(server, socketPath);
    try {
      const client = await AgentClient.connect(socketPath);
      assert.equal((await client.run({ argv: ["echo", "x"] })).stdout.toString(), "x\n");
      await client.close();
      await serverSawClose;
      assert.ok(frameTypes.includes(0x1), "the scanner saw the requests' HEADERS frames");
      assert.equal(frameTypes.includes(0x7), false, `frame types sent: ${frameTypes.join(",")}`);
    } finally {
      agent.killAllCommands();
      await new Promise((resolve) => server.close(resolve));
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("fails to connect when nothing listens", async () => {
    await assert.rejects(AgentClient.connect(join(tmpdir(), "cc-no-such-socket.sock")), AgentDisconnectedError);
  });
});

/**
 * A fake "guest" on a Unix socket that answers with whatever bytes `respond` writes: after answering the handshake
 * (what it writes then reaches the host's HTTP/2), or, with `handshake: false`, from the start.
 */
async function withHostilePeer(
  respond: (socket: Socket) => void,
  check: (socketPath: string) => Promise<void>,
  { handshake = true }: { handshake?: boolean } = {},
) {
  const dir = await mkdtemp(join(tmpdir(), "cc-hostile-"));
  const socketPath = join(dir, "agent.sock");
  const sockets = new Set<Socket>();
  const server = createServer((socket) => {
    sockets.add(socket);
    socket.on("error", () => {});
    if (!handshake) {
      socket.on("data", () => {});
      return respond(socket);
    }
    void answerHostHandshake(socket).then(() => {
      socket.on("data", () => {});
      socket.resume();
      respond(socket);
    }, () => socket.destroy());
  });
  await listen(server, socketPath);
  try {
    await check(socketPath);
  } finally {
    for (const socket of sockets) socket.destroy();
    await new Promise((resolve) => server.close(resolve));
    await rm(dir, { recursive: true, force: true });
  }
}

function frameHeader(length: number, type: number, flags: number, streamId: number): Buffer {
  const header = Buffer.alloc(9);
  header.writeUIntBE(length, 0, 3);
  header.writeUInt8(type, 3);
  header.writeUInt8(flags, 4);
  header.writeUInt32BE(streamId, 5);
  return header;
}

describe("hostile guest", () => {
  const connectQuickly = async (socketPath: string, expected: new (...args: never[]) => Error) => {
    const started = Date.now();
    await assert.rejects(AgentClient.connect(socketPath, { timeoutMs: 5_000 }), expected);
    assert.ok(Date.now() - started < 1_000, `rejected after ${Date.now() - started} ms`);
  };

  it("rejects random bytes", () =>
    withHostilePeer(
      (socket) => socket.write(randomBytes(4096)),
      (path) => connectQuickly(path, AgentProtocolError),
    ));

  it("rejects an HTTP/1 answer", () =>
    withHostilePeer(
      (socket) => socket.end("HTTP/1.1 400 Bad Request\r\n\r\n"),
      (path) => connectQuickly(path, AgentProtocolError),
    ));

  it("rejects a SETTINGS frame header announcing a huge payload", () =>
    withHostilePeer(
      (socket) => socket.write(Buffer.concat([frameHeader(0xffffff, 0x4, 0, 0), Buffer.alloc(64)])),
      (path) => connectQuickly(path, AgentProtocolError),
    ));

  it("rejects a huge frame after a valid preface", () =>
    withHostilePeer(
      (socket) => socket.write(Buffer.concat([frameHeader(0, 0x4, 0, 0), frameHeader(0xfffff0, 0x0, 0, 1)])),
      (path) => connectQuickly(path, AgentProtocolError),
    ));

  it("reports a peer that hangs up as disconnected", () =>
    withHostilePeer(
      (socket) => socket.end(),
      (path) => connectQuickly(path, AgentDisconnectedError),
    ));

  it("times out on a silent peer", () =>
    withHostilePeer(
      () => {},
      async (path) => {
        const started = Date.now();
        await assert.rejects(AgentClient.connect(path, { timeoutMs: 300 }), AgentTimeoutError);
        assert.ok(Date.now() - started < 2_000);
      },
    ));

  it("times out on a peer that never answers the handshake, whatever else it sends", () =>
    withHostilePeer(
      // Junk, a ready line with a nonce of its own, and a real HTTP/2 server's first frame: none of it is the echo.
      (socket) => socket.write(Buffer.concat([randomBytes(4096), readyLine("ab".repeat(AGENT_HANDSHAKE_LIMITS.nonceBytes)), frameHeader(0, 0x4, 0, 0)])),
      (path) => assert.rejects(AgentClient.connect(path, { timeoutMs: 300 }), AgentTimeoutError),
      { handshake: false },
    ));

  it("fails a peer that floods instead of answering the handshake", () =>
    withHostilePeer(
      (socket) => {
        const chunk = Buffer.alloc(1024 * 1024, 0x41);
        const flood = (left: number) => {
          if (left > 0 && !socket.destroyed) socket.write(chunk, () => flood(left - 1));
        };
        flood(AGENT_HANDSHAKE_LIMITS.maxSkippedBytes / chunk.length + 2);
      },
      (path) => assert.rejects(AgentClient.connect(path, { timeoutMs: 30_000 }), AgentProtocolError),
      { handshake: false },
    ));
});

describe("handshake", () => {
  it("skips the stale bytes a port held before the agent's ready line", async () => {
    const agent = await createGuestLikeAgent();
    const dir = await mkdtemp(join(tmpdir(), "cc-stale-"));
    const socketPath = join(dir, "agent.sock");
    const server = createServer((socket) => {
      socket.on("error", () => {});
      // Output of an earlier connection that was already in the guest kernel, cut off mid-frame.
      socket.write(Buffer.concat([frameHeader(16_000, 0x0, 0, 1), randomBytes(3000)]));
      void answerHostHandshake(socket).then(() => agent.serveSession(socket), () => socket.destroy());
    });
    await listen(server, socketPath);
    try {
      const client = await AgentClient.connect(socketPath);
      assert.equal((await client.run({ argv: ["echo", "fresh"] })).stdout.toString(), "fresh\n");
      await client.close();
    } finally {
      agent.killAllCommands();
      await new Promise((resolve) => server.close(resolve));
      await rm(dir, { recursive: true, force: true });
    }
  });
});

/**
 * A fake agent that speaks valid HTTP/2 but answers with malformed content. Health is correct, so the client
 * connects; the individual responses then break the protocol.
 */
async function withLyingAgent(check: (client: AgentClient) => Promise<void>) {
  const dir = await mkdtemp(join(tmpdir(), "cc-lying-"));
  const socketPath = join(dir, "agent.sock");
  const http2 = createHttp2Server();
  http2.on("stream", (stream: ServerHttp2Stream, headers) => {
    stream.on("error", () => {});
    const path = String(headers[":path"]);
    const json = (body: unknown) => {
      stream.respond({ ":status": 200, "content-type": "application/json" });
      stream.end(JSON.stringify(body));
    };
    const exec = (body: Buffer | Uint8Array, idHeader = "cmd-1") => {
      stream.respond({ ":status": 200, [EXEC_ID_HEADER]: idHeader });
      stream.end(body);
    };
    const exitRecord = encodeRecord(OutputKind.exit, Buffer.from(JSON.stringify({ exitCode: 0, signal: null, timedOut: false })));
    const spec = JSON.parse(Buffer.from(String(headers["cc-exec-spec"] ?? "e30"), "base64url").toString()) as { shell?: string };
    if (path === AgentPath.health) {
      return json(FAKE_AGENT_HEALTH);
    }
    if (path.includes("huge-header")) {
      stream.respond({ ":status": 200, "x-filler": "x".repeat(100_000) });
      return stream.end("{}");
    }
    if (path.startsWith(AgentPath.stat)) {
      stream.respond({ ":status": 200 });
      stream.write(Buffer.alloc(1024 * 1024, 0x20));
      return stream.end(Buffer.alloc(1024 * 1024, 0x20));
    }
    if (path.startsWith(AgentPath.list)) return json({ not: "a list" });
    if (path === AgentPath.commands) return json([{ id: "../../etc", running: true, startedAtMs: 1 }]);
    if (path === AgentPath.identity) {
      return json({ clockSetTo: 1, reseeded: true, hostname: "someone-else", machineId: "f".repeat(32), machineIdWritten: true });
    }
    switch (spec.shell) {
      case "bad-kind":
        return exec(Buffer.from([9, 0, 0, 0, 0]));
      case "huge-record":
        return exec(Buffer.from([1, 0x7f, 0xff, 0xff, 0xff]));
      case "no-exit":
        return exec(encodeRecord(OutputKind.stdout, Buffer.from("hi")));
      case "bad-exit":
        return exec(encodeRecord(OutputKind.exit, Buffer.from("{\"exitCode\":\"zero\"}")));
      case "after-exit":
        return exec(Buffer.concat([exitRecord, encodeRecord(OutputKind.stdout, Buffer.from("late"))]));
      case "bad-id":
        return exec(exitRecord, "../../etc");
      default:
        return exec(exitRecord);
    }
  });
  await serveFakeAgent(dir, socketPath, http2, check);
}


describe("lying agent", () => {
  it("fails only the affected request on malformed exec streams", () =>
    withLyingAgent(async (client) => {
      for (const shell of ["bad-kind", "huge-record", "no-exit", "bad-exit", "after-exit", "bad-id"]) {
        await assert.rejects(client.run({ shell }), AgentProtocolError, shell);
        assert.equal((await client.health()).ok, true, `session still usable after ${shell}`);
      }
      assert.equal((await client.run({ shell: "fine" })).exitCode, 0);
    }));

  it("bounds and validates JSON responses", () =>
    withLyingAgent(async (client) => {
      await assert.rejects(client.stat("/x"), AgentProtocolError);
      await assert.rejects(client.list("/x"), AgentProtocolError);
      assert.equal((await client.health()).ok, true);
      await assert.rejects(client.listCommands(), AgentProtocolError);
      await assert.rejects(client.refreshIdentity(createIdentityRequest({ hostname: "me" })), AgentProtocolError);
      // Last: Node's HTTP/2 server, acting as the guest here, gives up the whole session after this one.
      await assert.rejects(client.list("/huge-header"), AgentProtocolError);
    }));
});

/**
 * An agent that starts every response (file content, or exec records) and then hangs up mid-body, the way a
 * crashing guest or QEMU does. Node ends such a response's readable side as if it were complete.
 */
async function withHangingUpAgent(check: (client: AgentClient) => Promise<void>) {
  const dir = await mkdtemp(join(tmpdir(), "cc-hangup-"));
  const socketPath = join(dir, "agent.sock");
  const http2 = createHttp2Server();
  const sockets = new Set<Socket>();
  http2.on("stream", (stream: ServerHttp2Stream, headers) => {
    stream.on("error", () => {});
    if (headers[":path"] === AgentPath.health) {
      stream.respond({ ":status": 200, "content-type": "application/json" });
      stream.end(JSON.stringify(FAKE_AGENT_HEALTH));
      return;
    }
    const isExec = String(headers[":path"]).startsWith(AgentPath.exec);
    stream.respond({ ":status": 200, ...(isExec ? { [EXEC_ID_HEADER]: "cmd-1" } : {}) });
    stream.write(isExec ? encodeRecord(OutputKind.stdout, Buffer.alloc(1000, 0x61)) : Buffer.alloc(1000, 0x61), () => {
      for (const socket of sockets) socket.destroy();
    });
  });
  await serveFakeAgent(dir, socketPath, http2, check, (socket) => sockets.add(socket));
}

describe("a guest that hangs up mid-response", () => {
  it("fails readFileBuffer instead of returning a truncated file", () =>
    withHangingUpAgent(async (client) => {
      await assert.rejects(client.readFileBuffer("/big"), AgentDisconnectedError);
    }));

  it("errors the readFile stream instead of ending it", () =>
    withHangingUpAgent(async (client) => {
      let received = 0;
      await assert.rejects(async () => {
        for await (const chunk of client.readFile("/big") as AsyncIterable<Buffer>) received += chunk.length;
      }, AgentDisconnectedError);
      assert.ok(received <= 1000);
    }));

  it("reports a cut-off command as disconnected, not as a protocol error", () =>
    withHangingUpAgent(async (client) => {
      await assert.rejects(client.run({ argv: ["cat", "/big"] }), AgentDisconnectedError);
    }));
});

describe("closing the client mid-response", () => {
  it("fails a streaming command and a download with AgentDisconnectedError", async () => {
    const harness = await startAgent();
    try {
      const path = join(harness.dir, "big.bin");
      await writeFile(path, Buffer.alloc(32 * 1024 * 1024));
      const client = await AgentClient.connect(harness.socketPath);
      const command = client.exec({ argv: ["cat", "/dev/zero"] });
      const download = client.readFile(path);
      await Promise.all([firstChunk(command.stdout), firstChunk(download)]);
      const downloadFails = assert.rejects(async () => {
        for await (const _ of download) void _;
      }, AgentDisconnectedError);
      const commandFails = assert.rejects(command.wait(), AgentDisconnectedError);
      await client.close();
      await Promise.all([downloadFails, commandFails]);
    } finally {
      await harness.stop();
    }
  });
});

function firstChunk(stream: Readable): Promise<void> {
  return new Promise((resolve, reject) => {
    stream.once("data", () => {
      stream.pause();
      resolve();
    });
    stream.once("error", reject);
  });
}

it("writeFile and exec survive a quick sequence of writes (smoke)", async () => {
  const harness = await startAgent();
  const client = await AgentClient.connect(harness.socketPath);
  try {
    const path = join(harness.dir, "seq.txt");
    for (let i = 0; i < 20; i++) await client.writeFile(path, `v${i}`);
    assert.equal(await readFile(path, "utf8"), "v19");
    await writeFile(path, "local");
    assert.equal((await client.readFileBuffer(path)).toString(), "local");
  } finally {
    await client.close();
    await harness.stop();
  }
});

async function readAll(stream: Readable): Promise<string> {
  let text = "";
  for await (const chunk of stream) text += String(chunk);
  return text;
}

describe("background commands across reconnects", () => {
  it("keeps running after the client closes; a new client lists it, re-attaches and gets its exit", async () => {
    const harness = await startAgent();
    const go = join(harness.dir, "go");
    try {
      const first = await AgentClient.connect(harness.socketPath);
      const started = first.exec({
        shell: `echo started; while [ ! -e ${go} ]; do sleep 0.02; done; echo after-attach; exit 5`,
        background: true,
      });
      const id = await started.id;
      assert.equal(await firstLine(started), "started");
      await first.close();
      await assert.rejects(started.wait(), AgentDisconnectedError);
      await sleep(50);
      assert.equal(harness.agent.commands.size, 1, "the background command was not killed");

      const second = await AgentClient.connect(harness.socketPath);
      const [listed] = await second.listCommands();
      assert.equal(listed?.id, id);
      assert.equal(listed?.running, true);
      assert.equal(listed?.exit, undefined);

      const attached = second.attach(id);
      assert.equal(await attached.id, id);
      const stdout = readAll(attached.stdout);
      const stderr = readAll(attached.stderr);
      await writeFile(go, "");
      assert.deepEqual(await attached.wait(), { exitCode: 5, signal: null, timedOut: false });
      assert.equal(await stdout, "after-attach\n");
      assert.equal(await stderr, "");

      assert.deepEqual(await second.listCommands(), [
        { id, running: false, exit: { exitCode: 5, signal: null, timedOut: false }, startedAtMs: listed?.startedAtMs },
      ]);
      const late = await second.run({ argv: ["true"] }); // unrelated foreground commands are not listed
      assert.equal(late.exitCode, 0);
      assert.equal((await second.listCommands()).length, 1);

      const again = second.attach(id);
      assert.deepEqual(await again.wait(), { exitCode: 5, signal: null, timedOut: false }, "an exited command answers at once");
      assert.equal(await readAll(again.stdout), "");
      await second.close();
    } finally {
      await harness.stop();
    }
  });

  it("detaches the previous handle when another attaches, and kills through the new one", async () => {
    const harness = await startAgent();
    const client = await AgentClient.connect(harness.socketPath);
    try {
      const command = client.exec({ shell: "while :; do echo tick; sleep 0.02; done", background: true });
      const id = await command.id;
      await firstLine(command);
      const attached = client.attach(id);
      await assert.rejects(command.wait(), CommandDetachedError);
      assert.equal(await firstLine(attached), "tick");
      await attached.kill("SIGTERM");
      const exit = await attached.wait();
      assert.equal(exit.signal, "SIGTERM");
    } finally {
      await client.close();
      await harness.stop();
    }
  });

  it("fails attach to an unknown id with AgentError not_found", async () => {
    const harness = await startAgent();
    const client = await AgentClient.connect(harness.socketPath);
    try {
      const missing = client.attach("0b8a4a40-5a34-4c1b-9d9a-1b2c3d4e5f60");
      await assert.rejects(missing.wait(), { name: "AgentError", code: "not_found", status: 404 });
      await assert.rejects(missing.id, AgentError);
    } finally {
      await client.close();
      await harness.stop();
    }
  });
});

describe("refreshIdentity", () => {
  it("applies a fresh identity through the agent's helper and rejects malformed ones", async () => {
    const dir = await mkdtemp(join(tmpdir(), "cc-identity-client-"));
    // Stands in for guest-identity --serve (which sets the real clock, so it only runs in a guest): records its
    // arguments and requests, and answers "ok".
    const helperPath = join(dir, "fake-guest-identity");
    await writeFile(helperPath, `#!/bin/sh\necho "$@" > ${dir}/args\nwhile read -r line; do echo "$line" >> ${dir}/requests; echo ok; done\n`);
    await chmod(helperPath, 0o755);
    const identity = { helperPath, hostnamePath: join(dir, "hostname"), machineIdPath: join(dir, "machine-id"), hostsPath: join(dir, "hosts") };
    const harness = await startAgent(await createGuestLikeAgent({ identity }));
    const client = await AgentClient.connect(harness.socketPath);
    try {
      const request = createIdentityRequest({ hostname: "clone-1" });
      assert.match(request.machineId, /^[0-9a-f]{32}$/);
      assert.equal(Buffer.from(request.entropy, "base64").length, 64);
      const result = await client.refreshIdentity(request);
      assert.deepEqual(result, {
        clockSetTo: request.epochMs,
        reseeded: true,
        hostname: "clone-1",
        machineId: request.machineId,
        machineIdWritten: true,
      });
      assert.equal(await readFile(join(dir, "args"), "utf8"), "--serve\n");
      const entropyHex = Buffer.from(request.entropy, "base64").toString("hex");
      assert.equal(await readFile(join(dir, "requests"), "utf8"), `${request.epochMs} ${entropyHex}\n`);
      assert.equal(await readFile(identity.hostnamePath, "utf8"), "clone-1");
      assert.equal(await readFile(identity.machineIdPath, "utf8"), `${request.machineId}\n`);

      const malformed = [
        { ...request, hostname: "under_score" },
        { ...request, entropy: randomBytes(31).toString("base64") },
        { ...request, machineId: "not-a-machine-id" },
      ];
      for (const bad of malformed) {
        await assert.rejects(client.refreshIdentity(bad), { name: "AgentError", code: "bad_request", status: 400 });
      }
      assert.equal(await readFile(identity.hostnamePath, "utf8"), "clone-1", "rejected requests changed nothing");
    } finally {
      await client.close();
      await harness.stop();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
