// The app's error answers on a real socket, without VMs: an unexpected error is a 500 in the API's shape and is
// logged (the counterpart of the hostile suite's "a client that hung up is not logged"); oversized headers are a 431.
import assert from "node:assert/strict";
import { connect } from "node:net";
import { after, before, describe, it } from "node:test";
import type { FastifyInstance } from "fastify";
import type { GuestImage } from "../images/guest-image.js";
import { buildApp } from "./app.js";

describe("app error answers (in-process server, real sockets)", () => {
  let app: FastifyInstance;
  let base: string;
  const logged: string[] = [];

  before(async () => {
    // An image whose id cannot be read: /health fails the way an unforeseen bug would.
    const image = {
      get id(): string {
        throw new Error("boom: /secret/host/path");
      },
    } as unknown as GuestImage;
    app = buildApp({ accel: { accel: "tcg", reason: "test" }, image, region: "test", logError: (line) => logged.push(line) });
    base = await app.listen({ host: "127.0.0.1", port: 0 });
  });
  after(() => app?.close());

  it("an unexpected error is a 500 that tells nothing internal, and is logged", async () => {
    const response = await fetch(`${base}/health`);
    assert.equal(response.status, 500);
    const body = (await response.json()) as { error: { code: string; message: string } };
    assert.equal(body.error.code, "internal");
    assert.doesNotMatch(body.error.message, /secret|boom/);
    assert.equal(logged.filter((line) => line.startsWith("unexpected error") && line.includes("boom")).length, 1, logged.join("\n"));
  });

  it("headers too large are a 431 in the API's shape", async () => {
    const port = Number(new URL(base).port);
    const answer = await new Promise<string>((resolve, reject) => {
      const socket = connect(port, "127.0.0.1");
      let received = "";
      socket.on("data", (chunk: Buffer) => (received += chunk.toString()));
      socket.on("end", () => resolve(received));
      socket.on("error", reject);
      socket.write(`GET /health HTTP/1.1\r\nHost: x\r\nX-Padding: ${"p".repeat(64 * 1024)}\r\n\r\n`);
    });
    assert.match(answer, /^HTTP\/1\.1 431 /);
    assert.equal(JSON.parse(answer.split("\r\n\r\n")[1]!).error.code, "headers_too_large");
  });
});
