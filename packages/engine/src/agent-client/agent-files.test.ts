// The files operations of the guest agent (mkdir, remove, rename, chmod, mtimes, deep listings, chunked writes and
// their commit) through the host's AgentClient, against the agent served in-process: fast, no VM.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { lstat, mkdir, mkdtemp, readFile, readdir, rm, stat, symlink, writeFile } from "node:fs/promises";
import { connect as connectHttp2 } from "node:http2";
import { connect as connectSocket } from "node:net";
import { join } from "node:path";
import { Readable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { createAgent } from "@codecourier/agent";
import { AGENT_HANDSHAKE_LIMITS, AgentPath, FILE_LIMITS, performHostHandshake } from "@codecourier/protocol";
import { AgentClient } from "./index.js";
import { serveAgentInProcess } from "./testing/in-process-agent.js";

/** The agent on a Unix socket, the way QEMU exposes the guest's port; file operations need no spawner. */
const startAgent = () => serveAgentInProcess(createAgent(), "cc-agent-files-");

/** A request the AgentClient would refuse to send (it checks its arguments): how the agent itself answers it. */
async function rawRequest(socketPath: string, method: string, path: string, body?: Buffer): Promise<{ status: number; body: string }> {
  const socket = connectSocket(socketPath);
  await performHostHandshake(socket, randomBytes(AGENT_HANDSHAKE_LIMITS.nonceBytes).toString("hex"), 5_000);
  const session = connectHttp2("http://agent", { createConnection: () => socket });
  try {
    const request = session.request({ ":method": method, ":path": path }, { endStream: body === undefined });
    if (body !== undefined) request.end(body);
    const [status, text] = await Promise.all([
      new Promise<number>((resolve) => request.once("response", (headers) => resolve(Number(headers[":status"])))),
      (async () => {
        let text = "";
        for await (const chunk of request) text += String(chunk);
        return text;
      })(),
    ]);
    return { status, body: text };
  } finally {
    session.destroy();
  }
}

const query = (endpoint: string, params: Record<string, string>) => `${endpoint}?${new URLSearchParams(params).toString()}`;

describe("agent file operations", () => {
  let harness: Awaited<ReturnType<typeof startAgent>>;
  let client: AgentClient;
  let root: string;
  let caseNumber = 0;
  /** A fresh directory per test. */
  const freshDir = async () => {
    const dir = join(root, `case-${++caseNumber}`);
    await mkdir(dir);
    return dir;
  };

  before(async () => {
    harness = await startAgent();
    root = join(harness.dir, "files");
    await mkdir(root);
    client = await AgentClient.connect(harness.socketPath, { timeoutMs: 5_000 });
  });

  after(async () => {
    await client.close();
    await harness.stop();
  });

  it("mkdir: like mkdir -p by default, plain mkdir(2) without recursive", async () => {
    const dir = await freshDir();
    const made = await client.mkdir(join(dir, "a", "b", "c"));
    assert.deepEqual([made.path, made.type], [join(dir, "a", "b", "c"), "directory"]);
    assert.ok((await stat(join(dir, "a", "b", "c"))).isDirectory());
    assert.equal((await client.mkdir(join(dir, "a", "b"))).type, "directory", "an existing directory is fine");

    await assert.rejects(client.mkdir(join(dir, "a"), { recursive: false }), { name: "AgentError", code: "already_exists", status: 409 });
    await assert.rejects(client.mkdir(join(dir, "x", "y"), { recursive: false }), { code: "not_found", status: 404 });
    assert.equal((await client.mkdir(join(dir, "x"), { recursive: false })).type, "directory");
    await writeFile(join(dir, "file"), "");
    await assert.rejects(client.mkdir(join(dir, "file")), { code: "already_exists" }, "a file is not a directory");
    await assert.rejects(client.mkdir(join(dir, "file", "sub")), { code: "not_directory" });
    await assert.rejects(client.mkdir("relative"), { code: "bad_request" });
  });

  it("remove: files, symlinks (not their targets), empty directories; full ones only recursively", async () => {
    const dir = await freshDir();
    await writeFile(join(dir, "file"), "x");
    await client.remove(join(dir, "file"));
    assert.equal(existsSync(join(dir, "file")), false);

    await mkdir(join(dir, "target"));
    await writeFile(join(dir, "target", "kept"), "kept");
    await symlink("target", join(dir, "link"));
    await client.remove(join(dir, "link"), { recursive: true });
    assert.equal(existsSync(join(dir, "link")), false);
    assert.equal(await readFile(join(dir, "target", "kept"), "utf8"), "kept", "the link's target is untouched");

    await assert.rejects(client.remove(join(dir, "target")), { name: "AgentError", code: "not_empty", status: 409, message: /not empty/ });
    assert.ok(existsSync(join(dir, "target", "kept")), "a refused remove removes nothing");
    await mkdir(join(dir, "target", "deep", "deeper"), { recursive: true });
    await client.remove(join(dir, "target"), { recursive: true });
    assert.equal(existsSync(join(dir, "target")), false);

    await mkdir(join(dir, "empty"));
    await client.remove(join(dir, "empty"));
    assert.equal(existsSync(join(dir, "empty")), false);
    await assert.rejects(client.remove(join(dir, "missing")), { code: "not_found", status: 404 });
    const noFlag = await rawRequest(harness.socketPath, "POST", query(AgentPath.remove, { path: join(dir, "x"), recursive: "yes" }));
    assert.equal(noFlag.status, 400, noFlag.body);
    const noPath = await rawRequest(harness.socketPath, "POST", AgentPath.remove);
    assert.equal(noPath.status, 400);
    assert.match(noPath.body, /missing query parameter: path/);
  });

  it("rename: atomic, replaces a file at the destination, refuses a non-empty directory there", async () => {
    const dir = await freshDir();
    await writeFile(join(dir, "a"), "new");
    await writeFile(join(dir, "b"), "old");
    const renamed = await client.rename(join(dir, "a"), join(dir, "b"));
    assert.deepEqual([renamed.path, renamed.type, renamed.size], [join(dir, "b"), "file", 3]);
    assert.equal(await readFile(join(dir, "b"), "utf8"), "new");
    assert.equal(existsSync(join(dir, "a")), false);

    await mkdir(join(dir, "d1"));
    await mkdir(join(dir, "d2"));
    await writeFile(join(dir, "d2", "inside"), "");
    await assert.rejects(client.rename(join(dir, "d1"), join(dir, "d2")), { code: "not_empty", status: 409 });
    await assert.rejects(client.rename(join(dir, "b"), join(dir, "d2")), { code: "is_directory" });
    assert.equal((await client.rename(join(dir, "d2"), join(dir, "d3"))).type, "directory");
    await assert.rejects(client.rename(join(dir, "missing"), join(dir, "c")), { code: "not_found" });
    await assert.rejects(client.rename(join(dir, "b"), "relative"), { code: "bad_request", message: /to must be absolute/ });
  });

  it("chmod: sets the mode (through a symlink, like chmod(1)); out-of-range modes are refused on both sides", async () => {
    const dir = await freshDir();
    await writeFile(join(dir, "script"), "#!/bin/sh\n");
    const changed = await client.chmod(join(dir, "script"), 0o4755);
    assert.equal(changed.mode, 0o4755);
    assert.equal((await stat(join(dir, "script"))).mode & 0o7777, 0o4755);
    await symlink("script", join(dir, "link"));
    const viaLink = await client.chmod(join(dir, "link"), 0o600);
    assert.deepEqual([viaLink.type, viaLink.mode], ["file", 0o600]);
    assert.equal((await stat(join(dir, "script"))).mode & 0o7777, 0o600);

    await assert.rejects(client.chmod(join(dir, "script"), 0o10000), RangeError);
    await assert.rejects(client.chmod(join(dir, "script"), -1), RangeError);
    for (const mode of ["10000", "8", "rwx", ""]) {
      const answer = await rawRequest(harness.socketPath, "POST", query(AgentPath.chmod, { path: join(dir, "script"), mode }));
      assert.equal(answer.status, 400, `mode ${JSON.stringify(mode)}: ${answer.body}`);
    }
    const noMode = await rawRequest(harness.socketPath, "POST", query(AgentPath.chmod, { path: join(dir, "script") }));
    assert.equal(noMode.status, 400);
    assert.equal((await stat(join(dir, "script"))).mode & 0o7777, 0o600, "refused requests changed nothing");
    await assert.rejects(client.chmod(join(dir, "missing"), 0o644), { code: "not_found" });
  });

  it("writeFile sets a given mtime exactly, before the file replaces the old one", async () => {
    const dir = await freshDir();
    const path = join(dir, "dated");
    for (const mtimeMs of [1_700_000_000_123, 0, 946_684_799_999, 4_102_444_800_001]) {
      const written = await client.writeFile(path, `at ${mtimeMs}`, { mtimeMs, mode: 0o640 });
      assert.equal(written.mtimeMs, mtimeMs);
      assert.equal((await stat(path)).mtimeMs, mtimeMs);
      assert.equal(written.mode, 0o640);
    }
    const undated = await client.writeFile(path, "now");
    assert.ok(Math.abs(undated.mtimeMs - Date.now()) < 60_000, "without mtime, the time of writing");
    await assert.rejects(client.writeFile(path, "x", { mtimeMs: -1 }), RangeError);
    await assert.rejects(client.writeFile(path, "x", { mtimeMs: 1.5 }), RangeError);
    for (const mtime of ["-1", "1e12", "253402300800000", "soon"]) {
      const answer = await rawRequest(harness.socketPath, "PUT", query(AgentPath.file, { path, mtime }), Buffer.from("x"));
      assert.equal(answer.status, 400, `mtime ${mtime}: ${answer.body}`);
    }
    assert.equal(await readFile(path, "utf8"), "now", "refused writes changed nothing");
    assert.deepEqual((await readdir(dir)).filter((name) => name.includes("cc-upload")), [], "no temporary files left behind");
  });

  it("lists N levels deep with relative names, sizes and mtimes, without entering symlinked directories", async () => {
    const dir = await freshDir();
    await mkdir(join(dir, "a", "b", "c"), { recursive: true });
    await writeFile(join(dir, "a", "b", "c", "deep.txt"), "deepest");
    await writeFile(join(dir, "a", "one.txt"), "1");
    await writeFile(join(dir, "top.txt"), "top!");
    await symlink("a", join(dir, "link-to-a"));
    await symlink(".", join(dir, "a", "loop"));

    const shallow = await client.list(dir);
    assert.deepEqual(shallow.map((e) => [e.name, e.type]), [["a", "directory"], ["link-to-a", "symlink"], ["top.txt", "file"]]);
    assert.equal(shallow.find((e) => e.name === "top.txt")?.size, 4);
    assert.equal(shallow.find((e) => e.name === "top.txt")?.mtimeMs, (await lstat(join(dir, "top.txt"))).mtimeMs);

    const deep = await client.list(dir, { depth: 3 });
    assert.deepEqual(deep.map((e) => [e.name, e.type, e.type === "file" ? e.size : "-"]), [
      ["a", "directory", "-"],
      ["a/b", "directory", "-"],
      ["a/b/c", "directory", "-"],
      ["a/loop", "symlink", "-"],
      ["a/one.txt", "file", 1],
      ["link-to-a", "symlink", "-"],
      ["top.txt", "file", 4],
    ]);
    const all = await client.list(dir, { depth: FILE_LIMITS.maxListDepth });
    assert.deepEqual(all.map((e) => e.name).filter((n) => n.endsWith(".txt")), ["a/b/c/deep.txt", "a/one.txt", "top.txt"]);
    assert.ok(all.every((e) => typeof e.size === "number" && typeof e.mtimeMs === "number"));
    assert.deepEqual((await client.list(join(dir, "link-to-a"), { depth: 2 })).map((e) => e.name).slice(0, 2), ["b", "b/c"], "the listed path itself may be a link");

    await assert.rejects(client.list(dir, { depth: 0 }), RangeError);
    for (const depth of ["0", "-1", "1025", "two"]) {
      const answer = await rawRequest(harness.socketPath, "GET", query(AgentPath.list, { path: dir, depth }));
      assert.equal(answer.status, 400, `depth ${depth}: ${answer.body}`);
    }
    await assert.rejects(client.list(join(dir, "top.txt"), { depth: 2 }), { code: "not_directory" });
  });

  it("refuses a listing of more than FILE_LIMITS.maxListedEntries entries with a clear error", async () => {
    // tmpfs when there is one: 100,001 files on a real disk take several seconds to make.
    const base = existsSync("/dev/shm") ? await mkdtemp("/dev/shm/cc-many-") : await freshDir();
    try {
      await mkdir(join(base, "many"));
      const made = spawnSync("sh", ["-c", `seq 1 ${FILE_LIMITS.maxListedEntries + 1} | xargs touch`], { cwd: join(base, "many") });
      assert.equal(made.status, 0, String(made.stderr));
      await assert.rejects(client.list(base, { depth: 2 }), { code: "too_large", status: 413, message: /more than 100000 entries/ });
      await rm(join(base, "many", "1"));
      const listed = await client.list(join(base, "many"));
      assert.equal(listed.length, FILE_LIMITS.maxListedEntries, "exactly the limit is fine");
    } finally {
      await rm(base, { recursive: true, force: true });
    }
  });

  it("writes chunks at offsets (cut at the offset first) and refuses offsets past the end", async () => {
    const dir = await freshDir();
    const partial = join(dir, "new-parent", ".big.part");
    const created = await client.writeFileAt(partial, 0, "");
    assert.deepEqual([created.type, created.size], ["file", 0], "offset 0 creates the file and its parents");
    assert.equal((await client.writeFileAt(partial, 0, "hello ")).size, 6);
    assert.equal((await client.writeFileAt(partial, 6, Readable.from([Buffer.from("wor"), Buffer.from("ld")]))).size, 11);
    assert.equal(await readFile(partial, "utf8"), "hello world");
    assert.equal((await client.writeFileAt(partial, 6, "there")).size, 11);
    assert.equal((await client.writeFileAt(partial, 5, "!")).size, 6, "the file is cut at the offset: no stale tail");
    assert.equal(await readFile(partial, "utf8"), "hello!");

    await assert.rejects(client.writeFileAt(partial, 7, "x"), { code: "bad_request", status: 400, message: /offset 7 is past the end/ });
    await assert.rejects(client.writeFileAt(partial, -1, "x"), RangeError);
    for (const offset of ["-1", "1.5", "x", "99999999999999999"]) {
      const answer = await rawRequest(harness.socketPath, "PUT", query(AgentPath.file, { path: partial, partial: "1", offset }), Buffer.from("x"));
      assert.equal(answer.status, 400, `offset ${offset}: ${answer.body}`);
    }
    const noOffset = await rawRequest(harness.socketPath, "PUT", query(AgentPath.file, { path: partial, partial: "1" }), Buffer.from("x"));
    assert.equal(noOffset.status, 400);
    assert.match(noOffset.body, /missing query parameter: offset/);
    assert.equal(await readFile(partial, "utf8"), "hello!", "refused chunks changed nothing");

    await assert.rejects(client.writeFileAt(dir, 0, "x"), { code: "is_directory" });
    await symlink(partial, join(dir, "link.part"));
    await assert.rejects(client.writeFileAt(join(dir, "link.part"), 0, "x"), { code: "bad_request" }, "never written through a symlink");
  });

  it("a chunk cut short is not taken for a whole one, and its retry at the same offset makes the file whole", async () => {
    const dir = await freshDir();
    const partial = join(dir, ".data.part");
    const data = randomBytes(3 * 1024 * 1024);
    await client.writeFileAt(partial, 0, data.subarray(0, 1024 * 1024));
    let sent = 0;
    const failing = new Readable({
      read() {
        if (sent >= 1024 * 1024) return this.destroy(new Error("the network went away"));
        this.push(data.subarray(1024 * 1024 + sent, 1024 * 1024 + sent + 64 * 1024));
        sent += 64 * 1024;
      },
    });
    await assert.rejects(client.writeFileAt(partial, 1024 * 1024, failing), /the data source failed: the network went away/);
    // Destroyed without an error, as an HTTP request body is when its client hangs up.
    const quietlyClosed = new Readable({
      read() {
        this.push(data.subarray(1024 * 1024, 1024 * 1024 + 100));
        setImmediate(() => this.destroy());
      },
    });
    await assert.rejects(client.writeFileAt(partial, 1024 * 1024, quietlyClosed), /closed before its end/);
    const retried = await client.writeFileAt(partial, 1024 * 1024, data.subarray(1024 * 1024));
    assert.equal(retried.size, data.length);
    assert.ok((await readFile(partial)).equals(data));
  });

  it("commits an upload: mode, mtime and an atomic rename onto the destination", async () => {
    const dir = await freshDir();
    const destination = join(dir, "final.bin");
    await writeFile(destination, "old");
    await client.chmod(destination, 0o751);
    const partial = join(dir, ".final.bin.part");
    await client.writeFileAt(partial, 0, "new content");

    const committed = await client.commitUpload(partial, destination, { mtimeMs: 1_234_567_890_123 });
    assert.deepEqual([committed.path, committed.size, committed.mode, committed.mtimeMs], [destination, 11, 0o751, 1_234_567_890_123]);
    assert.equal(await readFile(destination, "utf8"), "new content");
    assert.equal(existsSync(partial), false);

    await client.writeFileAt(partial, 0, "again");
    assert.equal((await client.commitUpload(partial, destination, { mode: 0o600 })).mode, 0o600);
    await client.writeFileAt(partial, 0, "fresh");
    assert.equal((await client.commitUpload(partial, join(dir, "brand-new"))).mode, 0o644, "a new file's default mode");

    await client.writeFileAt(partial, 0, "x");
    await assert.rejects(client.commitUpload(partial, dir), { code: "is_directory" });
    assert.ok(existsSync(partial), "a refused commit keeps the partial file");
    await assert.rejects(client.commitUpload(join(dir, "missing.part"), destination), { code: "not_found" });
    await assert.rejects(client.commitUpload(partial, destination, { mode: 0o17777 }), RangeError);
    const noTarget = await rawRequest(harness.socketPath, "POST", query(AgentPath.commitUpload, { path: partial }));
    assert.equal(noTarget.status, 400);
    assert.match(noTarget.body, /missing query parameter: to/);
    assert.equal(await readFile(destination, "utf8"), "again", "refused commits changed nothing");
  });
});
