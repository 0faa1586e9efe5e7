import { createHash } from "node:crypto";
import assert from "node:assert/strict";
import { once } from "node:events";
import {
  Agent,
  createServer,
  request as httpRequest,
  type IncomingHttpHeaders,
  type IncomingMessage,
  type RequestListener,
  type Server,
} from "node:http";
import { connect, type AddressInfo, type Socket } from "node:net";
import { afterEach, describe, it } from "node:test";
import { EXPOSE_TOKEN_HEADER } from "@codecourier/protocol/network";
import { WebSocket, WebSocketServer } from "ws";
import { ExposedPort, type ExposeTarget } from "./port-exposer.js";
import { SocketBudget } from "./socket-budget.js";

const HOST = "127.0.0.1";
const TOKEN = "s3cret-token-0123456789";
/** Every test that waits on the network gets this long: a proxy that buffers or hangs fails instead of stalling. */
const TEST_TIMEOUT = { timeout: 10_000 };

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
}, TEST_TIMEOUT);

interface SeenRequest {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  body: string;
}

/** An origin http server that records each request (after reading its body) before `handle` answers it. */
async function startOrigin(
  handle: RequestListener = (_request, response) => response.end("ok"),
): Promise<{ port: number; seen: SeenRequest[] }> {
  const seen: SeenRequest[] = [];
  const server = createServer(async (request, response) => {
    const body = await readBody(request);
    seen.push({ method: request.method ?? "", url: request.url ?? "", headers: request.headers, body });
    handle(request, response);
  });
  const port = await listen(server);
  cleanups.push(() => closeServer(server));
  return { port, seen };
}

/** A WebSocket origin that echoes every message and records the headers of each upgrade it accepted. */
async function startWebSocketOrigin(): Promise<{ port: number; upgrades: IncomingHttpHeaders[] }> {
  const upgrades: IncomingHttpHeaders[] = [];
  const server = new WebSocketServer({ host: HOST, port: 0 });
  server.on("connection", (socket, request) => {
    upgrades.push(request.headers);
    socket.on("message", (data, isBinary) => socket.send(data, { binary: isBinary }));
  });
  await once(server, "listening");
  cleanups.push(
    () =>
      new Promise<void>((resolve) => {
        for (const client of server.clients) client.terminate();
        server.close(() => resolve());
      }),
  );
  return { port: (server.address() as AddressInfo).port, upgrades };
}

async function expose(target: ExposeTarget | (() => ExposeTarget), token: string | null = TOKEN): Promise<ExposedPort> {
  const resolveTarget = typeof target === "function" ? target : () => target;
  const tokenSha256 = token === null ? null : createHash("sha256").update(token).digest("hex");
  const exposed = await ExposedPort.listen({ listenHost: HOST, target: resolveTarget, tokenSha256 });
  cleanups.push(() => exposed.close());
  return exposed;
}

async function listen(server: Server): Promise<number> {
  server.listen(0, HOST);
  await once(server, "listening");
  return (server.address() as AddressInfo).port;
}

function closeServer(server: Server): Promise<void> {
  server.closeAllConnections();
  return new Promise((resolve) => server.close(() => resolve()));
}

/** A port that nothing listens on (it was free a moment ago). */
async function closedPort(): Promise<number> {
  const server = createServer();
  const port = await listen(server);
  await closeServer(server);
  return port;
}

async function readBody(stream: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString();
}

interface Reply {
  status: number;
  statusMessage: string;
  headers: IncomingHttpHeaders;
  body: string;
}

interface SendOptions {
  method?: string;
  path?: string;
  headers?: Record<string, string>;
  /** Several parts are sent chunked; one string with a Content-Length. */
  body?: string | string[];
}

async function send(
  port: number,
  { method = "GET", path = "/", headers = {}, body = [] }: SendOptions = {},
): Promise<Reply> {
  const request = httpRequest({ host: HOST, port, method, path, headers, agent: false });
  if (typeof body === "string") request.end(body);
  else {
    for (const part of body) request.write(part);
    request.end();
  }
  const [response] = (await once(request, "response")) as [IncomingMessage];
  const received = await readBody(response);
  return { status: response.statusCode ?? 0, statusMessage: response.statusMessage ?? "", headers: response.headers, body: received };
}

