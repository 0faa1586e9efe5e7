import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import { join, dirname } from "node:path";
import { createServer } from "node:net";

const mainJs = join(dirname(fileURLToPath(import.meta.url)), "main.js");

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => (typeof address === "object" && address ? resolve(address.port) : reject(new Error("no port"))));
    });
  });
}

describe("server (npm start)", () => {
  let child: ChildProcess;
  let port: number;

  before(async () => {
    port = await freePort();
    child = spawn(process.execPath, [mainJs], { env: { ...process.env, CODECOURIER_PORT: String(port) }, stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    child.stderr!.on("data", (c: Buffer) => (stderr += c.toString()));
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`server did not start: ${stderr}`)), 120_000);
      child.stderr!.on("data", () => {
        if (stderr.includes("listening on")) {
          clearTimeout(timer);
          resolve();
        }
      });
      child.once("exit", (code) => reject(new Error(`server exited with ${code}: ${stderr}`)));
    });
  });

  after(() => {
    child.kill("SIGTERM");
  });

  it("answers GET /health without auth and reports the accelerator", async () => {
    const response = await fetch(`http://127.0.0.1:${port}/health`);
    assert.equal(response.status, 200);
    const body = (await response.json()) as { ok: boolean; accel: string; image: { kernel: string } };
    assert.equal(body.ok, true);
    assert.ok(body.accel === "kvm" || body.accel === "tcg", `accel is ${body.accel}`);
    assert.match(body.image.kernel, /^\d+\.\d+/);
  });

  it("answers 404 for unknown routes", async () => {
    const response = await fetch(`http://127.0.0.1:${port}/nope`);
    assert.equal(response.status, 404);
  });
});
