// The wire format of the sandbox calls, against a stub server on a real local socket (no VMs).
import assert from "node:assert/strict";
import { createServer, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, beforeEach, describe, it } from "node:test";
import { AuthError, CodeCourierError, CommandExitError, NotFoundError, SandboxGoneError, TimeoutError } from "./errors.js";
import { Sandbox, createSandbox, listSandboxes, listSandboxesQuery } from "./sandbox.js";
import { deleteSnapshot, listSnapshots } from "./snapshots.js";

describe("listSandboxesQuery", () => {
  it("sends the metadata filter as metadata.KEY=VALUE, and only the fields given", () => {
    assert.equal(listSandboxesQuery({}).toString(), "");
    const query = listSandboxesQuery({ state: "paused", metadata: { user: "ann", "job.id": "a b&c" }, limit: 10, cursor: "abc" });
    assert.deepEqual([...query], [
      ["state", "paused"],
      ["metadata.user", "ann"],
      ["metadata.job.id", "a b&c"],
      ["limit", "10"],
      ["cursor", "abc"],
    ]);
    assert.equal(query.toString(), "state=paused&metadata.user=ann&metadata.job.id=a+b%26c&limit=10&cursor=abc");
  });
});

interface Seen {
  method: string;
  url: string;
  headers: IncomingMessage["headers"];
  body: string;
}

const sandboxJson = (sandboxId: string) => ({
  sandboxId,
  template: "base@1",
  state: "running",
  cpu: 1,
  memoryMB: 512,
  diskMB: 4096,
  metadata: {},
  region: "local",
  createdAt: new Date(0).toISOString(),
  timeoutAt: null,
  onTimeout: "kill",
});

/** A command answer as the server sends it: text streams, nothing truncated, unless `fields` say otherwise. */
function commandAnswer(fields: Record<string, unknown>): Record<string, unknown> {
  const stdout = typeof fields.stdout === "string" ? fields.stdout : "";
  const stderr = typeof fields.stderr === "string" ? fields.stderr : "";
  return {
    exitCode: 0,
    signal: null,
    timedOut: false,
    stdout,
    stderr,
    stdoutEncoding: "utf8",
    stderrEncoding: "utf8",
    stdoutTruncated: false,
    stderrTruncated: false,
    stdoutTotalBytes: Buffer.byteLength(stdout),
    stderrTotalBytes: Buffer.byteLength(stderr),
    ...fields,
  };
}

