// Issue 12, item 8: the API's edges against a real server and a real VM, each tried the way a hostile tenant (or a
// careless client) would: reads of FIFOs, devices and dangling links; trickled and abandoned bodies; huge headers;
// odd Authorization spellings; /health without a key; streams that outlive their key's revocation; records of
// ended sandboxes. One server (with short timeouts set by env), two sandboxes.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { connect } from "node:net";
import { dirname, join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import Database from "better-sqlite3";
import { CONTROL_DATABASE_FILE, ControlStore } from "../control/control-store.js";
import { startLocalServer, type LocalServer } from "../testing/local-server.js";

const cliMain = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "cli", "bin", "codecourier.js");
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const BODY_IDLE_MS = 1500;
const GRACE_MS = 2000;
const RETENTION_MS = 3000;

interface Answer {
  status: number;
  body: any; // eslint-disable-line @typescript-eslint/no-explicit-any -- JSON of many shapes, checked field by field
  text: string;
}

/** Polls `check` every 200 ms until it returns a value; fails with `what` after `timeoutMs`. */
async function eventually<T>(what: string, check: () => Promise<T | undefined>, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) assert.fail(`${what}: not within ${timeoutMs} ms`);
    await sleep(200);
  }
}

/**
 * A raw HTTP/1.1 exchange on its own socket: `head` and `body` are written, then `then` runs (it may write more or
 * wait); the answer is everything the server sends until it closes the connection or `timeoutMs` passes.
 */
async function rawExchange(port: number, head: string, body: Buffer | string, timeoutMs = 30_000): Promise<{ status: number; headers: string; body: string; closedBy: "server" | "timeout" }> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, "127.0.0.1");
    let received = "";
    const timer = setTimeout(() => finish("timeout"), timeoutMs);
    const finish = (closedBy: "server" | "timeout") => {
      clearTimeout(timer);
      socket.destroy();
      const [headers = "", rest = ""] = received.split("\r\n\r\n", 2);
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(headers)?.[1] ?? 0);
      resolve({ status, headers, body: rest, closedBy });
    };
    socket.on("data", (chunk: Buffer) => (received += chunk.toString("utf8")));
    socket.on("end", () => finish("server"));
    socket.on("error", reject);
    socket.write(head);
    socket.write(body);
  });
}

/** Reads an NDJSON answer line by line into `lines`; resolves when the server ends it. */
async function readLines(response: Response, lines: string[]): Promise<void> {
  const decoder = new TextDecoder();
  let pending = "";
  for await (const chunk of response.body as unknown as AsyncIterable<Uint8Array>) {
    pending += decoder.decode(chunk, { stream: true });
    const parts = pending.split("\n");
    pending = parts.pop() ?? "";
    for (const line of parts) if (line.trim() !== "") lines.push(line);
  }
}