const withToken = (token = TOKEN) => ({ [EXPOSE_TOKEN_HEADER]: token });

function assertUnauthorized(reply: Reply): void {
  assert.equal(reply.status, 401);
  assert.equal(JSON.parse(reply.body).error.code, "unauthorized");
}

async function openWebSocket(port: number, headers: Record<string, string>): Promise<WebSocket> {
  const socket = new WebSocket(`ws://${HOST}:${port}/chat?room=1`, { headers });
  cleanups.push(() => socket.terminate());
  await once(socket, "open");
  return socket;
}

/** The status the server answered a WebSocket handshake with, when it did not accept it. */
async function refusedHandshakeStatus(port: number, headers: Record<string, string>): Promise<number> {
  const socket = new WebSocket(`ws://${HOST}:${port}/`, { headers });
  cleanups.push(() => socket.terminate());
  return new Promise((resolve, reject) => {
    socket.once("open", () => reject(new Error("the handshake was accepted")));
    socket.once("unexpected-response", (_request, response: IncomingMessage) => resolve(response.statusCode ?? 0));
    socket.once("error", reject);
  });
}

async function echo(socket: WebSocket, message: string): Promise<string> {
  socket.send(message);
  const [data] = (await once(socket, "message")) as [Buffer];
  return data.toString();
}

/** Resolves when the emitter closes; unlike once(), an error on the way there (a reset, say) is no failure. */
function closed(emitter: NodeJS.EventEmitter): Promise<void> {
  return new Promise((resolve) => emitter.once("close", () => resolve()));
}

function withinMs<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  const timeout = new Promise<never>((_, reject) => {
    setTimeout(() => reject(new Error(`${what} took over ${ms} ms`)), ms).unref();
  });
  return Promise.race([promise, timeout]);
}

