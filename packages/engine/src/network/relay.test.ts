// The relay's lifetime rules on plain loopback sockets: a client, the two sockets a proxy holds (accepted and
// dialed), and an origin.
import assert from "node:assert/strict";
import net, { type Socket } from "node:net";
import { after, describe, it } from "node:test";
import { RelayTimeoutError, relay, type RelayEnd, type RelayOptions } from "./relay.js";

interface RelayedPair {
  /** The client's socket (what a guest holds). */
  client: Socket;
  /** The origin's accepted socket. */
  origin: Socket;
  /** The proxy's two sockets: accepted from the client, dialed to the origin. */
  proxySides: [Socket, Socket];
  ended: Promise<RelayEnd>;
}

const servers: net.Server[] = [];
after(() => servers.forEach((server) => server.close()));

function listen(onConnection: (socket: Socket) => void): Promise<number> {
  const server = net.createServer({ allowHalfOpen: true }, onConnection);
  servers.push(server);
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve((server.address() as net.AddressInfo).port)));
}

async function relayedPair(options: RelayOptions): Promise<RelayedPair> {
  let origin!: Promise<Socket>;
  const originPort = await new Promise<number>((resolvePort) => {
    origin = new Promise((resolveOrigin) => void listen(resolveOrigin).then(resolvePort));
  });
  let proxied!: (value: { accepted: Socket; dialed: Socket; ended: Promise<RelayEnd> }) => void;
  const proxiedPair = new Promise<{ accepted: Socket; dialed: Socket; ended: Promise<RelayEnd> }>((resolve) => (proxied = resolve));
  const proxyPort = await listen((accepted) => {
    const dialed = net.connect({ host: "127.0.0.1", port: originPort, allowHalfOpen: true });
    dialed.once("connect", () => proxied({ accepted, dialed, ended: relay(accepted, dialed, options) }));
  });
  const client = net.connect({ host: "127.0.0.1", port: proxyPort, allowHalfOpen: true });
  client.on("error", () => {});
  const { accepted, dialed, ended } = await proxiedPair;
  const originSocket = await origin;
  originSocket.on("error", () => {});
  return { client, origin: originSocket, proxySides: [accepted, dialed], ended };
}

const closed = (socket: Socket) => (socket.closed ? Promise.resolve() : new Promise<void>((resolve) => socket.once("close", () => resolve())));
const received = (socket: Socket) => {
  const chunks: Buffer[] = [];
  socket.on("data", (chunk: Buffer) => chunks.push(chunk));
  return () => Buffer.concat(chunks).toString();
};
const ended = (socket: Socket) => new Promise<void>((resolve) => socket.once("end", () => resolve()));
/** A peer learns that the relay let go of it: an end (FIN) or a close (reset), whichever comes. */
const letGo = (socket: Socket) => {
  socket.resume();
  return new Promise<void>((resolve) => {
    if (socket.readableEnded || socket.closed) resolve();
    socket.once("end", () => resolve());
    socket.once("close", () => resolve());
  });
};

describe("relay", () => {
  it("passes bytes both ways and a FIN as a FIN; the other direction still works; both close when both are done", async () => {
    const pair = await relayedPair({});
    const atOrigin = received(pair.origin);
    const atClient = received(pair.client);
    const originSawEnd = ended(pair.origin);
    pair.client.end("request");
    await originSawEnd;
    assert.equal(atOrigin(), "request");
    // Half-closed: the answer still reaches the client after its FIN.
    const clientSawEnd = ended(pair.client);
    pair.origin.end("answer");
    await clientSawEnd;
    assert.equal(atClient(), "answer");
    assert.deepEqual(await pair.ended, { error: null });
    await Promise.all(pair.proxySides.map(closed));
  });

  it("destroys the other side when one is reset", async () => {
    const pair = await relayedPair({});
    const originLetGo = letGo(pair.origin);
    pair.client.resetAndDestroy();
    await originLetGo;
    await pair.ended;
    assert.ok(pair.proxySides.every((socket) => socket.destroyed));
  });

  it("destroys the other side when the origin goes away without a FIN", async () => {
    const pair = await relayedPair({});
    const clientLetGo = letGo(pair.client);
    pair.origin.resetAndDestroy();
    await clientLetGo;
    await pair.ended;
  });

  it("closes both sides of a connection that moves no bytes for the idle timeout", async () => {
    const pair = await relayedPair({ idleTimeoutMs: 300 });
    const peersLetGo = Promise.all([letGo(pair.client), letGo(pair.origin)]);
    const { error } = await pair.ended;
    assert.ok(error instanceof RelayTimeoutError, String(error));
    assert.match(error.message, /idle/);
    await peersLetGo;
  });

  it("closes both sides once one direction has ended and the other stays silent (an origin that never answers)", async () => {
    const pair = await relayedPair({ idleTimeoutMs: 600_000, halfClosedTimeoutMs: 300 });
    // The origin never answers and never closes; the client has said all it will.
    const clientLetGo = letGo(pair.client);
    pair.client.end("hello");
    const { error } = await pair.ended;
    assert.ok(error instanceof RelayTimeoutError, String(error));
    assert.match(error.message, /half-closed/);
    await clientLetGo;
  });

  it("keeps a connection open while bytes flow, however long that is", async () => {
    const pair = await relayedPair({ idleTimeoutMs: 1500 });
    const atOrigin = received(pair.origin);
    let sent = "";
    // Bytes every 50 ms for 3 s: twice the idle timeout in all, never idle for long.
    for (let i = 0; i < 60; i++) {
      pair.client.write("x");
      sent += "x";
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    assert.ok(!pair.client.destroyed && !pair.origin.destroyed, "the relay closed a connection that was moving bytes");
    pair.client.destroy();
    await pair.ended;
    assert.equal(atOrigin(), sent);
  });
});
