import assert from "node:assert/strict";
import { once } from "node:events";
import { createServer as createHttpServer, request as httpRequest } from "node:http";
import { connect as netConnect, createServer as createNetServer, type AddressInfo, type Server, type Socket } from "node:net";
import { afterEach, describe, it } from "node:test";
import { connect as tlsConnect, createServer as createTlsServer, type ConnectionOptions } from "node:tls";
import { PeekError, peekDestination, type PeekedStream, type PeekOptions } from "./peek.js";

const HOST = "127.0.0.1";
/** Every test that waits on the network gets this long: a peek that hangs fails instead of stalling the run. */
const TEST_TIMEOUT = { timeout: 10_000 };
/** Long enough that a slow, shared CI machine never hits it by accident in tests about names. */
const PATIENT: PeekOptions = { timeoutMs: 5_000 };

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

// ---------------------------------------------------------------------------------------------------------------
// Helpers

async function listen(server: Server): Promise<number> {
  server.listen(0, HOST);
  await once(server, "listening");
  return (server.address() as AddressInfo).port;
}

/** Closes a server after destroying the sockets it handed out, so close() does not wait on them. */
function closing(server: Server, sockets: Set<Socket>): () => Promise<void> {
  return () =>
    new Promise((resolve) => {
      for (const socket of sockets) socket.destroy();
      server.close(() => resolve());
    });
}

interface Peeked {
  result: PeekedStream;
  socket: Socket;
  elapsedMs: number;
}

/** A server that peeks every connection it accepts; next() yields them in order of arrival. */
async function startPeekServer(options: PeekOptions = PATIENT): Promise<{ port: number; next(): Promise<Peeked> }> {
  const waiting: Array<(peeked: Peeked) => void> = [];
  const ready: Peeked[] = [];
  const sockets = new Set<Socket>();
  const server = createNetServer({ allowHalfOpen: true }, (socket) => {
    sockets.add(socket);
    socket.on("error", () => {});
    const started = Date.now();
    void peekDestination(socket, options).then((result) => {
      const peeked = { result, socket, elapsedMs: Date.now() - started };
      const waiter = waiting.shift();
      if (waiter) waiter(peeked);
      else ready.push(peeked);
    });
  });
  const port = await listen(server);
  cleanups.push(closing(server, sockets));
  return {
    port,
    next: () => {
      const peeked = ready.shift();
      return peeked ? Promise.resolve(peeked) : new Promise((resolve) => waiting.push(resolve));
    },
  };
}

/** What the proxy does after the peek: write `initial` upstream, then splice the two sockets together. */
function forward({ result, socket }: Peeked, upstreamPort: number): Socket {
  const upstream = netConnect({ host: HOST, port: upstreamPort, allowHalfOpen: true });
  upstream.on("error", () => {});
  upstream.write(result.initial);
  socket.pipe(upstream);
  upstream.pipe(socket);
  cleanups.push(() => void upstream.destroy());
  return upstream;
}

/** An upstream that records every byte of each connection until the client ends it. */
async function startRecorder(): Promise<{ port: number; received(): Promise<Buffer> }> {
  const results: Array<Promise<Buffer>> = [];
  const sockets = new Set<Socket>();
  const server = createNetServer({ allowHalfOpen: true }, (socket) => {
    sockets.add(socket);
    socket.on("error", () => {});
    const chunks: Buffer[] = [];
    socket.on("data", (chunk: Buffer) => chunks.push(chunk));
    results.push(once(socket, "end").then(() => Buffer.concat(chunks)));
    socket.on("end", () => socket.end());
  });
  const port = await listen(server);
  cleanups.push(closing(server, sockets));
  return {
    port,
    received: async () => {
      while (results.length === 0) await new Promise((resolve) => setTimeout(resolve, 5));
      return results.shift()!;
    },
  };
}

async function rawClient(port: number): Promise<Socket> {
  const socket = netConnect({ host: HOST, port, allowHalfOpen: true });
  socket.on("error", () => {});
  socket.setNoDelay(true);
  await once(socket, "connect");
  cleanups.push(() => void socket.destroy());
  return socket;
}