describe("ExposedPort over HTTP", () => {
  it("forwards a GET with its path and query, and says where it came from", TEST_TIMEOUT, async () => {
    const origin = await startOrigin((request, response) => response.end(`got ${request.method} ${request.url}`));
    const exposed = await expose({ host: HOST, port: origin.port });

    const reply = await send(exposed.port, { path: "/a/b?c=d&e=f", headers: withToken() });

    assert.equal(reply.status, 200);
    assert.equal(reply.body, "got GET /a/b?c=d&e=f");
    const [seen] = origin.seen;
    assert.equal(seen?.headers.host, `${HOST}:${exposed.port}`);
    assert.equal(seen?.headers["x-forwarded-for"], HOST);
    assert.equal(seen?.headers["x-forwarded-host"], `${HOST}:${exposed.port}`);
    assert.equal(seen?.headers["x-forwarded-proto"], "http");
  });

  it("forwards a POST with its body", TEST_TIMEOUT, async () => {
    const origin = await startOrigin((request, response) => response.end("stored"));
    const exposed = await expose({ host: HOST, port: origin.port });
    const body = "x".repeat(256 * 1024) + "end";

    const headers = { ...withToken(), "content-type": "text/plain" };
    const reply = await send(exposed.port, { method: "POST", path: "/upload", headers, body });

    assert.equal(reply.body, "stored");
    assert.equal(origin.seen[0]?.method, "POST");
    assert.equal(origin.seen[0]?.headers["content-type"], "text/plain");
    assert.equal(origin.seen[0]?.body, body);
    assert.equal(origin.seen[0]?.headers["content-length"], String(body.length));
  });

  it("forwards a body sent chunked, without knowing its length", TEST_TIMEOUT, async () => {
    const origin = await startOrigin((request, response) => response.end("stored"));
    const exposed = await expose({ host: HOST, port: origin.port });
    const parts = ["one,", "two,", "x".repeat(100_000), ",three"];

    const reply = await send(exposed.port, { method: "PUT", headers: withToken(), body: parts });

    assert.equal(reply.body, "stored");
    assert.equal(origin.seen[0]?.headers["transfer-encoding"], "chunked");
    assert.equal(origin.seen[0]?.body, parts.join(""));
  });

  it("streams a response: the first chunk arrives before the origin writes the rest", TEST_TIMEOUT, async () => {
    let finishResponse = () => {};
    const origin = await startOrigin((_request, response) => {
      response.write("first;");
      finishResponse = () => response.end("second");
    });
    const exposed = await expose({ host: HOST, port: origin.port });

    const request = httpRequest({ host: HOST, port: exposed.port, headers: withToken(), agent: false });
    request.end();
    const [response] = (await once(request, "response")) as [IncomingMessage];
    const received: string[] = [];
    // Only a proxy that passes chunks on as they come lets the origin finish: a buffering one waits forever.
    response.on("data", (chunk: Buffer) => {
      received.push(chunk.toString());
      if (received.length === 1) finishResponse();
    });
    await once(response, "end");

    assert.equal(received[0], "first;");
    assert.equal(received.join(""), "first;second");
  });

  it("passes back the status, its reason and the headers, repeated ones included", TEST_TIMEOUT, async () => {
    const origin = await startOrigin((_request, response) => {
      response.writeHead(418, "Short And Stout", [
        "Set-Cookie",
        "a=1",
        "Set-Cookie",
        "b=2",
        "X-Teapot",
        "yes",
        "Content-Type",
        "text/plain",
        "Keep-Alive",
        "timeout=99",
      ]);
      response.end("tea");
    });
    const exposed = await expose({ host: HOST, port: origin.port });

    const reply = await send(exposed.port, { headers: withToken() });

    assert.equal(reply.status, 418);
    assert.equal(reply.statusMessage, "Short And Stout");
    assert.deepEqual(reply.headers["set-cookie"], ["a=1", "b=2"]);
    assert.equal(reply.headers["x-teapot"], "yes");
    assert.equal(reply.headers["content-type"], "text/plain");
    assert.equal(reply.headers["keep-alive"], undefined, "a hop-by-hop header of the origin's hop");
    assert.equal(reply.body, "tea");
  });

  it("never lets the token header or hop-by-hop headers reach the origin", TEST_TIMEOUT, async () => {
    const origin = await startOrigin();
    const exposed = await expose({ host: HOST, port: origin.port });

    const reply = await send(exposed.port, {
      headers: {
        ...withToken(),
        connection: "keep-alive, x-hop-only",
        "x-hop-only": "1",
        "x-end-to-end": "2",
        te: "trailers",
      },
    });

    assert.equal(reply.status, 200);
    const headers = origin.seen[0]?.headers;
    assert.ok(headers, "the origin saw the request");
    assert.equal(headers[EXPOSE_TOKEN_HEADER], undefined);
    assert.equal(headers["x-hop-only"], undefined);
    assert.equal(headers["te"], undefined);
    assert.equal(headers["x-end-to-end"], "2");
  });

  it("answers 401 without the token or with a wrong one, and the origin sees nothing", TEST_TIMEOUT, async () => {
    const origin = await startOrigin();
    const exposed = await expose({ host: HOST, port: origin.port });
    const sameLengthWrongToken = TOKEN.slice(0, -1) + (TOKEN.endsWith("x") ? "y" : "x");

    assertUnauthorized(await send(exposed.port));
    assertUnauthorized(await send(exposed.port, { headers: withToken(sameLengthWrongToken) }));
    assertUnauthorized(await send(exposed.port, { headers: withToken(TOKEN + "-longer") }));
    assertUnauthorized(await send(exposed.port, { method: "POST", headers: withToken(""), body: "data" }));

    assert.equal(origin.seen.length, 0);
  });

  it("lets anyone through a public port", TEST_TIMEOUT, async () => {
    const origin = await startOrigin((_request, response) => response.end("public"));
    const exposed = await expose({ host: HOST, port: origin.port }, null);

    const reply = await send(exposed.port);

    assert.equal(reply.status, 200);
    assert.equal(reply.body, "public");
  });

  it("answers 502 with a JSON error when nothing listens on the target", TEST_TIMEOUT, async () => {
    const exposed = await expose({ host: HOST, port: await closedPort() });

    const reply = await send(exposed.port, { method: "POST", headers: withToken(), body: "lost" });

    assert.equal(reply.status, 502);
    assert.equal(JSON.parse(reply.body).error.code, "bad_gateway");
  });

  it("asks for the target on every request, so a moved sandbox is followed", TEST_TIMEOUT, async () => {
    const before = await startOrigin((_request, response) => response.end("before"));
    const after = await startOrigin((_request, response) => response.end("after"));
    let current = before.port;
    const exposed = await expose(() => ({ host: HOST, port: current }));

    assert.equal((await send(exposed.port, { headers: withToken() })).body, "before");
    current = after.port;
    assert.equal((await send(exposed.port, { headers: withToken() })).body, "after");
  });
});

