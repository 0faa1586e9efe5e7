// The chunked upload's pure logic: how data is cut into pieces, and how a failed chunk resumes from what the
// server holds. The server here is an in-memory model of the upload routes; the real ones are exercised against
// VMs in packages/engine/src/server/files-api.test.ts.
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { describe, it } from "node:test";
import type { ApiFileStat, StartUploadRequest } from "@codecourier/protocol/api";
import { CodeCourierError, ConflictError, NotFoundError } from "./errors.js";
import { ByteSource, UPLOAD_CHUNK_BYTES, uploadInChunks, type UploadRoutes, type UploadState } from "./uploads.js";

const sha256 = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex");

/** A stream that delivers `data` in pieces of `pieceBytes`, counting how far it has been read. */
function streamOf(data: Uint8Array, pieceBytes: number) {
  const progress = { delivered: 0, cancelled: false };
  const stream = new ReadableStream<Uint8Array>({
    pull(controller) {
      if (progress.delivered >= data.length) return controller.close();
      controller.enqueue(data.slice(progress.delivered, progress.delivered + pieceBytes));
      progress.delivered += pieceBytes;
    },
    cancel() {
      progress.cancelled = true;
    },
  });
  return { stream, progress };
}

describe("ByteSource", () => {
  it("reads bytes, Blobs and streams in pieces of at most the size asked, short only at the end", async () => {
    const data = randomBytes(100_000);
    for (const make of [() => ByteSource.of(data), () => ByteSource.of(new Blob([data])), () => ByteSource.of(streamOf(data, 7_000).stream)]) {
      const source = make();
      const pieces: Uint8Array[] = [];
      for (;;) {
        const piece = await source.read(30_000);
        if (piece.length === 0) break;
        pieces.push(piece);
      }
      assert.deepEqual(pieces.map((p) => p.length), [30_000, 30_000, 30_000, 10_000]);
      assert.equal(sha256(Buffer.concat(pieces)), sha256(data));
      assert.equal((await source.read(10)).length, 0, "nothing after the end");
    }
    assert.equal(ByteSource.of(data).size, 100_000);
    assert.equal(ByteSource.of(streamOf(data, 7_000).stream).size, undefined);
  });

  it("reads a stream only as far as asked, and serves what was given back before the rest", async () => {
    const data = randomBytes(50_000);
    const { stream, progress } = streamOf(data, 10_000);
    const source = ByteSource.of(stream);
    const head = await source.read(25_000);
    // Three pieces cover 25,000 bytes; the stream's own queue pulls one more ahead.
    assert.ok(progress.delivered <= 40_000, `read ${progress.delivered} bytes for 25,000`);
    source.unread(head);
    const first = await source.read(40_000);
    assert.equal(first.length, 40_000, "what was given back is topped up from the stream");
    const rest = await source.read(40_000);
    assert.equal(sha256(Buffer.concat([first, rest])), sha256(data));
  });

  it("skips what a resumed upload holds, and refuses to skip past the end", async () => {
    const data = randomBytes(10_000);
    const source = ByteSource.of(streamOf(data, 3_000).stream);
    await source.skip(4_500);
    assert.deepEqual(await source.read(10_000), new Uint8Array(data.subarray(4_500)));
    await assert.rejects(ByteSource.of(data).skip(10_001), { code: "bad_request", message: /more than the data/ });
  });

  it("cancels a stream that is not read to its end", async () => {
    const { stream, progress } = streamOf(randomBytes(100_000), 10_000);
    const source = ByteSource.of(stream);
    await source.read(10_000);
    await source.cancel();
    assert.equal(progress.cancelled, true);
  });
});

/** The upload routes' behaviour, in memory, with failures injected per call. */
class UploadServer implements UploadRoutes {
  readonly uploads = new Map<string, { path: string; data: Uint8Array; completed: boolean }>();
  readonly calls: string[] = [];
  /** Called before each append; may store part of the chunk and throw, as a connection lost mid-chunk does. */
  failAppend: (attempt: { offset: number; chunk: Uint8Array; call: number }) => { storeBytes?: number; error?: Error } = () => ({});
  #appendCalls = 0;

  async start(request: StartUploadRequest): Promise<UploadState> {
    const uploadId = `up_${this.uploads.size + 1}`;
    this.uploads.set(uploadId, { path: `/root/${request.path}`, data: new Uint8Array(0), completed: false });
    this.calls.push("start");
    return this.status(uploadId);
  }

  async status(uploadId: string): Promise<UploadState> {
    const upload = this.uploads.get(uploadId);
    if (!upload) throw new NotFoundError(`no upload ${uploadId}`);
    this.calls.push(`status ${upload.data.length}`);
    return { uploadId, path: upload.path, received: upload.data.length };
  }