/** Writes in small pieces with a turn of the event loop between them, so the peek sees many short reads. */
async function writeInPieces(socket: Socket, bytes: Buffer, pieceSize = 1): Promise<void> {
  for (let offset = 0; offset < bytes.length; offset += pieceSize) {
    socket.write(bytes.subarray(offset, offset + pieceSize));
    await new Promise((resolve) => setImmediate(resolve));
  }
}

async function peekOf(bytes: Buffer | string, options?: PeekOptions): Promise<Peeked> {
  const server = await startPeekServer(options);
  const client = await rawClient(server.port);
  client.end(bytes);
  return server.next();
}

function tlsClient(port: number, options: ConnectionOptions): void {
  const socket = tlsConnect({ host: HOST, port, rejectUnauthorized: false, ...options });
  socket.on("error", () => {});
  cleanups.push(() => void socket.destroy());
}

/** The first TLS record a real Node client sends for these options: its ClientHello. */
async function captureClientHello(options: ConnectionOptions): Promise<Buffer> {
  const sockets = new Set<Socket>();
  let hello!: (bytes: Buffer) => void;
  const captured = new Promise<Buffer>((resolve) => (hello = resolve));
  const server = createNetServer((socket) => {
    sockets.add(socket);
    socket.on("error", () => {});
    let bytes = Buffer.alloc(0);
    socket.on("data", (chunk: Buffer) => {
      bytes = Buffer.concat([bytes, chunk]);
      if (bytes.length >= 5 && bytes.length >= 5 + bytes.readUInt16BE(3)) hello(bytes.subarray(0, 5 + bytes.readUInt16BE(3)));
    });
  });
  const port = await listen(server);
  tlsClient(port, options);
  try {
    return await captured;
  } finally {
    await closing(server, sockets)();
  }
}

/** Re-frames a single-record ClientHello as several records carrying `pieceSizes` bytes each (the rest last). */
function splitIntoRecords(record: Buffer, pieceSizes: number[]): Buffer {
  const payload = record.subarray(5);
  const records: Buffer[] = [];
  let offset = 0;
  for (const size of [...pieceSizes, payload.length]) {
    if (offset >= payload.length) break;
    const piece = payload.subarray(offset, offset + size);
    const header = Buffer.from([0x16, record[1]!, record[2]!, 0, 0]);
    header.writeUInt16BE(piece.length, 3);
    records.push(header, piece);
    offset += piece.length;
  }
  return Buffer.concat(records);
}

/** Overwrites an ASCII string in place with another of the same length (the SNI, say, keeping every length field right). */
function replaceSameLength(bytes: Buffer, from: string, to: string): Buffer {
  assert.equal(from.length, to.length);
  const at = bytes.indexOf(from, 0, "latin1");
  assert.ok(at >= 0, `${from} is in the bytes`);
  const copy = Buffer.from(bytes);
  copy.write(to, at, "latin1");
  return copy;
}

const PSK = Buffer.from("00112233445566778899aabbccddeeff", "hex");
/** TLS-PSK needs no certificate, so a real handshake can run through the peek without test keys on disk. */
const PSK_TLS = { ciphers: "PSK-AES128-GCM-SHA256", maxVersion: "TLSv1.2" } as const;

/** A TLS server that echoes what it decrypts. */
async function startTlsEchoServer(): Promise<number> {
  const sockets = new Set<Socket>();
  const server = createTlsServer({ ...PSK_TLS, pskCallback: () => PSK }, (socket) => socket.pipe(socket));
  server.on("connection", (socket: Socket) => sockets.add(socket));
  server.on("tlsClientError", () => {});
  const port = await listen(server);
  cleanups.push(closing(server, sockets));
  return port;
}

