// File watching through the in-process agent with the real guest-watch and guest-spawner helpers (compiled here
// the way the system disk build does): what a watcher reports for what commands do, and how the host bounds a
// lying guest's watch stream.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { spawnSync } from "node:child_process";
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from "node:fs/promises";
import { connect as connectHttp2, createServer as createHttp2Server, type ServerHttp2Stream } from "node:http2";
import { createConnection, createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { createAgent, type Agent, type AgentSession } from "@codecourier/agent";
import { AGENT_HANDSHAKE_LIMITS, AgentPath, WATCH_CONTENT_TYPE, answerHostHandshake, performHostHandshake, type WatchEvent } from "@codecourier/protocol";
import { compileGuestHelper, guestHelper } from "../images/guest-helpers.js";
import { AgentClient, AgentError, AgentProtocolError, parseWatchEvent } from "./index.js";
import { FAKE_AGENT_HEALTH, serveFakeAgent } from "./testing/in-process-agent.js";

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function listen(server: Server, path: string): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(path, () => resolve());
  });
}

/** The events a watch stream delivers, collected as they come; wait for the ones a test expects. */
class Events {
  readonly seen: WatchEvent[] = [];
  readonly ended: Promise<Error | undefined>;

  constructor(readonly stream: Readable) {
    stream.on("data", (event: WatchEvent) => this.seen.push(event));
    this.ended = new Promise((resolve) => {
      stream.once("end", () => resolve(undefined));
      stream.once("error", (error) => resolve(error));
    });
  }

  /** Resolves with the events seen once `done` holds for them; fails after `timeoutMs` showing what was seen. */
  async until(done: (events: WatchEvent[]) => boolean, timeoutMs = 5_000): Promise<WatchEvent[]> {
    const deadline = Date.now() + timeoutMs;
    while (!done(this.seen)) {
      if (Date.now() > deadline) assert.fail(`expected events did not arrive; saw ${JSON.stringify(this.seen, null, 1)}`);
      await sleep(10);
    }
    return this.seen;
  }

  has(expected: Partial<WatchEvent>): boolean {
    return this.seen.some((event) => Object.entries(expected).every(([key, value]) => (event as Record<string, unknown>)[key] === value));
  }
}

/** Whether a process exists and is not a zombie. */
async function alive(pid: number): Promise<boolean> {
  const stat = await readFile(`/proc/${pid}/stat`, "utf8").catch(() => "");
  return stat !== "" && stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z";
}

/** Pids of guest-watch processes (by their command name) that are alive. */
async function watchHelpers(): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await readdir("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    const comm = await readFile(`/proc/${entry}/comm`, "utf8").catch(() => "");
    if (comm.trim() === "guest-watch" && (await alive(Number(entry)))) pids.push(Number(entry));
  }
  return pids;
}