describe("API edges (real server, real VM; hostile suite)", () => {
  let server: LocalServer;
  let base: string;
  let port: number;
  let key: string;
  let sandboxId: string;

  const call = async (method: string, path: string, apiKey: string | undefined, body?: unknown, headers: Record<string, string> = {}): Promise<Answer> => {
    const sent: Record<string, string> = { ...headers };
    if (apiKey !== undefined) sent.authorization ??= `Bearer ${apiKey}`;
    if (body !== undefined) sent["content-type"] = "application/json";
    const response = await fetch(`${base}${path}`, { method, headers: sent, body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await response.text();
    let parsed: unknown;
    try {
      parsed = text === "" ? undefined : JSON.parse(text);
    } catch {
      parsed = undefined;
    }
    return { status: response.status, body: parsed, text };
  };
  const sh = async (apiKey: string, id: string, cmd: string) => {
    const answer = await call("POST", `/v1/sandboxes/${id}/commands`, apiKey, { cmd });
    assert.equal(answer.status, 200, answer.text);
    return answer.body as { exitCode: number; stdout: string; stderr: string };
  };
  const isApiError = (answer: Answer, status: number, code: string) => {
    assert.equal(answer.status, status, answer.text);
    assert.equal(answer.body?.error?.code, code, answer.text);
    assert.equal(typeof answer.body?.error?.message, "string", answer.text);
  };
  const withStore = async <T>(use: (store: ControlStore) => Promise<T>): Promise<T> => {
    const store = await ControlStore.openSqlite(join(server.home, CONTROL_DATABASE_FILE));
    try {
      return await use(store);
    } finally {
      await store.close();
    }
  };
  const cli = (...args: string[]) => {
    const result = spawnSync(process.execPath, [cliMain, ...args], { env: { ...process.env, CODECOURIER_HOME: server.home }, encoding: "utf8" });
    assert.equal(result.status, 0, `codecourier ${args.join(" ")}: ${result.stderr}`);
    return result.stdout;
  };

  before(async () => {
    server = await startLocalServer({
      prefix: "ccedges-",
      env: {
        CODECOURIER_BODY_IDLE_TIMEOUT_MS: String(BODY_IDLE_MS),
        CODECOURIER_REVOKED_TENANT_GRACE_MS: String(GRACE_MS),
        CODECOURIER_ENDED_SANDBOX_RETENTION_MS: String(RETENTION_MS),
        CODECOURIER_HOUSEKEEPING_INTERVAL_MS: "500",
      },
    });
    base = server.url;
    port = Number(new URL(base).port);
    key = await server.createKey("edges");
    const created = await call("POST", "/v1/sandboxes", key, { template: "base" });
    assert.equal(created.status, 201, `${created.text}\n${server.log()}`);
    sandboxId = created.body.sandboxId;
  });

  after(async () => {
    if (sandboxId) await call("DELETE", `/v1/sandboxes/${sandboxId}`, key).catch(() => {});
    await server?.stop();
  });

  it("reading a FIFO, a device or a dangling symlink is a 400/404 in the API's shape, not a 500; a good symlink reads", async () => {
    await sh(key, sandboxId, "mkfifo /root/fifo && ln -s /nonexistent /root/dangling && printf linked > /root/target && ln -s /root/target /root/good-link");
    const read = (path: string) => call("GET", `/v1/sandboxes/${sandboxId}/files/content?path=${encodeURIComponent(path)}`, key);
    isApiError(await read("/root/fifo"), 400, "bad_request");
    isApiError(await read("/dev/null"), 400, "bad_request");
    isApiError(await read("/dev/zero"), 400, "bad_request");
    isApiError(await read("/root/dangling"), 404, "not_found");
    const good = await read("/root/good-link");
    assert.equal(good.status, 200);
    assert.equal(good.text, "linked");
    await sh(key, sandboxId, ": > /root/empty");
    const empty = await read("/root/empty");
    assert.equal(empty.status, 200, "an empty file is still a file");
    assert.equal(empty.text, "");
    // A symlink to a FIFO: stat says "symlink", the read itself is refused by the guest.
    await sh(key, sandboxId, "ln -s /root/fifo /root/fifo-link");
    isApiError(await read("/root/fifo-link"), 400, "bad_request");
    assert.doesNotMatch(server.log(), /unexpected error/, "the guest's refusals are not server faults");
  });

  it("a PUT body that stops sending is a 408 after the idle timeout, and the connection is closed", async () => {
    const path = "/root/trickled";
    const head =
      `PUT /v1/sandboxes/${sandboxId}/files/content?path=${encodeURIComponent(path)} HTTP/1.1\r\nHost: 127.0.0.1\r\n` +
      `Authorization: Bearer ${key}\r\nContent-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n`;
    const started = Date.now();
    const answer = await rawExchange(port, head, "x".repeat(10));
    assert.equal(answer.status, 408, JSON.stringify(answer));
    assert.equal(JSON.parse(answer.body).error.code, "request_timeout");
    assert.equal(answer.closedBy, "server", "the server closes the connection after the 408");
    assert.ok(Date.now() - started >= BODY_IDLE_MS, "not before the idle timeout");
    const write = await fetch(`${base}/v1/sandboxes/${sandboxId}/files/content?path=${encodeURIComponent(path)}`, {
      method: "PUT",
      headers: { authorization: `Bearer ${key}`, "content-type": "application/octet-stream" },
      body: "whole",
    });
    assert.equal(write.status, 200, await write.text());
  });

  it("a JSON body that stops sending is a 408 too", async () => {
    const head =
      `POST /v1/sandboxes/${sandboxId}/commands HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${key}\r\n` +
      `Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n`;
    const answer = await rawExchange(port, head, '{"cmd":"tr');
    assert.equal(answer.status, 408, JSON.stringify(answer));
    assert.equal(JSON.parse(answer.body).error.code, "request_timeout");
  });

  it("an upload chunk that stops sending is a 408 and releases the upload at once (no 409 busy afterwards)", async () => {
    const started = await call("POST", `/v1/sandboxes/${sandboxId}/files/uploads`, key, { path: "/root/uploaded" });
    assert.equal(started.status, 201, started.text);
    const uploadId: string = started.body.uploadId;
    const chunkUrl = `/v1/sandboxes/${sandboxId}/files/uploads/${uploadId}`;
    const head =
      `PUT ${chunkUrl}?offset=0 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${key}\r\n` +
      `Content-Type: application/octet-stream\r\nContent-Length: 100\r\n\r\n`;
    const answer = await rawExchange(port, head, "y".repeat(10));
    assert.equal(answer.status, 408, JSON.stringify(answer));
    const state = await call("GET", chunkUrl, key);
    assert.equal(state.status, 200, state.text);
    assert.equal(state.body.received, 0, "the cut chunk is not counted");
    const chunk = await fetch(`${base}${chunkUrl}?offset=0`, {
      method: "PUT",
      headers: { authorization: `Bearer ${key}`, "content-type": "application/octet-stream" },
      body: "z".repeat(100),
    });
    assert.equal(chunk.status, 200, `the upload is not left busy: ${await chunk.text()}`);
    const completed = await call("POST", `${chunkUrl}/complete?size=100`, key);
    assert.equal(completed.status, 200, completed.text);
    assert.equal(completed.body.size, 100);
  });

  it("a client that closes its socket mid-body is not logged as an unexpected error", async () => {
    const logBefore = server.log().length;
    for (const url of [`/v1/sandboxes/${sandboxId}/files/content?path=%2Froot%2Faborted`, `/v1/sandboxes/${sandboxId}/commands`]) {
      const socket = connect(port, "127.0.0.1");
      await new Promise<void>((resolve, reject) => socket.once("connect", resolve).once("error", reject));
      const [method, type] = url.includes("commands") ? ["POST", "application/json"] : ["PUT", "application/octet-stream"];
      socket.write(`${method} ${url} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${key}\r\nContent-Type: ${type}\r\nContent-Length: 1048576\r\n\r\n`);
      socket.write(Buffer.alloc(64 * 1024, 0x61));
      await sleep(500);
      socket.destroy();
    }
    await sleep(BODY_IDLE_MS + 1000);
    assert.doesNotMatch(server.log().slice(logBefore), /unexpected error/);
  });

  it(
    "a whole-file write whose body was cut short (408 or the client gone) leaves the old file, not the bytes that came",
    async () => {
      const write = (path: string, body: string) =>
        fetch(`${base}/v1/sandboxes/${sandboxId}/files/content?path=${encodeURIComponent(path)}`, {
          method: "PUT",
          headers: { authorization: `Bearer ${key}`, "content-type": "application/octet-stream" },
          body,
        });
      assert.equal((await write("/root/kept", "old content")).status, 200);
      const head =
        `PUT /v1/sandboxes/${sandboxId}/files/content?path=%2Froot%2Fkept HTTP/1.1\r\nHost: 127.0.0.1\r\n` +
        `Authorization: Bearer ${key}\r\nContent-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n`;
      assert.equal((await rawExchange(port, head, "cut")).status, 408);
      const read = async () => (await call("GET", `/v1/sandboxes/${sandboxId}/files/content?path=%2Froot%2Fkept`, key)).text;
      assert.equal(await read(), "old content", "after a 408");
      // The client hangs up mid-body (seen committing "cut" every time here).
      const socket = connect(port, "127.0.0.1");
      socket.on("error", () => {});
      socket.write(`${head}cut`);
      await sleep(700);
      socket.destroy();
      await sleep(1000);
      assert.equal(await read(), "old content", "after the client hung up");
    },
  );

  it("headers too large are a 431 in the API's error shape", async () => {
    const answer = await rawExchange(port, `GET /v1/sandboxes HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: ${"p".repeat(64 * 1024)}\r\n\r\n`, "");
    assert.equal(answer.status, 431, JSON.stringify(answer).slice(0, 500));
    assert.deepEqual(Object.keys(JSON.parse(answer.body)), ["error"]);
    assert.equal(JSON.parse(answer.body).error.code, "headers_too_large");
  });

  it("takes the Bearer scheme in any case, and nothing else", async () => {
    for (const scheme of ["bearer", "BEARER", "BeArEr"]) {
      assert.equal((await call("GET", "/v1/sandboxes", undefined, undefined, { authorization: `${scheme} ${key}` })).status, 200, scheme);
    }
    for (const header of [`Bearerx ${key}`, `Basic ${key}`, `Bearer`, `Bearer ${key} extra`]) {
      isApiError(await call("GET", "/v1/sandboxes", undefined, undefined, { authorization: header }), 401, "unauthorized");
    }
  });

  it("/health tells no host paths without a key (nor to a tenant's key); the admin key sees the details", async () => {
    const adminKey = await server.adminKey();
    for (const apiKey of [undefined, key]) {
      const health = await call("GET", "/health", apiKey);
      assert.equal(health.status, 200);
      assert.equal(health.body.ok, true);
      assert.equal(typeof health.body.vmLimits.enforced, "boolean");
      assert.ok(!health.text.includes(server.home), "no data dir");
      assert.doesNotMatch(health.text, /\/sys\/fs\/cgroup|\/tmp\/|\.qcow2|vmlinux|"pool"|"summary"|"reason"/, health.text);
    }
    const detailed = await call("GET", "/health", adminKey);
    assert.ok(detailed.body.vmLimits.summary ?? detailed.body.vmLimits.reason, detailed.text);
  });

  it("revoking a key ends its streams within seconds (another key's stay open); a tenant with every key revoked has its sandboxes paused after the grace period", async () => {
    const tenant = "revokee";
    const first = await withStore((store) => store.createKey(tenant));
    const second = await withStore((store) => store.createKey(tenant));
    const created = await call("POST", "/v1/sandboxes", first.apiKey, { template: "base" });
    assert.equal(created.status, 201, created.text);
    const id: string = created.body.sandboxId;
    const process = await call("POST", `/v1/sandboxes/${id}/processes`, first.apiKey, { cmd: "while true; do echo tick; sleep 1; done" });
    assert.equal(process.status, 201, process.text);
    const open = async (apiKey: string, path: string) => {
      const response = await fetch(`${base}${path}`, { headers: { authorization: `Bearer ${apiKey}` } });
      assert.equal(response.status, 200, `${path}: ${response.status}`);
      const lines: string[] = [];
      let ended = false;
      const done = readLines(response, lines).then(
        () => (ended = true),
        () => (ended = true),
      );
      return { lines, done, ended: () => ended };
    };
    const output = await open(first.apiKey, `/v1/sandboxes/${id}/processes/${process.body.pid}/output?follow=true`);
    const watch = await open(first.apiKey, `/v1/sandboxes/${id}/files/watch?path=%2Froot`);
    const secondWatch = await open(second.apiKey, `/v1/sandboxes/${id}/files/watch?path=%2Ftmp`);
    await eventually("output flowing", async () => (output.lines.length >= 2 ? true : undefined), 30_000);

    cli("keys", "revoke", first.keyId); // another process, writing control.db
    const revokedAt = Date.now();
    await Promise.race([Promise.all([output.done, watch.done]), sleep(20_000)]);
    assert.ok(output.ended() && watch.ended(), "the revoked key's streams ended");
    for (const stream of [output, watch]) {
      const last = JSON.parse(stream.lines.at(-1) ?? "{}");
      assert.equal(last.type, "error", stream.lines.at(-1));
      assert.equal(last.status, 401);
      assert.equal(last.error.code, "unauthorized");
    }
    assert.ok(Date.now() - revokedAt < 20_000);
    await sleep(1500); // a few revocation checks later
    assert.ok(!secondWatch.ended(), "a stream of the tenant's other, valid key stays open");
    isApiError(await call("GET", `/v1/sandboxes/${id}`, first.apiKey), 401, "unauthorized");

    // The tenant still has a valid key: its sandbox keeps running past the grace period.
    await sleep(GRACE_MS + 1500);
    const engineState = () => {
      const db = new Database(join(server.home, "state.db"), { readonly: true, fileMustExist: true });
      try {
        return (db.prepare("select state from sandboxes where id = ?").get(id) as { state: string } | undefined)?.state;
      } finally {
        db.close();
      }
    };
    assert.equal(engineState(), "running", "not paused while one key is valid");

    cli("keys", "revoke", second.keyId);
    await Promise.race([secondWatch.done, sleep(20_000)]);
    assert.ok(secondWatch.ended(), "the last key's stream ended too");
    await eventually("the locked-out tenant's sandbox paused", async () => (engineState() === "paused" ? true : undefined), 180_000);
    assert.match(server.log(), new RegExp(`sandbox ${id} paused: its tenant's API keys are all revoked`));
    // A new key lets the tenant back in: its sandbox is there, paused, and resumes on use.
    const third = await withStore((store) => store.createKey(tenant));
    const resumed = await call("POST", `/v1/sandboxes/${id}/connect`, third.apiKey);
    assert.equal(resumed.status, 200, resumed.text);
    assert.equal(resumed.body.state, "running");
    await call("DELETE", `/v1/sandboxes/${id}`, third.apiKey);
  });

  it("an ended sandbox answers 'stopped' for the retention period, then its records are pruned (404)", async () => {
    const created = await call("POST", "/v1/sandboxes", key, { template: "base" });
    assert.equal(created.status, 201, created.text);
    const id: string = created.body.sandboxId;
    assert.equal((await call("DELETE", `/v1/sandboxes/${id}`, key)).status, 204);
    const endedSeen = await withStore(async (store) => {
      await eventually("ended_at set", async () => ((await store.sandboxesNotEnded()).includes(id) ? undefined : true), 30_000);
      return Date.now();
    });
    const stopped = await call("GET", `/v1/sandboxes/${id}`, key);
    if (Date.now() - endedSeen < RETENTION_MS - 500) assert.equal(stopped.body.state, "stopped", stopped.text);
    await eventually("records pruned", async () => ((await call("GET", `/v1/sandboxes/${id}`, key)).status === 404 ? true : undefined), 30_000);
    const left = await withStore(async (store) => ({
      owner: await store.ownedSandbox((await store.tenantByName("edges"))!.id, id),
      network: (await store.networkConfigs()).some((c) => c.sandboxId === id),
    }));
    assert.deepEqual(left, { owner: undefined, network: false });
    assert.equal((await call("GET", `/v1/sandboxes/${sandboxId}`, key)).body.state, "running", "the live sandbox is kept");
  });

  it("logged no unexpected error through all of this", () => {
    assert.doesNotMatch(server.log(), /unexpected error/, server.log());
  });
});