/** Connects a real PSK TLS client, sends `message` once the handshake is done and resolves with the echo. */
async function tlsEcho(port: number, servername: string, message: string): Promise<string> {
  const socket = tlsConnect({ host: HOST, port, servername, ...PSK_TLS, pskCallback: () => ({ psk: PSK, identity: "sandbox" }), checkServerIdentity: () => undefined });
  cleanups.push(() => void socket.destroy());
  await once(socket, "secureConnect");
  socket.write(message);
  let echoed = "";
  for await (const chunk of socket) {
    echoed += String(chunk);
    if (echoed.length >= message.length) break;
  }
  return echoed;
}

/** Relays connections to `targetPort`, re-framing the client's first TLS record as several records. */
async function startFragmentingRelay(targetPort: number, pieceSizes: number[]): Promise<number> {
  const sockets = new Set<Socket>();
  const server = createNetServer({ allowHalfOpen: true }, (client) => {
    sockets.add(client);
    const upstream = netConnect({ host: HOST, port: targetPort, allowHalfOpen: true });
    sockets.add(upstream);
    client.on("error", () => upstream.destroy());
    upstream.on("error", () => client.destroy());
    let pending = Buffer.alloc(0);
    let reframed = false;
    client.on("data", (chunk: Buffer) => {
      if (reframed) return void upstream.write(chunk);
      pending = Buffer.concat([pending, chunk]);
      if (pending.length < 5 || pending.length < 5 + pending.readUInt16BE(3)) return;
      const recordEnd = 5 + pending.readUInt16BE(3);
      reframed = true;
      upstream.write(Buffer.concat([splitIntoRecords(pending.subarray(0, recordEnd), pieceSizes), pending.subarray(recordEnd)]));
    });
    client.on("end", () => upstream.end());
    upstream.pipe(client);
  });
  const port = await listen(server);
  cleanups.push(closing(server, sockets));
  return port;
}

function httpHead(lines: string[]): Buffer {
  return Buffer.from(`${lines.join("\r\n")}\r\n\r\n`, "latin1");
}

// ---------------------------------------------------------------------------------------------------------------
// TLS