describe("file watch through the in-process agent", () => {
  let helpers: string;
  let socketDir: string;
  let agent: Agent;
  let client: AgentClient;
  let server: Server;
  const sessions: AgentSession[] = [];
  const sockets = new Set<Socket>();
  let work: string;
  let counter = 0;
  /** A fresh empty directory per test, so that no test sees another's events. */
  const freshDir = async () => {
    const dir = join(work, `case-${++counter}`);
    await mkdir(dir);
    return dir;
  };
  const sh = async (shell: string, cwd: string) => {
    const result = await client.run({ shell, cwd });
    assert.equal(result.exitCode, 0, `${shell}: ${result.stderr.toString()}`);
  };

  before(async () => {
    helpers = await mkdtemp(join(tmpdir(), "cc-watch-helpers-"));
    await compileGuestHelper(guestHelper("guest-spawner"), join(helpers, "guest-spawner"));
    await compileGuestHelper(guestHelper("guest-watch"), join(helpers, "guest-watch"));
    agent = createAgent({ spawnerPath: join(helpers, "guest-spawner"), watcherPath: join(helpers, "guest-watch") });
    socketDir = await mkdtemp(join(tmpdir(), "cc-watch-agent-"));
    server = createServer((socket) => {
      sockets.add(socket);
      socket.on("close", () => sockets.delete(socket));
      void answerHostHandshake(socket).then(() => sessions.push(agent.serveSession(socket)), () => socket.destroy());
    });
    await listen(server, join(socketDir, "agent.sock"));
    client = await AgentClient.connect(join(socketDir, "agent.sock"), { timeoutMs: 5_000 });
    work = await mkdtemp(join(tmpdir(), "cc-watched-"));
  });

  after(async () => {
    await client?.close();
    agent?.killAllCommands();
    for (const session of sessions) session.close();
    for (const socket of sockets) socket.destroy();
    await new Promise((resolve) => server?.close(resolve));
    agent?.spawner.close();
    await Promise.all([helpers, socketDir, work].map((dir) => dir && rm(dir, { recursive: true, force: true })));
  });

  it("reports nested creates made faster than watches can be added, with what is a directory", async () => {
    const dir = await freshDir();
    const events = new Events(await client.watch(dir, { recursive: true }));
    await sh("mkdir -p a/b/c && touch a/b/c/f", dir);
    await events.until(() => events.has({ type: "create", path: `${dir}/a/b/c/f` }));
    for (const path of ["a", "a/b", "a/b/c"]) assert.ok(events.has({ type: "create", path: `${dir}/${path}`, isDirectory: true }), path);
    assert.ok(events.has({ type: "create", path: `${dir}/a/b/c/f`, isDirectory: false }));
    // A directory made before the watch and one made after are both watched.
    await sh("echo more > a/b/c/g", dir);
    await events.until(() => events.has({ type: "write", path: `${dir}/a/b/c/g` }));
    events.stream.destroy();
  });

  it("reports a write when the writer closes the file, and removes of files and directories", async () => {
    const dir = await freshDir();
    await writeFile(join(dir, "existing"), "old");
    await mkdir(join(dir, "sub"));
    const events = new Events(await client.watch(dir, { recursive: true }));
    await sh("printf new >> existing", dir);
    await events.until(() => events.has({ type: "write", path: `${dir}/existing` }));
    assert.equal(events.has({ type: "create", path: `${dir}/existing` }), false, "appending to a file creates nothing");
    await sh("rm existing && rmdir sub", dir);
    await events.until(() => events.has({ type: "remove", path: `${dir}/sub`, isDirectory: true }));
    assert.ok(events.has({ type: "remove", path: `${dir}/existing`, isDirectory: false }));
    events.stream.destroy();
  });

  it("pairs the halves of a rename, follows a renamed directory, and reports moves out and in", async () => {
    const dir = await freshDir();
    const outside = await freshDir();
    await mkdir(join(outside, "incoming/inner"), { recursive: true });
    await writeFile(join(outside, "incoming/inner/file"), "x");
    const events = new Events(await client.watch(dir, { recursive: true }));
    await sh("touch x && mv x y && mkdir d && mv d e && touch e/inside", dir);
    await events.until(() => events.has({ type: "create", path: `${dir}/e/inside` }));
    const renames = events.seen.filter((event) => event.type === "rename");
    assert.deepEqual(renames, [
      { type: "rename", path: `${dir}/y`, oldPath: `${dir}/x`, isDirectory: false },
      { type: "rename", path: `${dir}/e`, oldPath: `${dir}/d`, isDirectory: true },
    ]);
    assert.equal(events.has({ type: "remove" }), false, "a rename within the tree is neither a remove nor a create");

    // Moved out and a new one made under the same name: the remove must come first.
    await sh(`mv y ${outside}/y && touch y && mv ${outside}/incoming moved-in`, dir);
    await events.until(() => events.has({ type: "create", path: `${dir}/moved-in/inner/file` }));
    const aboutY = events.seen.filter((event) => event.type !== "rename" && event.type !== "overflow" && event.path === `${dir}/y`);
    assert.deepEqual(
      aboutY.map((event) => event.type),
      ["remove", "create", "write"],
      "moved out: a remove, before the new file's create",
    );
    assert.ok(events.has({ type: "create", path: `${dir}/moved-in`, isDirectory: true }), "moved in: a create");
    assert.ok(events.has({ type: "create", path: `${dir}/moved-in/inner`, isDirectory: true }), "with what it holds");
    await sh("touch moved-in/inner/later", dir);
    await events.until(() => events.has({ type: "create", path: `${dir}/moved-in/inner/later` }));
    events.stream.destroy();
  });

  it("keeps names with spaces, newlines and non-ASCII characters intact", async () => {
    const dir = await freshDir();
    const events = new Events(await client.watch(dir, { recursive: true }));
    const names = ["with space", "new\nline", "ünïcødé ✓", "tab\there"];
    const quoted = names.map((name) => `'${name}'`).join(" ");
    await sh(`touch ${quoted}`, dir);
    await events.until(() => names.every((name) => events.has({ type: "create", path: `${dir}/${name}` })));
    events.stream.destroy();
  });

  it("without recursive reports only the directory's own entries", async () => {
    const dir = await freshDir();
    await mkdir(join(dir, "sub"));
    const events = new Events(await client.watch(dir));
    await sh("touch sub/deep && touch top", dir);
    await events.until(() => events.has({ type: "create", path: `${dir}/top` }));
    await sleep(100);
    assert.equal(events.has({ path: `${dir}/sub/deep` }), false);
    events.stream.destroy();
  });

  it("watches a single file by its name, through an atomic replace", async () => {
    const dir = await freshDir();
    const file = join(dir, "config.json");
    await writeFile(file, "{}");
    const events = new Events(await client.watch(file, { recursive: true }));
    await sh("touch other", dir);
    await client.writeFile(file, "{\"a\":1}");
    await events.until(() => events.has({ path: file }));
    await sh("printf x >> config.json && rm config.json", dir);
    await events.until(() => events.has({ type: "remove", path: file }));
    assert.equal(events.seen.some((event) => event.type !== "overflow" && event.path.endsWith("/other")), false, "other names are not reported");
    // The atomic write: its temporary file is renamed onto the watched name, which is a create of that name.
    assert.ok(events.has({ type: "create", path: file }), JSON.stringify(events.seen));
    assert.ok(events.has({ type: "write", path: file }));
    events.stream.destroy();
  });

  it("ends the stream when the watched directory is removed", async () => {
    const dir = await freshDir();
    const events = new Events(await client.watch(dir, { recursive: true }));
    await rm(dir, { recursive: true });
    assert.equal(await events.ended, undefined, "ends without an error");
    assert.deepEqual(events.seen.at(-1), { type: "remove", path: dir, isDirectory: true });
  });

  it("answers a missing path with not_found and a bad recursive flag with bad_request", async () => {
    await assert.rejects(client.watch(join(work, "no-such-dir")), (error: unknown) => error instanceof AgentError && error.code === "not_found" && error.status === 404);
    // Straight to the agent: the client only ever sends 0 or 1.
    const socket = createConnection(join(socketDir, "agent.sock"));
    await performHostHandshake(socket, randomBytes(AGENT_HANDSHAKE_LIMITS.nonceBytes).toString("hex"), 5_000);
    const session = connectHttp2("http://agent", { createConnection: () => socket });
    try {
      const request = session.request({ ":path": `${AgentPath.watch}?${new URLSearchParams({ path: work, recursive: "yes" }).toString()}` });
      const status = await new Promise((resolve, reject) => {
        request.once("response", (headers) => resolve(headers[":status"]));
        request.once("error", reject);
      });
      assert.equal(status, 400);
    } finally {
      session.destroy();
    }
  });

  it("stops the helper when the stream is closed, and never counts it as the guest being busy", async () => {
    const dir = await freshDir();
    const before = await watchHelpers();
    const stream = await client.watch(dir, { recursive: true });
    const started = (await watchHelpers()).filter((pid) => !before.includes(pid));
    assert.equal(started.length, 1, "one helper per watch");
    // The census leaves out the agent's helpers; on a shared host the rest of its count is other people's processes.
    assert.ok(agent.watches.helperPids.includes(started[0]!), "the helper is plumbing to the process census");
    assert.equal((await client.guestActivity()).runningCommands, 0);
    assert.equal(client.activity.inFlight, 0, "an open watch is not a request in flight");
    stream.destroy();
    const deadline = Date.now() + 5_000;
    while (await alive(started[0]!)) {
      assert.ok(Date.now() < deadline, "the helper outlived its stream");
      await sleep(20);
    }
    while (agent.watches.helperPids.includes(started[0]!)) {
      assert.ok(Date.now() < deadline, "the ended helper is still counted as plumbing");
      await sleep(20);
    }
  });
});

