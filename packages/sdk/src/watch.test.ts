// The wire format of files.watch, against a stub server on a real local socket (no VMs): readiness, the events in
// order, the stream's own lines (heartbeat, error), and that closing ends the request.
import assert from "node:assert/strict";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, it } from "node:test";
import { CodeCourierError, NotFoundError, SandboxGoneError, TimeoutError } from "./errors.js";
import { Sandbox } from "./sandbox.js";
import type { WatchEvent } from "./watch.js";

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** What the stub does with a watch request; it gets the request, the response and a way to write lines. */
type Script = (request: IncomingMessage, response: ServerResponse, line: (value: unknown) => void) => void;

describe("files.watch over HTTP (stub server)", () => {
  let server: Server;
  let url: string;
  let script: Script;
  const requests: IncomingMessage[] = [];

  before(async () => {
    server = createServer((request, response) => {
      if (request.url?.startsWith("/v1/sandboxes/sb-1/files/watch")) {
        requests.push(request);
        return script(request, response, (value) => response.write(`${JSON.stringify(value)}\n`));
      }
      response.writeHead(200, { "content-type": "application/json" });
      response.end(JSON.stringify({ sandboxId: "sb-1" }));
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  after(() => new Promise((resolve) => server.close(resolve)));

  const sandbox = () => Sandbox.connect("sb-1", { apiKey: "cc_test", url });
  const streaming = (response: ServerResponse) => response.writeHead(200, { "content-type": "application/x-ndjson" });
  const closed = (request: IncomingMessage) => new Promise<void>((resolve) => (request.destroyed ? resolve() : request.once("close", () => resolve())));

  it("resolves only once the server is watching, then delivers the events in order, skipping heartbeats", async () => {
    const events: WatchEvent[] = [];
    let readySent = false;
    script = (_request, response, line) => {
      streaming(response);
      response.write("\n");
      setTimeout(() => {
        readySent = true;
        line({ type: "ready" });
        line({ type: "create", path: "/root/a", isDirectory: true });
        response.write("\n");
        line({ type: "rename", path: "/root/c", oldPath: "/root/b", isDirectory: false });
      }, 150);
    };
    const watch = await (await sandbox()).files.watch("a dir", { recursive: true }, (event) => events.push(event));
    assert.equal(readySent, true, "watch() resolved before the ready line");
    const request = requests.at(-1)!;
    assert.equal(request.method, "GET");
    assert.equal(request.url, "/v1/sandboxes/sb-1/files/watch?path=a+dir&recursive=true");
    assert.equal(request.headers.authorization, "Bearer cc_test");
    while (events.length < 2) await sleep(10);
    assert.deepEqual(events, [
      { type: "create", path: "/root/a", isDirectory: true },
      { type: "rename", path: "/root/c", oldPath: "/root/b", isDirectory: false },
    ]);
    await watch.close();
    await closed(request);
    await watch.done;
  });

  it("ends the request when disposed with await using", async () => {
    script = (_request, response, line) => {
      streaming(response);
      line({ type: "ready" });
    };
    {
      await using watch = await (await sandbox()).files.watch("/x", () => {});
      assert.ok(watch);
    }
    await closed(requests.at(-1)!);
    assert.equal(new URL(requests.at(-1)!.url!, url).searchParams.get("recursive"), "false");
  });

  it("settles done when the server ends the stream (the watched path went away)", async () => {
    script = (_request, response, line) => {
      streaming(response);
      line({ type: "ready" });
      line({ type: "remove", path: "/root/x", isDirectory: true });
      response.end();
    };
    const events: WatchEvent[] = [];
    const watch = await (await sandbox()).files.watch("x", {}, (event) => events.push(event));
    await watch.done;
    assert.deepEqual(events, [{ type: "remove", path: "/root/x", isDirectory: true }]);
  });

  it("rejects done with the typed error of the server's error line", async () => {
    script = (_request, response, line) => {
      streaming(response);
      line({ type: "ready" });
      line({ type: "error", status: 404, error: { code: "sandbox_gone", message: "sandbox sb-1 has ended" } });
      response.end();
    };
    const watch = await (await sandbox()).files.watch("x", () => {});
    await assert.rejects(watch.done, SandboxGoneError);
  });

  it("stops and rejects done with what onEvent threw", async () => {
    script = (_request, response, line) => {
      streaming(response);
      line({ type: "ready" });
      line({ type: "write", path: "/root/f", isDirectory: false });
    };
    const watch = await (await sandbox()).files.watch("f", () => {
      throw new Error("handler failed");
    });
    await assert.rejects(watch.done, /handler failed/);
    await closed(requests.at(-1)!);
  });

  it("turns an error answer into its typed error, and a stream that ends before ready into one too", async () => {
    script = (_request, response) => {
      response.writeHead(404, { "content-type": "application/json" });
      response.end(JSON.stringify({ error: { code: "not_found", message: "in the sandbox: no such file" } }));
    };
    await assert.rejects((await sandbox()).files.watch("nope", () => {}), NotFoundError);
    script = (_request, response) => {
      streaming(response);
      response.end();
    };
    await assert.rejects((await sandbox()).files.watch("x", () => {}), (error: unknown) => error instanceof CodeCourierError && /ended before it started/.test(error.message));
  });

  it("gives up when the caller's signal times out before the server is watching; aborted later, it closes", async () => {
    script = (_request, response) => {
      streaming(response);
      response.flushHeaders(); // headers out, the ready line never comes
    };
    await assert.rejects((await sandbox()).files.watch("x", { signal: AbortSignal.timeout(100) }, () => {}), TimeoutError);
    await closed(requests.at(-1)!);

    script = (_request, response, line) => {
      streaming(response);
      line({ type: "ready" });
    };
    const controller = new AbortController();
    const watch = await (await sandbox()).files.watch("x", { signal: controller.signal }, () => {});
    controller.abort();
    await watch.done;
    await closed(requests.at(-1)!);
  });
});