describe("peekDestination over TLS", () => {
  it("reads the SNI of a real TLS client, lower-cased", TEST_TIMEOUT, async () => {
    const server = await startPeekServer();
    tlsClient(server.port, { servername: "API.Example.COM" });
    const { result } = await server.next();
    assert.equal(result.protocol, "tls");
    assert.equal(result.name, "api.example.com");
    assert.equal(result.nameIsAddress, false);
    assert.equal(result.ambiguous, false);
    assert.equal(result.initial[0], 0x16);
  });

  it("loses and doubles no byte: a real handshake and echo run through the peek to a TLS server", TEST_TIMEOUT, async () => {
    const server = await startPeekServer();
    const echoPort = await startTlsEchoServer();
    const echoed = tlsEcho(server.port, "echo.example.com", "ping through the proxy");
    const peeked = await server.next();
    assert.equal(peeked.result.name, "echo.example.com");
    forward(peeked, echoPort);
    assert.equal(await echoed, "ping through the proxy");
  });

  it("follows a ClientHello split over several records, header split included, and the handshake still completes", TEST_TIMEOUT, async () => {
    const server = await startPeekServer();
    const relayPort = await startFragmentingRelay(server.port, [1, 2, 30, 7]);
    const echoPort = await startTlsEchoServer();
    const echoed = tlsEcho(relayPort, "fragments.example.com", "still whole");
    const peeked = await server.next();
    assert.equal(peeked.result.protocol, "tls");
    assert.equal(peeked.result.name, "fragments.example.com");
    forward(peeked, echoPort);
    assert.equal(await echoed, "still whole");
  });

  it("finds the SNI when the ClientHello arrives a byte at a time", TEST_TIMEOUT, async () => {
    const hello = await captureClientHello({ servername: "slow.example.com" });
    const server = await startPeekServer();
    const client = await rawClient(server.port);
    await writeInPieces(client, hello);
    const { result } = await server.next();
    assert.equal(result.name, "slow.example.com");
    assert.deepEqual(result.initial, hello);
  });

  it("marks an IP-literal SNI as an address", TEST_TIMEOUT, async () => {
    const hello = replaceSameLength(await captureClientHello({ servername: "abcdefg" }), "abcdefg", "1.2.3.4");
    const { result } = await peekOf(hello);
    assert.equal(result.name, "1.2.3.4");
    assert.equal(result.nameIsAddress, true);
  });

  it("has no name when the client sends no SNI", TEST_TIMEOUT, async () => {
    const server = await startPeekServer();
    tlsClient(server.port, {}); // Node sends no SNI when connecting to an IP address.
    const { result } = await server.next();
    assert.equal(result.protocol, "tls");
    assert.equal(result.name, null);
  });

  it("has no name for a server name that is not a hostname", TEST_TIMEOUT, async () => {
    const hello = replaceSameLength(await captureClientHello({ servername: "abcdefg.example" }), "abcdefg", "ab\0d ;g");
    const { result } = await peekOf(hello);
    assert.equal(result.protocol, "tls");
    assert.equal(result.name, null);
  });

  it("stops at maxBytes with no name when the ClientHello does not fit, and passes every byte on", TEST_TIMEOUT, async () => {
    const hello = await captureClientHello({ servername: "big.example.com" });
    const sent = Buffer.concat([hello, Buffer.from("after the hello")]);
    const server = await startPeekServer({ ...PATIENT, maxBytes: 64 });
    const recorder = await startRecorder();
    const client = await rawClient(server.port);
    client.write(sent);
    const peeked = await server.next();
    assert.equal(peeked.result.protocol, "tls");
    assert.equal(peeked.result.name, null);
    assert.ok(peeked.result.initial.length <= 64);
    forward(peeked, recorder.port);
    client.end();
    assert.deepEqual(await recorder.received(), sent);
  });

  it("decides at once, with no name, on a handshake record that is not a ClientHello", TEST_TIMEOUT, async () => {
    const { result, elapsedMs } = await peekOf(Buffer.from([0x16, 0x03, 0x03, 0x00, 0x04, 0x02, 0x00, 0x00, 0x00]), { timeoutMs: 5_000 });
    assert.equal(result.protocol, "tls");
    assert.equal(result.name, null);
    assert.ok(elapsedMs < 4_000);
  });

  it("never throws on mangled ClientHellos", TEST_TIMEOUT, async () => {
    const hello = await captureClientHello({ servername: "fuzz.example.com" });
    const server = await startPeekServer();
    let random = 12345;
    const nextRandom = (limit: number): number => ((random = (random * 1103515245 + 12345) % 2 ** 31) % limit);
    for (let round = 0; round < 150; round++) {
      const mangled = Buffer.from(hello.subarray(0, round % 3 === 0 ? 1 + nextRandom(hello.length - 1) : hello.length));
      for (let flips = 0; flips < 1 + (round % 4) && mangled.length > 1; flips++) mangled[1 + nextRandom(mangled.length - 1)] = nextRandom(256);
      const client = await rawClient(server.port);
      client.end(mangled);
      const { result } = await server.next();
      assert.equal(result.protocol, "tls");
      assert.ok(result.name === null || /^[a-z0-9_.-]+$/.test(result.name), `unexpected name ${JSON.stringify(result.name)}`);
      assert.deepEqual(result.initial, mangled);
    }
  });
});

// ---------------------------------------------------------------------------------------------------------------
// HTTP

