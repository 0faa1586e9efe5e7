// The files API as a disk: mkdir/remove/rename/chmod, given mtimes, deep listings, odd paths, resumable chunked
// uploads (also through a connection that breaks mid-chunk) and atomic writes under a concurrent reader. A real
// server with a real VM, one sandbox for the whole file.
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { createServer, request as httpRequest, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, it } from "node:test";
import type { Sandbox } from "@codecourier/sdk";
import { startLocalServer, withServerLog, type LocalServer } from "../testing/local-server.js";
import { numberedPieces } from "../testing/numbered-pieces.js";

const sha256 = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex");
const MiB = 1024 * 1024;

interface Answer {
  status: number;
  body: any; // eslint-disable-line @typescript-eslint/no-explicit-any -- JSON of many shapes, checked field by field
}

/**
 * A proxy in front of the server that breaks the connection of the requests `shouldCut` picks after forwarding
 * 1 MiB of their body, the way a network failure cuts an upload: neither side gets an answer.
 */
async function startBreakingProxy(target: string, shouldCut: (method: string, url: string) => boolean) {
  const cut: string[] = [];
  const server: Server = createServer((incoming, outgoing) => {
    const upstream = httpRequest(`${target}${incoming.url}`, { method: incoming.method, headers: incoming.headers }, (answer) => {
      outgoing.writeHead(answer.statusCode ?? 502, answer.headers);
      answer.pipe(outgoing);
    });
    upstream.on("error", () => outgoing.destroy());
    if (!shouldCut(incoming.method ?? "", incoming.url ?? "")) {
      incoming.pipe(upstream);
      return;
    }
    let forwarded = 0;
    incoming.on("data", (chunk: Buffer) => {
      if (forwarded >= MiB) return;
      upstream.write(chunk);
      forwarded += chunk.length;
      if (forwarded >= MiB) {
        cut.push(`${incoming.method} ${incoming.url}`);
        upstream.destroy();
        incoming.socket.destroy();
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    cut,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

describe("files API (real server, real VM)", () => {
  let server: LocalServer;
  let base: string;
  let key: string;
  let otherTenantKey: string;
  let sandbox: Sandbox;
  let sdk: typeof import("@codecourier/sdk");

  const call = async (method: string, path: string, options: { key?: string; json?: unknown; bytes?: Uint8Array; stream?: ReadableStream<Uint8Array> } = {}): Promise<Answer> => {
    const headers: Record<string, string> = { authorization: `Bearer ${options.key ?? key}` };
    const init: RequestInit & { duplex?: "half" } = { method, headers };
    if (options.json !== undefined) {
      headers["content-type"] = "application/json";
      init.body = JSON.stringify(options.json);
    } else if (options.bytes !== undefined || options.stream !== undefined) {
      headers["content-type"] = "application/octet-stream";
      init.body = (options.bytes ?? options.stream) as RequestInit["body"];
      if (options.stream) init.duplex = "half";
    }
    const response = await fetch(`${base}${path}`, init);
    const text = await response.text();
    return { status: response.status, body: text === "" ? undefined : JSON.parse(text) };
  };
  const files = (route: string) => `/v1/sandboxes/${sandbox.sandboxId}/files/${route}`;
  const shell = async (command: string) => {
    const result = await sandbox.runCommand(command);
    assert.equal(result.exitCode, 0, `${command}: ${result.stderr}`);
    return result.stdout;
  };

  before(async () => {
    server = await startLocalServer({ prefix: "ccfiles-" });
    base = server.url;
    key = await server.createKey("files-test");
    otherTenantKey = await server.createKey("other-team");
    sdk = await import("@codecourier/sdk");
    sandbox = await withServerLog(server, () => sdk.createSandbox({ url: base, apiKey: key }));
  });

  after(async () => {
    await sandbox?.kill().catch(() => {});
    await server?.stop();
  });

  it("mkdir, remove, rename and chmod, with typed errors", async () => {
    const { files: f } = sandbox;
    const made = await f.mkdir("ops/a/b/c");
    assert.deepEqual([made.path, made.type], ["/root/ops/a/b/c", "directory"]);
    assert.equal((await f.mkdir("ops/a")).type, "directory", "an existing directory is fine (mkdir -p)");
    await assert.rejects(f.mkdir("ops/a", { recursive: false }), sdk.ConflictError);
    await assert.rejects(f.mkdir("ops/missing/x", { recursive: false }), sdk.NotFoundError);

    await f.write("ops/a/b/c/file.txt", "content");
    await assert.rejects(f.remove("ops/a"), (error: Error) => error instanceof sdk.ConflictError && /not empty/.test(error.message));
    assert.equal(await f.read("ops/a/b/c/file.txt"), "content", "a refused remove removes nothing");
    await assert.rejects(f.remove("ops/nothing-here"), sdk.NotFoundError);
    await f.remove("ops/a", { recursive: true });
    assert.equal(await f.exists("ops/a"), false);

    await f.write("ops/old.txt", "old");
    await f.write("ops/new.txt", "new");
    const renamed = await f.rename("ops/new.txt", "ops/old.txt");
    assert.deepEqual([renamed.path, renamed.size], ["/root/ops/old.txt", 3]);
    assert.equal(await f.read("ops/old.txt"), "new", "rename replaces the file at the destination");
    assert.equal(await f.exists("ops/new.txt"), false);
    await assert.rejects(f.rename("ops/nope", "ops/x"), sdk.NotFoundError);

    assert.equal((await f.chmod("ops/old.txt", 0o755)).mode, 0o755);
    assert.equal((await shell("stat -c %a ops/old.txt")).trim(), "755");
    const viaOctalString = await call("POST", files("chmod"), { json: { path: "ops/old.txt", mode: "640" } });
    assert.equal(viaOctalString.status, 200, JSON.stringify(viaOctalString.body));
    assert.equal(viaOctalString.body.mode, 0o640);
    await assert.rejects(f.chmod("ops/old.txt", 0o10000), RangeError);
    for (const mode of [4096, -1, "8", "12345", 1.5]) {
      const answer = await call("POST", files("chmod"), { json: { path: "ops/old.txt", mode } });
      assert.equal(answer.status, 400, `mode ${JSON.stringify(mode)}: ${JSON.stringify(answer.body)}`);
    }
    assert.equal((await call("POST", files("mkdir"), { json: { path: "" } })).status, 400);
    assert.equal((await call("POST", files("rename"), { json: { from: "ops/old.txt" } })).status, 400);
    assert.equal((await call("POST", files("remove"), { json: { path: "ops", recursive: "yes" } })).status, 400);
    const otherTenant = await call("POST", files("mkdir"), { key: otherTenantKey, json: { path: "intruder" } });
    assert.equal(otherTenant.status, 404);
    assert.equal(await f.exists("intruder"), false);
  });

  it("keeps a given mtime through write, and stat reports it", async () => {
    const { files: f } = sandbox;
    const when = new Date("2021-03-04T05:06:07.891Z");
    const written = await f.write("dated.txt", "old times", { mtime: when });
    assert.equal(written.mtimeMs, when.getTime());
    assert.equal((await f.stat("dated.txt")).mtimeMs, when.getTime());
    assert.equal((await shell("stat -c %Y dated.txt")).trim(), String(Math.floor(when.getTime() / 1000)), "the guest sees it too");
    assert.equal((await f.write("dated.txt", "epoch", { mtime: 0, mode: 0o600 })).mtimeMs, 0);
    const listed = (await f.list("/root")).find((entry) => entry.name === "dated.txt");
    assert.deepEqual([listed?.mtimeMs, listed?.size], [0, 5]);
    await assert.rejects(f.write("dated.txt", "x", { mtime: -1 }), RangeError);
    for (const mtime of ["-1", "soon", "1.5", "253402300800000"]) {
      const answer = await call("PUT", `${files("content")}?path=dated.txt&mtime=${mtime}`, { bytes: new Uint8Array([1]) });
      assert.equal(answer.status, 400, `mtime ${mtime}: ${JSON.stringify(answer.body)}`);
    }
    assert.equal(await f.read("dated.txt"), "epoch", "refused writes changed nothing");
  });

  it("lists N levels deep with relative names, sizes and mtimes, not entering symlinked directories", async () => {
    const { files: f } = sandbox;
    await f.write("tree/a/b/deep.txt", "deep");
    await f.write("tree/a/one.txt", "1");
    await f.write("tree/top.txt", "top");
    await shell("ln -s a tree/link-to-a && ln -s / tree/a/root-link");
    const names = async (depth?: number) => (await f.list("tree", depth === undefined ? {} : { depth })).map((e) => `${e.name}:${e.type}`);
    assert.deepEqual(await names(), ["a:directory", "link-to-a:symlink", "top.txt:file"]);
    assert.deepEqual(await names(3), [
      "a:directory",
      "a/b:directory",
      "a/b/deep.txt:file",
      "a/one.txt:file",
      "a/root-link:symlink",
      "link-to-a:symlink",
      "top.txt:file",
    ]);
    const deep = await f.list("tree", { depth: 3 });
    assert.equal(deep.find((e) => e.name === "a/b/deep.txt")?.size, 4);
    assert.ok(deep.every((e) => typeof e.size === "number" && typeof e.mtimeMs === "number" && e.mtimeMs > 0));
    for (const depth of ["0", "1025", "x"]) assert.equal((await call("GET", `${files("list")}?path=tree&depth=${depth}`)).status, 400);
    const openapi = await call("GET", "/openapi.json");
    for (const route of ["mkdir", "remove", "rename", "chmod", "uploads", "uploads/{uploadId}", "uploads/{uploadId}/complete"]) {
      assert.ok(openapi.body.paths[`/v1/sandboxes/{sandboxId}/files/${route}`], `${route} is in /openapi.json`);
    }
  });

  it("resolves spaces, unicode, `..` and symlinks as the guest does", async () => {
    const { files: f } = sandbox;
    await f.mkdir("odd names/ü/../ẞtraße dir");
    assert.equal((await f.stat("/root/odd names/ẞtraße dir")).type, "directory", "`ü/..` resolved by the guest");
    await f.write("odd names/ẞtraße dir/ünï cödé.txt", "ü");
    const moved = await f.rename("odd names/ẞtraße dir/ünï cödé.txt", "odd names/ẞtraße dir/../moved 🚚.txt");
    assert.equal(moved.path, "/root/odd names/ẞtraße dir/../moved 🚚.txt");
    assert.equal((await shell("cat 'odd names/moved 🚚.txt'")), "ü");

    await shell("mkdir -p '/tmp/link target' && echo inside > '/tmp/link target/kept' && ln -s '/tmp/link target' 'odd names/link'");
    assert.deepEqual((await f.list("odd names/link")).map((e) => e.name), ["kept"], "a listed path is followed like ls does");
    assert.equal((await f.chmod("odd names/link", 0o700)).mode, 0o700);
    assert.equal((await shell("stat -c %a '/tmp/link target'")).trim(), "700", "chmod reached the link's target");
    await f.remove("odd names/link", { recursive: true });
    assert.equal(await f.exists("odd names/link"), false);
    assert.equal((await shell("cat '/tmp/link target/kept'")), "inside\n", "removing a link leaves its target");
  });

  it("an interrupted chunked upload resumes from a fresh call and arrives intact", async () => {
    const { files: f } = sandbox;
    const data = randomBytes(40 * MiB);
    const stop = new AbortController();
    const seen: Array<{ uploadId: string; received: number }> = [];
    await assert.rejects(
      f.upload("uploads/big file.bin", data, {
        signal: stop.signal,
        mode: 0o640,
        mtime: 1_600_000_000_000,
        onProgress: (progress) => {
          seen.push(progress);
          if (progress.received >= 16 * MiB) stop.abort();
        },
      }),
      { name: "AbortError" },
    );
    const uploadId = seen[0]!.uploadId;
    assert.equal(seen[0]!.received, 8 * MiB, "8 MiB chunks");
    assert.equal(await f.exists("uploads/big file.bin"), false, "nothing at the destination before completion");
    const state = await call("GET", files(`uploads/${uploadId}`));
    assert.equal(state.status, 200);
    assert.deepEqual(state.body, { uploadId, path: "/root/uploads/big file.bin", received: 16 * MiB });
    const hidden = (await f.list("uploads")).map((e) => e.name);
    assert.deepEqual(hidden, [`.big file.bin.cc-upload-${uploadId}`], "the partial data is a hidden file beside the destination");

    // The protocol's refusals: another tenant, a wrong offset, a chunk without a length, a premature completion.
    assert.equal((await call("GET", files(`uploads/${uploadId}`), { key: otherTenantKey })).status, 404);
    assert.equal((await call("GET", `/v1/sandboxes/sbx-elsewhere/files/uploads/${uploadId}`)).status, 404);
    const wrongOffset = await call("PUT", `${files(`uploads/${uploadId}`)}?offset=0`, { bytes: data.subarray(0, 1000) });
    assert.equal(wrongOffset.status, 409);
    assert.match(wrongOffset.body.error.message, new RegExp(`expected offset ${16 * MiB}`));
    const unsized = await call("PUT", `${files(`uploads/${uploadId}`)}?offset=${16 * MiB}`, { stream: new Blob([data.subarray(0, 10)]).stream() });
    assert.equal(unsized.status, 400);
    assert.match(unsized.body.error.message, /Content-Length/);
    assert.equal((await call("POST", `${files(`uploads/${uploadId}`)}/complete?size=${data.length}`)).status, 409);
    assert.equal((await call("GET", files(`uploads/${uploadId}`))).body.received, 16 * MiB, "refusals changed nothing");

    const resumedProgress: number[] = [];
    const stat = await f.upload("uploads/big file.bin", new Blob([data]), { uploadId, onProgress: (p) => resumedProgress.push(p.received) });
    assert.deepEqual(resumedProgress, [24 * MiB, 32 * MiB, 40 * MiB], "only the missing chunks were sent");
    assert.deepEqual([stat.path, stat.size, stat.mode, stat.mtimeMs], ["/root/uploads/big file.bin", data.length, 0o640, 1_600_000_000_000]);
    assert.equal((await shell("sha256sum 'uploads/big file.bin' | cut -d' ' -f1")).trim(), sha256(data));
    assert.deepEqual((await f.list("uploads")).map((e) => e.name), ["big file.bin"], "no partial file left");
    assert.equal((await call("GET", files(`uploads/${uploadId}`))).status, 404, "a completed upload is gone");

    // Aborting removes the partial data.
    const started = await call("POST", files("uploads"), { json: { path: "uploads/abandoned.bin" } });
    assert.equal(started.status, 201, JSON.stringify(started.body));
    assert.equal((await call("PUT", `${files(`uploads/${started.body.uploadId}`)}?offset=0`, { bytes: data.subarray(0, MiB) })).body.received, MiB);
    assert.equal((await call("DELETE", files(`uploads/${started.body.uploadId}`))).status, 204);
    assert.deepEqual((await f.list("uploads")).map((e) => e.name), ["big file.bin"]);
    assert.equal((await call("POST", files("uploads"), { json: { path: "uploads" } })).status, 400, "a directory is no destination");
  });

  it("write() goes in chunks past 16 MiB and resumes a chunk whose connection broke mid-way", async () => {
    const data = randomBytes(40 * MiB);
    let cutOnce = false;
    const proxy = await startBreakingProxy(base, (method, url) => {
      if (cutOnce || method !== "PUT" || !url.includes("/files/uploads/") || !url.includes(`offset=${8 * MiB}`)) return false;
      cutOnce = true;
      return true;
    });
    try {
      const viaProxy = await sdk.Sandbox.connect(sandbox.sandboxId, { url: proxy.url, apiKey: key });
      const received: number[] = [];
      const stat = await viaProxy.files.write("chunked.bin", data, { onProgress: (p) => received.push(p.received) });
      assert.equal(proxy.cut.length, 1, "the second chunk's connection was broken");
      assert.deepEqual(received, [8, 16, 24, 32, 40].map((n) => n * MiB));
      assert.equal(stat.size, data.length);
      assert.equal((await shell("sha256sum chunked.bin | cut -d' ' -f1")).trim(), sha256(data));
      assert.deepEqual((await sandbox.files.list("/root")).filter((e) => e.name.includes("cc-upload")), [], "no partial file left");
    } finally {
      await proxy.close();
    }
  });

  it("an atomic write is never seen half-written by a concurrent reader", async () => {
    const { files: f } = sandbox;
    // Distinct sizes and bytes: a torn or partial read cannot equal any of them.
    const versions = Array.from({ length: 8 }, (_, i) => new Uint8Array((256 + 64 * i) * 1024).fill(0x41 + i));
    const known = new Set(versions.map(sha256));
    await f.write("contended.bin", versions[0]!);
    let writing = true;
    let reads = 0;
    const reader = (async () => {
      while (writing) {
        const seen = await f.read("contended.bin", { format: "bytes" });
        assert.ok(known.has(sha256(seen)), `read ${seen.length} bytes that no write wrote`);
        reads++;
      }
    })();
    try {
      for (let round = 0; round < 3; round++) for (const version of versions) await f.write("contended.bin", version);
    } finally {
      writing = false;
      await reader;
    }
    assert.ok(reads >= 5, `the reader ran alongside the writes (${reads} reads)`);
    assert.equal(sha256(await f.read("contended.bin", { format: "bytes" })), sha256(versions.at(-1)!));
  });

  // ~5 min under TCG on this 2-core host (scripts/test.mjs gives each file 15 min).
  it("a 1 GiB file makes the round trip (streamed up in resumable chunks, streamed down) with equal sha256", async () => {
    const mib = 1024;
    const body = numberedPieces(mib);
    const written = await sandbox.files.write("gib.bin", body.stream);
    assert.equal(written.size, mib << 20);
    const down = createHash("sha256");
    let received = 0;
    for await (const chunk of await sandbox.files.read("gib.bin", { format: "stream" })) {
      down.update(chunk);
      received += chunk.length;
    }
    assert.equal(received, mib << 20);
    const expected = body.digest();
    assert.equal(down.digest("hex"), expected);
    assert.equal((await sandbox.runCommand("sha256sum gib.bin && rm gib.bin", { check: true })).stdout.split(" ")[0], expected, "the guest's copy too");
  });
});
