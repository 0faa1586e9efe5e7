import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { PassThrough, Duplex } from "node:stream";
import { describe, it } from "node:test";
import {
  AGENT_HANDSHAKE_LIMITS,
  AGENT_HELLO_PREFIX,
  AGENT_READY_PREFIX,
  AgentHandshakeError,
  HandshakeLineScanner,
  helloLine,
  performHostHandshake,
  readyLine,
  startsWithHello,
} from "./agent-handshake.js";
import { AGENT_LIMITS } from "./agent.js";

const nonce = () => randomBytes(AGENT_HANDSHAKE_LIMITS.nonceBytes).toString("hex");
const http2Preface = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");

/** Feeds `bytes` to a fresh hello scanner in pieces of `pieceSize`, returning the first line found. */
function scanInPieces(bytes: Buffer, pieceSize: number, scanner = new HandshakeLineScanner(AGENT_HELLO_PREFIX)) {
  for (let offset = 0; offset < bytes.length; offset += pieceSize) {
    const line = scanner.push(bytes.subarray(offset, offset + pieceSize));
    if (line !== undefined) {
      // What followed the line in later pieces belongs to HTTP/2 as well.
      return { ...line, rest: Buffer.concat([line.rest, bytes.subarray(offset + pieceSize)]), scanner };
    }
  }
  return undefined;
}

describe("handshake line scanner", () => {
  it("finds a hello at the very start and returns the bytes after it", () => {
    const id = nonce();
    const found = scanInPieces(Buffer.concat([helloLine(id), http2Preface]), 1 << 20);
    assert.equal(found?.nonce, id);
    assert.deepEqual(found?.rest, http2Preface);
    assert.equal(found?.scanner.skippedBytes, 0);
  });

  it("skips junk and a stale partial HTTP/2 frame before the hello, whatever the split", () => {
    const id = nonce();
    // A frame header announcing 16 KiB followed by only part of its payload: what a host that left mid-frame leaves.
    const staleFrame = Buffer.concat([Buffer.from([0x00, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01]), randomBytes(700)]);
    const junk = Buffer.concat([randomBytes(3000), Buffer.from("CCHEL"), staleFrame, Buffer.from("CCHELLO1 "), randomBytes(10)]);
    const stream = Buffer.concat([junk, helloLine(id), http2Preface]);
    for (const pieceSize of [1, 2, 7, 64, 4096, stream.length]) {
      const found = scanInPieces(stream, pieceSize);
      assert.equal(found?.nonce, id, `piece size ${pieceSize}`);
      assert.deepEqual(found?.rest, http2Preface, `piece size ${pieceSize}`);
      assert.equal(found?.scanner.skippedBytes, junk.length, `piece size ${pieceSize}`);
    }
  });

  it("rejects malformed candidates: bad nonce, too long, uppercase, no newline within the limit", () => {
    const id = nonce();
    const candidates = [
      `CCHELLO1 ${"g".repeat(32)}\n`,
      `CCHELLO1 ${id}0\n`,
      `CCHELLO1 ${id.slice(1)}\n`,
      `CCHELLO1 ${id.toUpperCase()}\n`,
      `CCHELLO1 ${"a".repeat(200)}`,
      "CCHELLO1 \n",
    ];
    for (const candidate of candidates) {
      const found = scanInPieces(Buffer.concat([Buffer.from(candidate, "latin1"), helloLine(id)]), 5);
      assert.equal(found?.nonce, id, JSON.stringify(candidate));
      assert.equal(found?.rest.length, 0);
    }
  });

  it("keeps bounded memory on endless junk and never finds a line in it", () => {
    const scanner = new HandshakeLineScanner(AGENT_HELLO_PREFIX);
    for (let i = 0; i < 200; i++) {
      // Junk that keeps offering prefix candidates that never complete.
      assert.equal(scanner.push(Buffer.concat([randomBytes(4096), Buffer.from("CCHELLO1 " + "f".repeat(40))])), undefined);
    }
    assert.ok(scanner.skippedBytes > 200 * 4096);
  });

  it("on the host's side accepts only the echo of its own nonce", () => {
    const mine = nonce();
    const scanner = new HandshakeLineScanner(AGENT_READY_PREFIX, mine);
    assert.equal(scanner.push(readyLine(nonce())), undefined, "someone else's nonce");
    assert.equal(scanner.push(helloLine(mine)), undefined, "a hello is not a ready line");
    const found = scanner.push(Buffer.concat([readyLine(mine), Buffer.from("frames")]));
    assert.equal(found?.nonce, mine);
    assert.equal(found?.rest.toString(), "frames");
    assert.throws(() => scanner.push(Buffer.from("more")), /already found/);
  });

  it("tells a hello from an HTTP/2 frame at a frame boundary", () => {
    assert.ok(startsWithHello(helloLine(nonce())));
    assert.ok(startsWithHello(Buffer.from("CCH")), "a prefix of the hello");
    assert.ok(!startsWithHello(http2Preface));
    assert.ok(!startsWithHello(Buffer.alloc(0)));
    // The hello's first three bytes as a frame length: far above any frame size limit.
    assert.ok(AGENT_HELLO_PREFIX.readUIntBE(0, 3) > AGENT_LIMITS.maxFrameSize);
    assert.throws(() => helloLine("not hex"), RangeError);
  });
});

/** The agent's end of a loopback: `agentSide` sees what the host writes and answers through `toHost`. */
function loopback(): { host: Duplex; toHost: PassThrough; fromHost: PassThrough } {
  const toHost = new PassThrough();
  const fromHost = new PassThrough();
  const host = Duplex.from({ readable: toHost, writable: fromHost });
  host.on("error", () => {}); // destroying a duplexified pair reports an AbortError
  return { host, toHost, fromHost };
}

describe("host handshake over a stream", () => {
  it("discards stale bytes before the echo and leaves the bytes after it to be read next", async () => {
    const { host, toHost, fromHost } = loopback();
    const id = nonce();
    const handshake = performHostHandshake(host, id, 5000);
    const hello = await new Promise<Buffer>((resolve) => fromHost.once("data", resolve));
    assert.deepEqual(hello, helloLine(id));
    toHost.write(Buffer.concat([randomBytes(5000), readyLine(nonce())]));
    toHost.write(Buffer.concat([readyLine(id), Buffer.from("first frame")]));
    await handshake;
    // Paused, with nothing lost: whoever reads next resumes it.
    const next = new Promise<Buffer>((resolve) => host.once("data", resolve));
    host.resume();
    assert.equal((await next).toString(), "first frame");
    host.destroy();
  });

  it("fails typed on timeout, on close and on a flood", async () => {
    const silent = loopback();
    await assert.rejects(performHostHandshake(silent.host, nonce(), 50), (error: unknown) => error instanceof AgentHandshakeError && error.reason === "timeout");
    silent.host.destroy();

    const closing = loopback();
    const closed = performHostHandshake(closing.host, nonce(), 5000);
    closing.host.destroy();
    await assert.rejects(closed, (error: unknown) => error instanceof AgentHandshakeError && error.reason === "closed");

    const flooding = loopback();
    const flooded = performHostHandshake(flooding.host, nonce(), 30_000);
    const chunk = Buffer.alloc(1024 * 1024, 0x41);
    for (let i = 0; i <= AGENT_HANDSHAKE_LIMITS.maxSkippedBytes / chunk.length; i++) flooding.toHost.write(chunk);
    await assert.rejects(flooded, (error: unknown) => error instanceof AgentHandshakeError && error.reason === "flooded");
    flooding.host.destroy();
  });
});