describe("peekDestination over HTTP", () => {
  it("reads Host from a real http.request, drops the port, and the request and answer pass through intact", TEST_TIMEOUT, async () => {
    const seen: Array<{ host: string | undefined; body: string }> = [];
    const origin = createHttpServer(async (request, response) => {
      let body = "";
      for await (const chunk of request) body += String(chunk);
      seen.push({ host: request.headers.host, body });
      response.end("answer body");
    });
    const originPort = await listen(origin);
    cleanups.push(
      () =>
        new Promise((resolve) => {
          origin.closeAllConnections();
          origin.close(() => resolve());
        }),
    );

    const server = await startPeekServer();
    const answered = new Promise<string>((resolve, reject) => {
      const request = httpRequest({ host: HOST, port: server.port, method: "POST", path: "/upload", headers: { Host: "API.Example.com:8080", Connection: "close" } }, async (response) => {
        let text = "";
        for await (const chunk of response) text += String(chunk);
        resolve(text);
      });
      request.on("error", reject);
      request.end("x".repeat(50_000));
    });
    const peeked = await server.next();
    assert.equal(peeked.result.protocol, "http");
    assert.equal(peeked.result.name, "api.example.com");
    assert.equal(peeked.result.nameIsAddress, false);
    assert.equal(peeked.result.ambiguous, false);
    forward(peeked, originPort);
    assert.equal(await answered, "answer body");
    assert.deepEqual(seen, [{ host: "API.Example.com:8080", body: "x".repeat(50_000) }]);
  });

  it("reads Host from a request head that arrives a byte at a time", TEST_TIMEOUT, async () => {
    const head = httpHead(["GET /slow HTTP/1.1", "User-Agent: test", "hOsT:   Slow.Example.com.  "]);
    const server = await startPeekServer();
    const client = await rawClient(server.port);
    await writeInPieces(client, head);
    const { result } = await server.next();
    assert.equal(result.protocol, "http");
    assert.equal(result.name, "slow.example.com");
    assert.deepEqual(result.initial, head);
  });

  it("accepts bare LF line ends", TEST_TIMEOUT, async () => {
    const { result } = await peekOf("GET / HTTP/1.0\nHost: lf.example.com\n\n");
    assert.equal(result.name, "lf.example.com");
  });

  it("has no name for HTTP/1.0 without Host", TEST_TIMEOUT, async () => {
    const { result } = await peekOf(httpHead(["GET / HTTP/1.0", "Accept: */*"]));
    assert.equal(result.protocol, "http");
    assert.equal(result.name, null);
    assert.equal(result.ambiguous, false);
  });

  for (const [why, lines] of [
    ["two Host headers", ["GET / HTTP/1.1", "Host: good.example.com", "host: evil.example.com"]],
    ["two Host headers, one behind a bare LF", ["GET / HTTP/1.1", "X-Pad: a\nHost: evil.example.com", "Host: good.example.com"]],
    ["an absolute-form target naming another host", ["GET http://evil.example.com/ HTTP/1.1", "Host: good.example.com"]],
    ["userinfo in an absolute-form target", ["GET http://good.example.com@evil.example.com/ HTTP/1.1", "Host: evil.example.com"]],
    ["a space before the Host colon", ["GET / HTTP/1.1", "Host : evil.example.com", "Host: good.example.com"]],
    ["a folded line after Host", ["GET / HTTP/1.1", "Host: good.example.com", " evil.example.com"]],
    ["a bare CR inside the head", ["GET / HTTP/1.1", "X-Pad: a\rHost: evil.example.com", "Host: good.example.com"]],
  ] as const) {
    it(`is ambiguous, with no name, for ${why}`, TEST_TIMEOUT, async () => {
      const { result } = await peekOf(httpHead([...lines]));
      assert.equal(result.protocol, "http");
      assert.equal(result.ambiguous, true);
      assert.equal(result.name, null);
    });
  }

  it("takes the name from an absolute-form target that agrees with Host, or stands alone", TEST_TIMEOUT, async () => {
    const agreeing = await peekOf(httpHead(["GET http://Same.Example.com:8080/x?y HTTP/1.1", "Host: same.example.com"]));
    assert.equal(agreeing.result.name, "same.example.com");
    assert.equal(agreeing.result.ambiguous, false);
    const alone = await peekOf(httpHead(["GET https://alone.example.com HTTP/1.0"]));
    assert.equal(alone.result.name, "alone.example.com");
  });

  for (const [host, name] of [
    ["[::1]:80", "::1"],
    ["[2001:DB8::1]", "2001:db8::1"],
    ["10.1.2.3:8080", "10.1.2.3"],
    ["127.1", "127.1"],
    ["0x7f.1", "0x7f.1"],
  ] as const) {
    it(`marks Host ${host} as an address`, TEST_TIMEOUT, async () => {
      const { result } = await peekOf(httpHead(["GET / HTTP/1.1", `Host: ${host}`]));
      assert.equal(result.name, name);
      assert.equal(result.nameIsAddress, true);
    });
  }

  for (const host of ["", "a b.example.com", "evil.example.com:443:80", "[not-v6]", "exa_mple..com", "xn--bcher-kva.example\u00e9"]) {
    it(`has no name for Host ${JSON.stringify(host)}`, TEST_TIMEOUT, async () => {
      const { result } = await peekOf(httpHead(["GET / HTTP/1.1", `Host: ${host}`]));
      assert.equal(result.protocol, "http");
      assert.equal(result.name, null);
    });
  }

  it("stops at maxBytes with no name when the head does not end, and passes every byte on", TEST_TIMEOUT, async () => {
    const sent = Buffer.concat([Buffer.from("GET / HTTP/1.1\r\nHost: big.example.com\r\n"), Buffer.from(`X-Big: ${"b".repeat(20 * 1024)}\r\n\r\nbody`)]);
    const server = await startPeekServer();
    const recorder = await startRecorder();
    const client = await rawClient(server.port);
    client.write(sent);
    const peeked = await server.next();
    assert.equal(peeked.result.protocol, "http");
    assert.equal(peeked.result.name, null);
    assert.ok(peeked.result.initial.length <= 16 * 1024);
    forward(peeked, recorder.port);
    client.end();
    assert.deepEqual(await recorder.received(), sent);
  });

  it("never throws on mangled request heads", TEST_TIMEOUT, async () => {
    const head = httpHead(["GET /path HTTP/1.1", "Host: fuzz.example.com", "Accept: */*"]);
    const server = await startPeekServer();
    let random = 424242;
    const nextRandom = (limit: number): number => ((random = (random * 1103515245 + 12345) % 2 ** 31) % limit);
    for (let round = 0; round < 150; round++) {
      const mangled = Buffer.from(head);
      for (let flips = 0; flips < 1 + (round % 3); flips++) mangled[nextRandom(mangled.length)] = [0x0a, 0x0d, 0x20, 0x3a, 0x00, nextRandom(256)][nextRandom(6)]!;
      const client = await rawClient(server.port);
      client.end(mangled);
      const { result } = await server.next();
      assert.ok(result.name === null || /^[a-z0-9_.-]+$/.test(result.name), `unexpected name ${JSON.stringify(result.name)}`);
      assert.deepEqual(result.initial, mangled);
    }
  });
});

