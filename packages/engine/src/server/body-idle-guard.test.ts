// The body idle guard on real streams: a silent client fails the body, a slow reader (backpressure) does not.
import assert from "node:assert/strict";
import { PassThrough } from "node:stream";
import { after, before, describe, it } from "node:test";
import { guardBodyIdle, RequestBodyIdleError } from "./body-idle-guard.js";

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const IDLE_MS = 150;

describe("guardBodyIdle", () => {
  // The guard's timer is unref'd (in a server the request's socket keeps the process up); here this does.
  let keepAlive: NodeJS.Timeout;
  before(() => (keepAlive = setInterval(() => {}, 1000)));
  after(() => clearInterval(keepAlive));

  it("passes a body through whole and counts its bytes", async () => {
    const source = new PassThrough();
    const guarded = guardBodyIdle(source, IDLE_MS);
    source.end("hello body");
    const chunks: Buffer[] = [];
    for await (const chunk of guarded) chunks.push(chunk as Buffer);
    assert.equal(Buffer.concat(chunks).toString(), "hello body");
    assert.equal(guarded.receivedEncodedLength, 10);
  });

  it("fails with a 408 once the client sends nothing while the reader waits", async () => {
    const source = new PassThrough();
    const guarded = guardBodyIdle(source, IDLE_MS);
    source.write("a bit");
    const read = (async () => {
      for await (const _chunk of guarded); // eslint-disable-line @typescript-eslint/no-unused-vars
    })();
    await assert.rejects(read, (error: unknown) => error instanceof RequestBodyIdleError && error.status === 408);
    assert.equal(source.destroyed, false, "the request itself is left for the answer");
  });

  it("does not count the time the reader is not reading (backpressure), only the client's silence", async () => {
    const source = new PassThrough({ highWaterMark: 16 });
    const guarded = guardBodyIdle(source, IDLE_MS);
    // The client has sent everything but the end; the reader takes nothing for many idle periods.
    source.write(Buffer.alloc(64 * 1024, 1));
    let failed: unknown;
    guarded.once("error", (error) => (failed = error));
    await sleep(IDLE_MS * 4);
    assert.equal(failed, undefined);
    source.end();
    let total = 0;
    for await (const chunk of guarded) total += (chunk as Buffer).length;
    assert.equal(total, 64 * 1024);
  });

  it("fails a body whose client hung up (closed without an end): never taken for a whole one", async () => {
    const source = new PassThrough();
    const guarded = guardBodyIdle(source, 10_000);
    source.write("half");
    const read = (async () => {
      for await (const _chunk of guarded); // eslint-disable-line @typescript-eslint/no-unused-vars
    })();
    await sleep(20);
    source.destroy();
    await assert.rejects(read, /closed the request before its body ended/);
  });
});