describe("ExposedPort over WebSocket", () => {
  it("relays a WebSocket with the token, both ways, without passing the token on", TEST_TIMEOUT, async () => {
    const origin = await startWebSocketOrigin();
    const exposed = await expose({ host: HOST, port: origin.port });

    const socket = await openWebSocket(exposed.port, withToken());

    assert.equal(await echo(socket, "hello"), "hello");
    assert.equal(await echo(socket, "again"), "again");
    assert.equal(origin.upgrades.length, 1);
    assert.equal(origin.upgrades[0]?.[EXPOSE_TOKEN_HEADER], undefined);
    assert.equal(origin.upgrades[0]?.["x-forwarded-for"], HOST);
    socket.close(1000, "bye");
    const [code] = (await once(socket, "close")) as [number];
    assert.equal(code, 1000, "the closing handshake went through both ways");
  });

  it("refuses an upgrade without the token or with a wrong one, and the origin sees nothing", TEST_TIMEOUT, async () => {
    const origin = await startWebSocketOrigin();
    const exposed = await expose({ host: HOST, port: origin.port });

    assert.equal(await refusedHandshakeStatus(exposed.port, {}), 401);
    assert.equal(await refusedHandshakeStatus(exposed.port, withToken("wrong")), 401);

    assert.equal(origin.upgrades.length, 0);
  });

  it("lets a WebSocket through a public port without a token", TEST_TIMEOUT, async () => {
    const origin = await startWebSocketOrigin();
    const exposed = await expose({ host: HOST, port: origin.port }, null);

    const socket = await openWebSocket(exposed.port, {});

    assert.equal(await echo(socket, "open to all"), "open to all");
  });

  it("answers 502 to an upgrade when nothing listens on the target", TEST_TIMEOUT, async () => {
    const exposed = await expose({ host: HOST, port: await closedPort() });

    assert.equal(await refusedHandshakeStatus(exposed.port, withToken()), 502);
  });
});

describe("ExposedPort.close", () => {
  it("ends a WebSocket, an idle keep-alive connection, a response in progress, a request half sent", TEST_TIMEOUT, async () => {
    const origin = await startOrigin((request, response) => {
      if (request.url === "/endless") response.write("never finished");
      else response.end("done");
    });
    const webSocketOrigin = await startWebSocketOrigin();
    const exposed = await expose(() => ({ host: HOST, port: origin.port }));
    const exposedWebSockets = await expose({ host: HOST, port: webSocketOrigin.port });

    const webSocket = await openWebSocket(exposedWebSockets.port, withToken());
    assert.equal(await echo(webSocket, "before close"), "before close");
    const webSocketClosed = closed(webSocket);

    const keepAlive = new Agent({ keepAlive: true, maxSockets: 1 });
    cleanups.push(() => keepAlive.destroy());
    const idleRequest = httpRequest({ host: HOST, port: exposed.port, headers: withToken(), agent: keepAlive });
    idleRequest.end();
    const [idleSocket] = (await once(idleRequest, "socket")) as [Socket];
    const idleSocketClosed = closed(idleSocket);
    const [idleResponse] = (await once(idleRequest, "response")) as [IncomingMessage];
    assert.equal(await readBody(idleResponse), "done");
    assert.ok(!idleSocket.destroyed, "the keep-alive connection stays open after its response");

    const endless = { host: HOST, port: exposed.port, path: "/endless", headers: withToken(), agent: false };
    const endlessRequest = httpRequest(endless);
    endlessRequest.on("error", () => undefined);
    endlessRequest.end();
    const [endlessResponse] = (await once(endlessRequest, "response")) as [IncomingMessage];
    endlessResponse.on("error", () => undefined);
    await once(endlessResponse, "data");
    const endlessResponseClosed = closed(endlessResponse);

    // A client still sending its request is neither idle nor in a response: only close() itself can end it.
    const halfSentRequest = connect({ host: HOST, port: exposed.port });
    cleanups.push(() => {
      halfSentRequest.destroy();
    });
    halfSentRequest.on("error", () => undefined);
    await once(halfSentRequest, "connect");
    halfSentRequest.write(`GET / HTTP/1.1\r\nHost: ${HOST}\r\n`);
    const halfSentRequestClosed = closed(halfSentRequest);

    await withinMs(Promise.all([exposed.close(), exposedWebSockets.close()]), 3_000, "close()");

    await withinMs(
      Promise.all([webSocketClosed, idleSocketClosed, endlessResponseClosed, halfSentRequestClosed]),
      3_000,
      "the connections ending",
    );
    assert.ok(!endlessResponse.complete, "the endless response was cut off, not completed");
  });

  it("stops accepting connections", TEST_TIMEOUT, async () => {
    const origin = await startOrigin();
    const exposed = await expose({ host: HOST, port: origin.port });
    await exposed.close();

    await assert.rejects(send(exposed.port, { headers: withToken() }), { code: "ECONNREFUSED" });
  });
});