// ---------------------------------------------------------------------------------------------------------------
// Everything else

describe("peekDestination for other protocols", () => {
  for (const [what, bytes] of [
    ["an SSH client banner", Buffer.from("SSH-2.0-OpenSSH_9.6\r\n")],
    ["binary", Buffer.from([0x00, 0x00, 0x00, 0x08, 0x04, 0xd2, 0x16, 0x2f])],
    ["an HTTP/2 preface", Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")],
    ["a lower-case method", Buffer.from("get / HTTP/1.1\r\n")],
  ] as const) {
    it(`calls ${what} unknown at once, keeping its bytes`, TEST_TIMEOUT, async () => {
      const server = await startPeekServer({ timeoutMs: 5_000 });
      const client = await rawClient(server.port);
      client.write(bytes);
      const { result, elapsedMs } = await server.next();
      assert.equal(result.protocol, "unknown");
      assert.equal(result.name, null);
      assert.deepEqual(result.initial, bytes);
      assert.ok(elapsedMs < 4_000, `decided after ${elapsedMs} ms`);
    });
  }

  it("gives up after timeoutMs of silence with nothing read, so a server-speaks-first protocol can go on", TEST_TIMEOUT, async () => {
    const server = await startPeekServer({ timeoutMs: 150 });
    const recorder = await startRecorder();
    const client = await rawClient(server.port);
    const peeked = await server.next();
    assert.equal(peeked.result.protocol, "unknown");
    assert.equal(peeked.result.name, null);
    assert.equal(peeked.result.initial.length, 0);
    assert.ok(peeked.elapsedMs >= 140, `gave up after ${peeked.elapsedMs} ms`);
    peeked.socket.write("220 banner\r\n");
    const [banner] = (await once(client, "data")) as [Buffer];
    assert.equal(String(banner), "220 banner\r\n");
    forward(peeked, recorder.port);
    client.end("HELO sandbox\r\n");
    assert.equal(String(await recorder.received()), "HELO sandbox\r\n");
  });

  it("returns what a trickling client sent once the time is up", TEST_TIMEOUT, async () => {
    const server = await startPeekServer({ timeoutMs: 150 });
    const client = await rawClient(server.port);
    client.write("GET /unfinished HT");
    const { result } = await server.next();
    assert.equal(result.protocol, "http");
    assert.equal(result.name, null);
    assert.equal(String(result.initial), "GET /unfinished HT");
  });

  it("resolves at once with nothing when the client ends without sending", TEST_TIMEOUT, async () => {
    const { result, elapsedMs } = await peekOf(Buffer.alloc(0), { timeoutMs: 5_000 });
    assert.equal(result.protocol, "unknown");
    assert.equal(result.initial.length, 0);
    assert.ok(elapsedMs < 4_000);
  });

  it("resolves with the bytes so far when the client ends mid-head", TEST_TIMEOUT, async () => {
    const { result } = await peekOf("GET / HTTP/1.1\r\nHost: cut.exa", { timeoutMs: 5_000 });
    assert.equal(result.protocol, "http");
    assert.equal(result.name, null);
    assert.equal(String(result.initial), "GET / HTTP/1.1\r\nHost: cut.exa");
  });

  it("resolves, without throwing, when the client resets the connection", TEST_TIMEOUT, async () => {
    const server = await startPeekServer({ timeoutMs: 5_000 });
    const client = await rawClient(server.port);
    client.write("GET / HT");
    await new Promise((resolve) => setTimeout(resolve, 20));
    client.resetAndDestroy();
    const { result, elapsedMs } = await server.next();
    assert.equal(result.name, null);
    assert.ok(elapsedMs < 4_000);
  });

  it("resolves at once for a socket that is already destroyed", async () => {
    const server = await startPeekServer();
    const client = await rawClient(server.port);
    client.destroy();
    const result = await peekDestination(client, { timeoutMs: 5_000 });
    assert.equal(result.protocol, "unknown");
    assert.equal(result.initial.length, 0);
  });

  it("leaves none of its listeners behind and the socket not flowing", TEST_TIMEOUT, async () => {
    const sockets = new Set<Socket>();
    const events = ["readable", "data", "end", "close", "error"] as const;
    const counts = (socket: Socket): number[] => events.map((event) => socket.listenerCount(event));
    const checked = new Promise<{ before: number[]; after: number[]; flowing: boolean | null; name: string | null }>((resolve) => {
      const server = createNetServer((socket) => {
        sockets.add(socket);
        socket.on("error", () => {});
        const before = counts(socket);
        void peekDestination(socket, PATIENT).then(async (result) => {
          await new Promise((next) => setImmediate(next));
          resolve({ before, after: counts(socket), flowing: socket.readableFlowing, name: result.name });
        });
      });
      cleanups.push(closing(server, sockets));
      void listen(server).then(async (port) => (await rawClient(port)).write(httpHead(["GET / HTTP/1.1", "Host: tidy.example.com"])));
    });
    const { before, after, flowing, name } = await checked;
    assert.equal(name, "tidy.example.com");
    assert.deepEqual(after, before);
    assert.notEqual(flowing, true);
  });

  it("rejects bad options with PeekError", async () => {
    const server = await startPeekServer();
    const client = await rawClient(server.port);
    await assert.rejects(peekDestination(client, { maxBytes: 0 }), PeekError);
    await assert.rejects(peekDestination(client, { timeoutMs: -1 }), PeekError);
    client.setEncoding("utf8");
    await assert.rejects(peekDestination(client), PeekError);
  });
});