describe("Sandbox over HTTP (stub server)", () => {
  let server: Server;
  let url: string;
  let seen: Seen[] = [];
  /** The stub's answers to the next requests: status and JSON body (undefined: no body; status 0: no answer). */
  let answers: Array<[number, unknown]> = [];
  const options = () => ({ apiKey: "cc_test", url });

  before(async () => {
    server = createServer((request, response) => {
      const chunks: Buffer[] = [];
      request.on("data", (chunk: Buffer) => chunks.push(chunk));
      request.on("end", () => {
        seen.push({ method: request.method!, url: request.url!, headers: request.headers, body: Buffer.concat(chunks).toString("utf8") });
        const [status, body] = answers.shift() ?? [500, { error: { code: "internal", message: "stub has no answer" } }];
        if (status === 0) return; // never answers: the client must give up on its own
        if (body === undefined) response.writeHead(status).end();
        else response.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify(body));
      });
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
  });
  after(() => {
    server.closeAllConnections();
    return new Promise<void>((resolve) => server.close(() => resolve()));
  });
  beforeEach(() => {
    seen = [];
    answers = [];
  });

  it("createSandbox posts the request (no connection fields) with the key; runCommand posts cmd or argv", async () => {
    answers.push([201, sandboxJson("sb_1")]);
    const sandbox = await createSandbox({ ...options(), template: "base", env: { A: "1" }, metadata: { user: "ann" }, timeoutMs: 60_000 });
    assert.equal(sandbox.sandboxId, "sb_1");
    assert.equal(seen[0]!.method, "POST");
    assert.equal(seen[0]!.url, "/v1/sandboxes");
    assert.equal(seen[0]!.headers.authorization, "Bearer cc_test");
    assert.equal(seen[0]!.headers["content-type"], "application/json");
    assert.deepEqual(JSON.parse(seen[0]!.body), { template: "base", env: { A: "1" }, metadata: { user: "ann" }, timeoutMs: 60_000 });

    const result = commandAnswer({ exitCode: 3, stdout: "out", stderr: "boom" });
    const decoded = {
      exitCode: 3,
      signal: null,
      timedOut: false,
      stdout: "out",
      stderr: "boom",
      stdoutBytes: new TextEncoder().encode("out"),
      stderrBytes: new TextEncoder().encode("boom"),
      stdoutTruncated: false,
      stderrTruncated: false,
      stdoutTotalBytes: 3,
      stderrTotalBytes: 4,
    };
    answers.push([200, result], [200, result]);
    assert.deepEqual(await sandbox.runCommand("echo hi | wc -c", { cwd: "/tmp", env: { B: "2" }, user: "root", timeoutMs: 5000, stdin: "in" }), decoded);
    assert.deepEqual(await sandbox.runCommand(["ls", "-l", "a dir"]), decoded, "a non-zero exit is a result, not an error");
    assert.equal(seen[1]!.url, "/v1/sandboxes/sb_1/commands");
    assert.deepEqual(JSON.parse(seen[1]!.body), { cmd: "echo hi | wc -c", cwd: "/tmp", env: { B: "2" }, user: "root", timeoutMs: 5000, stdin: "in" });
    assert.deepEqual(JSON.parse(seen[2]!.body), { argv: ["ls", "-l", "a dir"] });

    answers.push([200, result]);
    await assert.rejects(sandbox.runCommand("false", { check: true }), (error: unknown) => {
      assert.ok(error instanceof CommandExitError);
      assert.equal(error.result.exitCode, 3);
      assert.match(error.message, /exited with code 3: boom/);
      return true;
    });
    answers.push([200, commandAnswer({ exitCode: null, signal: "SIGKILL", timedOut: true })]);
    await assert.rejects(sandbox.runCommand("sleep 9", { check: true, timeoutMs: 10 }), TimeoutError);
  });

  it("decodes base64 output into exact bytes (and lossy text), sends maxOutputBytes, passes on the truncation", async () => {
    answers.push([201, sandboxJson("sb_2")]);
    const sandbox = await createSandbox(options());
    const bytes = [0, 255, 254, 0x68, 0x69];
    answers.push([
      200,
      commandAnswer({
        stdout: Buffer.from(bytes).toString("base64"),
        stdoutEncoding: "base64",
        stdoutTruncated: true,
        stdoutTotalBytes: 63_000_000,
        stderr: "caf\u00e9",
      }),
    ]);
    const result = await sandbox.runCommand("head -c 63000000 /dev/zero", { maxOutputBytes: 5 });
    assert.deepEqual(JSON.parse(seen[1]!.body), { cmd: "head -c 63000000 /dev/zero", maxOutputBytes: 5 });
    assert.ok(result.stdoutBytes instanceof Uint8Array);
    assert.deepEqual([...result.stdoutBytes], bytes);
    assert.equal(result.stdout, "\0\uFFFD\uFFFDhi");
    assert.deepEqual([result.stdoutTruncated, result.stdoutTotalBytes], [true, 63_000_000]);
    assert.equal(result.stderr, "caf\u00e9");
    assert.deepEqual([...result.stderrBytes], [0x63, 0x61, 0x66, 0xc3, 0xa9], "text output's bytes are its UTF-8");
  });

  it("maps error answers: 404 → NotFoundError, 'no longer running' → SandboxGoneError", async () => {
    answers.push([200, sandboxJson("sb_x")]);
    const sandbox = await Sandbox.connect("sb_x", options());
    assert.equal(seen[0]!.url, "/v1/sandboxes/sb_x/connect");
    assert.equal(seen[0]!.headers["content-type"], undefined, "no body, no JSON content-type (Fastify refuses an empty one)");

    answers.push([404, { error: { code: "not_found", message: "no sandbox sb_x" } }]);
    await assert.rejects(sandbox.runCommand("true"), (error: unknown) => {
      assert.ok(error instanceof NotFoundError && !(error instanceof SandboxGoneError));
      assert.equal(error.status, 404);
      assert.equal(error.message, "no sandbox sb_x");
      return true;
    });
    answers.push([404, { error: { code: "not_found", message: "sandbox sb_x is no longer running" } }]);
    await assert.rejects(sandbox.info(), SandboxGoneError);
  });

  it("lifecycle calls use their routes; fork gives handles; await using kills, ignoring a sandbox already gone", async () => {
    answers.push([201, sandboxJson("sb_1")]);
    const sandbox = await createSandbox(options());
    answers.push(
      [201, { snapshotId: "snap_1" }],
      [200, { ...sandboxJson("sb_1"), state: "paused" }],
      [200, sandboxJson("sb_1")],
      [200, { ...sandboxJson("sb_1"), timeoutAt: new Date(1000).toISOString() }],
      [201, { sandboxes: [sandboxJson("sb_2"), sandboxJson("sb_3")] }],
      [204, undefined],
    );
    assert.equal(await sandbox.snapshot(), "snap_1");
    assert.equal((await sandbox.pause()).state, "paused");
    assert.equal((await sandbox.resume()).state, "running");
    assert.equal((await sandbox.setTimeout(30_000)).timeoutAt, new Date(1000).toISOString());
    const forks = await sandbox.fork(2);
    assert.deepEqual(forks.map((f) => f.sandboxId), ["sb_2", "sb_3"]);
    await forks[0]!.kill();
    assert.deepEqual(
      seen.slice(1).map((s) => `${s.method} ${s.url} ${s.body}`),
      [
        "POST /v1/sandboxes/sb_1/snapshot ",
        "POST /v1/sandboxes/sb_1/pause ",
        "POST /v1/sandboxes/sb_1/resume ",
        'POST /v1/sandboxes/sb_1/timeout {"timeoutMs":30000}',
        'POST /v1/sandboxes/sb_1/fork {"count":2}',
        "DELETE /v1/sandboxes/sb_2 ",
      ],
    );

    seen = [];
    answers.push([201, sandboxJson("sb_4")], [204, undefined], [201, sandboxJson("sb_5")], [404, { error: { code: "not_found", message: "no sandbox sb_5" } }]);
    {
      await using scoped = await createSandbox(options());
      assert.equal(scoped.sandboxId, "sb_4");
    }
    {
      await using gone = await createSandbox(options());
      assert.equal(gone.sandboxId, "sb_5");
    }
    assert.deepEqual(seen.map((s) => `${s.method} ${s.url}`), ["POST /v1/sandboxes", "DELETE /v1/sandboxes/sb_4", "POST /v1/sandboxes", "DELETE /v1/sandboxes/sb_5"]);

    seen = [];
    const policy = { internet: false, allow: ["example.com"], deny: [] };
    answers.push([200, policy], [200, { port: 8080, public: false, url: "http://127.0.0.1:41000/", token: "t" }]);
    assert.deepEqual(await sandbox.network.allow("example.com"), policy);
    assert.equal((await sandbox.network.expose(8080)).token, "t");
    assert.deepEqual(seen.map((s) => `${s.method} ${s.url}`), ["POST /v1/sandboxes/sb_1/network/policy", "POST /v1/sandboxes/sb_1/network/exposed"]);
  });

  it("lists sandboxes and snapshots and deletes snapshots", async () => {
    answers.push([200, { sandboxes: [sandboxJson("sb_1")], nextCursor: "c2" }], [200, { snapshots: [{ snapshotId: "snap_1", sandboxId: "sb_1", createdAt: "t" }] }], [204, undefined]);
    const page = await listSandboxes({ metadata: { user: "ann" }, limit: 1 }, options());
    assert.deepEqual(page, { sandboxes: [sandboxJson("sb_1")], nextCursor: "c2" });
    assert.deepEqual(await listSnapshots(options()), [{ snapshotId: "snap_1", sandboxId: "sb_1", createdAt: "t" }]);
    await deleteSnapshot("snap_1", options());
    assert.deepEqual(seen.map((s) => `${s.method} ${s.url}`), ["GET /v1/sandboxes?metadata.user=ann&limit=1", "GET /v1/snapshots", "DELETE /v1/snapshots/snap_1"]);
  });

  it("reports a server it cannot reach as code unavailable, and a missing key before any request", async () => {
    const closed = createServer();
    await new Promise<void>((resolve) => closed.listen(0, "127.0.0.1", resolve));
    const port = (closed.address() as AddressInfo).port;
    await new Promise<void>((resolve) => closed.close(() => resolve()));
    await assert.rejects(listSnapshots({ apiKey: "cc_test", url: `http://127.0.0.1:${port}` }), (error: unknown) => {
      assert.ok(error instanceof CodeCourierError);
      assert.equal(error.code, "unavailable");
      assert.equal(error.status, undefined);
      assert.match(error.message, /cannot reach the CodeCourier server at http:\/\/127\.0\.0\.1:\d+: fetch failed/);
      return true;
    });
    const saved = process.env.CODECOURIER_API_KEY;
    delete process.env.CODECOURIER_API_KEY;
    try {
      await assert.rejects(createSandbox({ url }), AuthError);
      assert.equal(seen.length, 0);
    } finally {
      if (saved !== undefined) process.env.CODECOURIER_API_KEY = saved;
    }
  });

  it("turns a timeout signal into TimeoutError and keeps a caller's abort as its AbortError", async () => {
    answers.push([201, sandboxJson("sb_1")]);
    const sandbox = await createSandbox(options());
    const aborted = new AbortController();
    aborted.abort();
    await assert.rejects(sandbox.info({ signal: aborted.signal }), (error: unknown) => (error as Error).name === "AbortError");
    answers.push([0, undefined]);
    await assert.rejects(sandbox.info({ signal: AbortSignal.timeout(50) }), (error: unknown) => {
      assert.ok(error instanceof TimeoutError);
      assert.equal(error.code, "timeout");
      return true;
    });
  });
});
