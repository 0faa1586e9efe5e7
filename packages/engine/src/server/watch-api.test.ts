// File watching through the whole stack: SDK → HTTP → server → agent → guest-watch in a real VM, and back. One
// server, one sandbox for the whole file.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { Sandbox, WatchEvent } from "@codecourier/sdk";
import { startLocalServer, withServerLog, type LocalServer } from "../testing/local-server.js";

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Waits until `done` holds for the events seen so far; fails after `timeoutMs` showing them. */
async function until(events: WatchEvent[], done: (events: WatchEvent[]) => boolean, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!done(events)) {
    if (Date.now() > deadline) assert.fail(`expected events did not arrive; saw ${JSON.stringify(events, null, 1)}`);
    await sleep(20);
  }
}

const has = (events: WatchEvent[], expected: Partial<WatchEvent>) =>
  events.some((event) => Object.entries(expected).every(([key, value]) => (event as Record<string, unknown>)[key] === value));

describe("file watch API (real server, real VM)", () => {
  let server: LocalServer;
  let base: string;
  let key: string;
  let otherTenantKey: string;
  let sandbox: Sandbox;
  let sdk: typeof import("@codecourier/sdk");

  /** How many guest-watch helpers run in the sandbox (read from the guest's /proc by a command). */
  const helpersInGuest = async () => {
    const result = await sandbox.runCommand("cat /proc/[0-9]*/comm 2>/dev/null | grep -c '^guest-watch$' || true", { check: true });
    return Number(result.stdout.trim());
  };
  const helpersGone = async () => {
    const deadline = Date.now() + 20_000;
    while ((await helpersInGuest()) !== 0) {
      assert.ok(Date.now() < deadline, "the guest's watch outlived its client");
      await sleep(200);
    }
  };

  before(async () => {
    server = await startLocalServer({ prefix: "ccwatch-" });
    base = server.url;
    key = await server.createKey("watch-test");
    otherTenantKey = await server.createKey("other-team");
    sdk = await import("@codecourier/sdk");
    sandbox = await withServerLog(server, () => sdk.createSandbox({ url: base, apiKey: key }));
  });

  after(async () => {
    await sandbox?.kill().catch(() => {});
    await server?.stop();
  });

  it("a recursive watch sees nested creates made by a command and the SDK's writes; close ends it in the guest", async () => {
    await sandbox.runCommand("mkdir -p proj", { check: true });
    const events: WatchEvent[] = [];
    const watch = await sandbox.files.watch("proj", { recursive: true }, (event) => events.push(event));
    assert.equal(await helpersInGuest(), 1, "one helper watches in the guest");

    await sandbox.runCommand("mkdir -p proj/a/b/c && touch proj/a/b/c/f && echo hi > 'proj/a/with space'", { check: true });
    await until(events, (seen) => has(seen, { type: "write", path: "/root/proj/a/with space" }) && has(seen, { type: "create", path: "/root/proj/a/b/c/f" }));
    for (const dir of ["a", "a/b", "a/b/c"]) assert.ok(has(events, { type: "create", path: `/root/proj/${dir}`, isDirectory: true }), dir);

    // The files API writes atomically: its temporary file is renamed onto the name.
    await sandbox.files.write("proj/a/b/c/written.txt", "content");
    await until(events, (seen) => has(seen, { type: "rename", path: "/root/proj/a/b/c/written.txt", isDirectory: false }));

    await watch.close();
    await watch.done;
    await helpersGone();
    const count = events.length;
    await sandbox.runCommand("touch proj/after-close", { check: true });
    await sleep(500);
    assert.equal(events.length, count, "nothing is delivered after close");
  });

  it("a client that just goes away ends the watch in the guest too", async () => {
    const controller = new AbortController();
    const response = await fetch(`${base}/v1/sandboxes/${sandbox.sandboxId}/files/watch?path=/root&recursive=false`, {
      headers: { authorization: `Bearer ${key}` },
      signal: controller.signal,
    });
    assert.equal(response.status, 200);
    assert.equal(response.headers.get("content-type"), "application/x-ndjson");
    const reader = response.body!.getReader();
    const { value } = await reader.read();
    assert.equal(new TextDecoder().decode(value), '{"type":"ready"}\n');
    assert.equal(await helpersInGuest(), 1);
    controller.abort();
    await helpersGone();
  });

  it("another tenant's sandbox is a 404, and so is a missing path", async () => {
    const other = await fetch(`${base}/v1/sandboxes/${sandbox.sandboxId}/files/watch?path=/root`, { headers: { authorization: `Bearer ${otherTenantKey}` } });
    assert.equal(other.status, 404);
    assert.equal(((await other.json()) as { error: { code: string } }).error.code, "not_found");
    await assert.rejects(sandbox.files.watch("no/such/dir", () => {}), sdk.NotFoundError);
    const bad = await fetch(`${base}/v1/sandboxes/${sandbox.sandboxId}/files/watch?path=/root&recursive=maybe`, { headers: { authorization: `Bearer ${key}` } });
    assert.equal(bad.status, 400);
  });
});