  async append(uploadId: string, offset: number, chunk: Uint8Array): Promise<UploadState> {
    const upload = this.uploads.get(uploadId)!;
    this.calls.push(`append ${offset}+${chunk.length}`);
    if (offset !== upload.data.length) throw new ConflictError(`expected offset ${upload.data.length}`, { status: 409 });
    const { storeBytes = chunk.length, error } = this.failAppend({ offset, chunk, call: ++this.#appendCalls });
    upload.data = new Uint8Array(Buffer.concat([upload.data, chunk.subarray(0, storeBytes)]));
    if (error) throw error;
    return { uploadId, path: upload.path, received: upload.data.length };
  }

  async complete(uploadId: string, size: number): Promise<ApiFileStat> {
    const upload = this.uploads.get(uploadId)!;
    assert.equal(size, upload.data.length, "completed with the size the server holds");
    upload.completed = true;
    this.calls.push("complete");
    return { path: upload.path, type: "file", size, mode: 0o644, mtimeMs: 0 };
  }
}

const lostConnection = () => new CodeCourierError("cannot reach the CodeCourier server", { code: "unavailable" });

describe("uploadInChunks", () => {
  const data = randomBytes(2 * UPLOAD_CHUNK_BYTES + 12_345);

  it("sends chunks in order and completes with the whole size", async () => {
    const server = new UploadServer();
    const progress: number[] = [];
    const stat = await uploadInChunks(server, "big.bin", ByteSource.of(data), { onProgress: (p) => progress.push(p.received) });
    assert.equal(stat.size, data.length);
    assert.deepEqual(progress, [UPLOAD_CHUNK_BYTES, 2 * UPLOAD_CHUNK_BYTES, data.length]);
    assert.equal(sha256(server.uploads.get("up_1")!.data), sha256(data));
    assert.deepEqual(server.calls, ["start", "status 0", `append 0+${UPLOAD_CHUNK_BYTES}`, `append ${UPLOAD_CHUNK_BYTES}+${UPLOAD_CHUNK_BYTES}`, `append ${2 * UPLOAD_CHUNK_BYTES}+12345`, "complete"]);
  });

  it("resumes a chunk cut off in transit from what the server stored, and one whose answer was lost", async () => {
    const server = new UploadServer();
    server.failAppend = ({ call }) =>
      call === 2 ? { storeBytes: 1000, error: lostConnection() } : call === 4 ? { error: new CodeCourierError("bad gateway", { status: 502 }) } : {};
    const stat = await uploadInChunks(server, "big.bin", ByteSource.of(streamOf(data, 64 * 1024).stream), {});
    assert.equal(stat.size, data.length);
    assert.equal(sha256(server.uploads.get("up_1")!.data), sha256(data));
    const resumed = UPLOAD_CHUNK_BYTES + 1000;
    assert.ok(server.calls.includes(`status ${resumed}`) && server.calls.includes(`append ${resumed}+${UPLOAD_CHUNK_BYTES - 1000}`), server.calls.join(", "));
    const answerLost = server.calls.indexOf(`status ${data.length}`);
    assert.ok(answerLost > 0 && server.calls[answerLost + 1] === "complete", "a chunk stored whole is not sent again");
  });

  it("gives up after a few tries, and never retries what a retry cannot fix", async () => {
    const server = new UploadServer();
    server.failAppend = () => ({ storeBytes: 0, error: lostConnection() });
    await assert.rejects(uploadInChunks(server, "x", ByteSource.of(data), {}), { code: "unavailable" });
    assert.equal(server.calls.filter((c) => c.startsWith("append")).length, 5);

    const refusing = new UploadServer();
    refusing.failAppend = () => ({ storeBytes: 0, error: new CodeCourierError("in the sandbox: no space left", { status: 400, code: "bad_request" }) });
    await assert.rejects(uploadInChunks(refusing, "x", ByteSource.of(data), {}), { code: "bad_request" });
    assert.equal(refusing.calls.filter((c) => c.startsWith("append")).length, 1);
  });

  it("continues an upload by id, skipping the bytes it holds", async () => {
    const server = new UploadServer();
    server.failAppend = ({ call }) => (call === 2 ? { storeBytes: 0, error: new Error("the caller's own failure") } : {});
    const ids: string[] = [];
    await assert.rejects(uploadInChunks(server, "big.bin", ByteSource.of(data), { onProgress: (p) => ids.push(p.uploadId) }), /caller's own/);
    assert.equal(server.uploads.get("up_1")!.data.length, UPLOAD_CHUNK_BYTES);
    const { stream, progress } = streamOf(data, 64 * 1024);
    const stat = await uploadInChunks(server, "big.bin", ByteSource.of(stream), { uploadId: ids[0] });
    assert.equal(stat.size, data.length);
    assert.equal(sha256(server.uploads.get("up_1")!.data), sha256(data));
    assert.equal(progress.delivered >= data.length, true);
    assert.equal(server.calls.filter((c) => c === "start").length, 1, "no second upload was started");
  });
});