describe("guest-watch helper on its own", () => {
  let dir: string;
  let helper: string;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "cc-watch-helper-"));
    helper = join(dir, "guest-watch");
    await compileGuestHelper(guestHelper("guest-watch"), helper);
  });
  after(() => rm(dir, { recursive: true, force: true }));

  it("refuses bad arguments (exit 2), reports a missing path as an error line (exit 1), exits when stdin closes", () => {
    for (const args of [[], ["--recursive"], ["--deep", dir], ["a", "b", "c"], [""]]) {
      const result = spawnSync(helper, args, { input: "" });
      assert.equal(result.status, 2, args.join(" "));
      assert.match(result.stderr.toString(), /usage/);
    }
    const missing = spawnSync(helper, ["--recursive", join(dir, "nope")], { input: "" });
    assert.deepEqual([missing.status, missing.stdout.toString()], [1, "error 2 stat\n"]);
    // stdin is empty and closed at once: the helper is ready, then done.
    const ended = spawnSync(helper, ["--recursive", dir], { input: "", timeout: 5_000 });
    assert.deepEqual([ended.status, ended.stdout.toString()], [0, "ready\n"]);
  });
});

describe("watch stream from a lying agent", () => {
  /** A fake agent: healthy, then answering watches with whatever `body` says. */
  async function withWatchAnswer(body: Buffer | string, check: (client: AgentClient) => Promise<void>): Promise<void> {
    const dir = await mkdtemp(join(tmpdir(), "cc-watch-lying-"));
    const socketPath = join(dir, "agent.sock");
    const http2 = createHttp2Server();
    http2.on("stream", (stream: ServerHttp2Stream, headers) => {
      stream.on("error", () => {});
      if (headers[":path"] === AgentPath.health) {
        stream.respond({ ":status": 200, "content-type": "application/json" });
        stream.end(JSON.stringify(FAKE_AGENT_HEALTH));
        return;
      }
      stream.respond({ ":status": 200, "content-type": WATCH_CONTENT_TYPE });
      // Never ends: the host must give up on its own bounds, not on the end of the stream.
      stream.write(body);
    });
    await serveFakeAgent(dir, socketPath, http2, check);
  }

  const firstFailure = (stream: Readable) =>
    new Promise<unknown>((resolve) => {
      stream.on("data", () => {});
      stream.once("error", resolve);
      stream.once("end", () => resolve(undefined));
    });

  it("fails a stream whose line never ends, without buffering it whole", () =>
    withWatchAnswer(Buffer.alloc(1024 * 1024, 0x61), async (client) => {
      const error = await firstFailure(await client.watch("/x"));
      assert.ok(error instanceof AgentProtocolError, String(error));
      assert.match(error.message, /over \d+ bytes/);
    }));

  it("fails a stream with an event of an unknown type, after delivering the good ones", () =>
    withWatchAnswer(`${JSON.stringify({ type: "create", path: "/a", isDirectory: false })}\n{"type":"chmod","path":"/a","isDirectory":false}\n`, async (client) => {
      const stream = await client.watch("/x");
      const seen: WatchEvent[] = [];
      stream.on("data", (event: WatchEvent) => seen.push(event));
      const error = await new Promise((resolve) => stream.once("error", resolve));
      assert.ok(error instanceof AgentProtocolError);
      assert.deepEqual(seen, [{ type: "create", path: "/a", isDirectory: false }]);
    }));

  it("checks every field of an event", () => {
    const valid = [
      { type: "create", path: "/a", isDirectory: true },
      { type: "write", path: "/a b", isDirectory: false },
      { type: "remove", path: "/", isDirectory: true },
      { type: "rename", path: "/b", oldPath: "/a", isDirectory: false },
      { type: "overflow" },
    ];
    for (const event of valid) assert.deepEqual(parseWatchEvent(Buffer.from(JSON.stringify(event))), event);
    const invalid = [
      "not json",
      "[]",
      "null",
      JSON.stringify({ type: "create", path: "relative", isDirectory: true }),
      JSON.stringify({ type: "create", path: "/a" }),
      JSON.stringify({ type: "create", path: "/a", isDirectory: "yes" }),
      JSON.stringify({ type: "create", path: "/a", isDirectory: true, extra: 1 }),
      JSON.stringify({ type: "create", path: "/a", oldPath: "/b", isDirectory: true }),
      JSON.stringify({ type: "rename", path: "/b", isDirectory: true }),
      JSON.stringify({ type: "rename", path: "/b", oldPath: 5, isDirectory: true }),
      JSON.stringify({ type: "overflow", path: "/a" }),
      JSON.stringify({ type: "write", path: `/${"x".repeat(20_000)}`, isDirectory: false }),
      JSON.stringify({ type: "write", path: "/a\u0000b", isDirectory: false }),
      JSON.stringify({ type: "ready" }),
    ];
    for (const line of invalid) assert.throws(() => parseWatchEvent(Buffer.from(line)), AgentProtocolError, line);
  });
});