describe("ExposedPort socket limits", () => {
  const owner = { sandboxId: "sandbox", tenantId: "tenant" };

  async function exposeCounted(target: ExposeTarget, budget: SocketBudget, relay?: { idleTimeoutMs: number }): Promise<ExposedPort> {
    const exposed = await ExposedPort.listen({ listenHost: HOST, target: () => target, tokenSha256: null, reserveSockets: (count) => budget.reserve(owner, count), relay });
    cleanups.push(() => exposed.close());
    return exposed;
  }

  async function heldDropsTo(budget: SocketBudget, count: number): Promise<void> {
    for (let i = 0; budget.held > count; i++) {
      if (i > 200) assert.fail(`the budget still counts ${budget.held} sockets`);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  }

  it("counts the client and the upstream socket, and gives both back when they close", TEST_TIMEOUT, async () => {
    const origin = await startOrigin();
    const budget = new SocketBudget({ perSandbox: 2, perTenant: 2 }, 100_000);
    const exposed = await exposeCounted({ host: HOST, port: origin.port }, budget);
    assert.equal((await send(exposed.port)).status, 200);
    await heldDropsTo(budget, 0);
    assert.equal((await send(exposed.port)).status, 200, "the places of the first request were not given back");
  });

  it("answers 503 naming the limit when the upstream socket would pass it", TEST_TIMEOUT, async () => {
    const origin = await startOrigin();
    const budget = new SocketBudget({ perSandbox: 1, perTenant: 10 }, 100_000);
    const exposed = await exposeCounted({ host: HOST, port: origin.port }, budget);
    const reply = await send(exposed.port);
    assert.equal(reply.status, 503);
    assert.equal(JSON.parse(reply.body).error.code, "limit_reached");
    assert.match(JSON.parse(reply.body).error.message, /^limit:sandbox-sockets: .*limit is 1/);
    assert.equal(origin.seen.length, 0);
  });

  it("answers a client connection past the limit with 503 and closes it", TEST_TIMEOUT, async () => {
    const origin = await startOrigin();
    const budget = new SocketBudget({ perSandbox: 10, perTenant: 0 }, 100_000);
    const exposed = await exposeCounted({ host: HOST, port: origin.port }, budget);
    const reply = await send(exposed.port);
    assert.equal(reply.status, 503);
    assert.match(JSON.parse(reply.body).error.message, /^limit:tenant-sockets/);
    await heldDropsTo(budget, 0);
  });

  it("closes a request the guest never answers after the idle timeout (502), giving back both sockets", TEST_TIMEOUT, async () => {
    const silent = createServer(() => {});
    const port = await listen(silent);
    cleanups.push(() => closeServer(silent));
    const budget = new SocketBudget({ perSandbox: 10, perTenant: 10 }, 100_000);
    const exposed = await exposeCounted({ host: HOST, port }, budget, { idleTimeoutMs: 300 });
    const reply = await send(exposed.port);
    assert.equal(reply.status, 502);
    assert.match(JSON.parse(reply.body).error.message, /no bytes for/);
    await heldDropsTo(budget, 0);
  });
});
