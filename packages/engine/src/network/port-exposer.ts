/**
 * The host side of `sandbox.network.expose(port)`: an HTTP listener that checks the port's token and relays each
 * request, and each WebSocket (any Upgrade) connection, to the sandbox's guest port.
 *
 * Every request gets its own upstream connection (no pooling): the sandbox's address can change after a
 * pause/resume, a pooled connection would outlive that, and a connection to a local guest is cheap.
 */
import { createHash, timingSafeEqual } from "node:crypto";
import {
  STATUS_CODES,
  createServer,
  request as httpRequest,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from "node:http";
import { connect, isIPv6, type AddressInfo, type Socket } from "node:net";
import { pipeline, type Duplex } from "node:stream";
import { EXPOSE_TOKEN_HEADER } from "@codecourier/protocol/network";
import { RELAY_IDLE_TIMEOUT_MS, RelayTimeoutError, relay, type RelayOptions } from "./relay.js";
import { SocketReservation, type LimitRefusal } from "./socket-budget.js";

export interface ExposeTarget {
  host: string;
  port: number;
}

export interface ExposedPortOptions {
  /** Address to listen on, e.g. "127.0.0.1" (the server's setting). */
  listenHost: string;
  /** 0 = any free port. */
  listenPort?: number;
  /** Where requests go: resolved for every new upstream connection (the sandbox's address can change after pause/resume). */
  target: () => ExposeTarget;
  /**
   * SHA-256 (hex) of the token requests must carry; null = public. Only the digest is kept (here and in the control
   * store): the token itself is shown once, to whoever exposed the port.
   */
  tokenSha256: string | null;
  /**
   * Places for sockets this port's connections hold (client and upstream sides), counted against the sandbox's
   * limits; without it nothing is counted.
   */
  reserveSockets?: (count: number) => SocketReservation | LimitRefusal;
  /** Idle timeouts of relayed connections (and of requests the guest does not answer). */
  relay?: RelayOptions;
}

/** A guest that does not accept a connection within this long is treated as unreachable (504). */
const UPSTREAM_CONNECT_TIMEOUT_MS = 10_000;
/** Client connections idle out this much later than upstream ones. */
const CLIENT_IDLE_MARGIN_MS = 2000;

/** Headers that describe one hop (RFC 9110 §7.6.1), never forwarded as they are. */
const HOP_BY_HOP_HEADERS: ReadonlySet<string> = new Set([
  "connection",
  "keep-alive",
  "proxy-authenticate",
  "proxy-authorization",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
]);

/** Set by this listener from what it saw, so whatever the client sent under these names is dropped. */
const FORWARDED_HOST_HEADER = "x-forwarded-host";
const FORWARDED_PROTO_HEADER = "x-forwarded-proto";
const FORWARDED_FOR_HEADER = "x-forwarded-for";

class UpstreamConnectTimeoutError extends Error {
  constructor() {
    super(`the sandbox did not accept a connection within ${UPSTREAM_CONNECT_TIMEOUT_MS / 1000} s`);
    this.name = "UpstreamConnectTimeoutError";
  }
}

interface ProxyError {
  status: number;
  code: string;
  message: string;
}

const UNAUTHORIZED: ProxyError = {
  status: 401,
  code: "unauthorized",
  message: `this port needs the header ${EXPOSE_TOKEN_HEADER} with the token given when it was exposed`,
};

function upstreamFailure(error: unknown): ProxyError {
  if (error instanceof UpstreamConnectTimeoutError) return { status: 504, code: "gateway_timeout", message: error.message };
  const reason = error instanceof Error ? error.message : String(error);
  return { status: 502, code: "bad_gateway", message: `the sandbox's port could not be reached: ${reason}` };
}

function limitReached(refusal: LimitRefusal): ProxyError {
  return { status: 503, code: "limit_reached", message: `${refusal.rule}: ${refusal.error}` };
}

function isRefusal(places: SocketReservation | LimitRefusal): places is LimitRefusal {
  return "rule" in places;
}

function errorBody(error: ProxyError): string {
  return JSON.stringify({ error: { code: error.code, message: error.message } });
}

export class ExposedPort {
  readonly #server: Server;
  readonly #target: () => ExposeTarget;
  readonly #tokenDigest: Buffer | null;
  readonly #reserveSockets: (count: number) => SocketReservation | LimitRefusal;
  readonly #relayOptions: RelayOptions;
  /** Client and upstream sockets alike: close() must end upgraded ones too, which the http server no longer sees. */
  readonly #sockets = new Set<Socket>();
  #port = 0;
  #closing: Promise<void> | null = null;

  private constructor(options: ExposedPortOptions) {
    this.#target = options.target;
    this.#tokenDigest = options.tokenSha256 === null ? null : Buffer.from(options.tokenSha256, "hex");
    this.#reserveSockets = options.reserveSockets ?? ((count) => new SocketReservation(count, () => {}));
    this.#relayOptions = options.relay ?? {};
    this.#server = createServer();
    // A client connection with no bytes for this long is closed (an upgraded one gets the relay's own timers). The
    // margin lets a request the guest leaves unanswered time out upstream first, so the client gets a 502 for it.
    this.#server.setTimeout((this.#relayOptions.idleTimeoutMs ?? RELAY_IDLE_TIMEOUT_MS) + CLIENT_IDLE_MARGIN_MS);
    // accept() failing (EMFILE and the like) is emitted here; the server keeps listening, so only not crashing matters.
    this.#server.on("error", () => {});
    this.#server.on("connection", (socket: Socket) => this.#admitClient(socket));
    this.#server.on("request", (request: IncomingMessage, response: ServerResponse) =>
      this.#relayRequest(request, response),
    );
    this.#server.on("upgrade", (request: IncomingMessage, socket: Duplex, head: Buffer) =>
      this.#relayUpgrade(request, socket, head),
    );
  }

  static async listen(options: ExposedPortOptions): Promise<ExposedPort> {
    const exposed = new ExposedPort(options);
    await listenOn(exposed.#server, options.listenHost, options.listenPort ?? 0);
    exposed.#port = (exposed.#server.address() as AddressInfo).port;
    return exposed;
  }

  get port(): number {
    return this.#port;
  }

  /** Closes the listener and every open connection, upgraded WebSockets included. */
  close(): Promise<void> {
    this.#closing ??= new Promise<void>((resolve) => {
      // The callback fires once every connection is gone, which the destroy loop below makes happen now.
      this.#server.close(() => resolve());
      for (const socket of this.#sockets) socket.destroy();
    });
    return this.#closing;
  }

  /** A new client connection takes a place among the sandbox's sockets, or is answered 503 and closed. */
  #admitClient(socket: Socket): void {
    const places = this.#reserveSockets(1);
    if (isRefusal(places)) {
      socket.on("error", () => {});
      answerRawSocket(socket, limitReached(places));
      return;
    }
    places.bind(socket);
    this.#track(socket);
  }

  #track(socket: Socket): void {
    if (this.#closing) {
      socket.destroy();
      return;
    }
    this.#sockets.add(socket);
    socket.once("close", () => this.#sockets.delete(socket));
  }

  #isAuthorized(request: IncomingMessage): boolean {
    if (this.#tokenDigest === null) return true;
    const presented = request.headers[EXPOSE_TOKEN_HEADER];
    // Sent twice, the header arrives joined ("a, b") or as a list: either way it is not the token.
    if (typeof presented !== "string") return false;
    // Digests have one length, so the comparison takes the same time whatever was presented.
    return timingSafeEqual(createHash("sha256").update(presented).digest(), this.#tokenDigest);
  }

  /** Where an authorized request goes; undefined once `refuse` has answered one that may not go anywhere. */
  #admit(request: IncomingMessage, refuse: (error: ProxyError) => void): ExposeTarget | undefined {
    if (!this.#isAuthorized(request)) {
      refuse(UNAUTHORIZED);
      return undefined;
    }
    try {
      return this.#target();
    } catch (error) {
      refuse(upstreamFailure(error));
      return undefined;
    }
  }

  #relayRequest(request: IncomingMessage, response: ServerResponse): void {
    // Without a listener, a client that goes away mid-upload would make the request emit an unhandled error.
    request.on("error", () => undefined);
    const target = this.#admit(request, (error) => sendError(response, error));
    if (!target) return;
    const places = this.#reserveSockets(1);
    if (isRefusal(places)) return sendError(response, limitReached(places));

    const idleMs = this.#relayOptions.idleTimeoutMs ?? RELAY_IDLE_TIMEOUT_MS;
    const upstream = httpRequest({
      host: target.host,
      port: target.port,
      method: request.method ?? "GET",
      path: request.url ?? "/",
      headers: forwardedRequestHeaders(request, target, { upgrade: false }),
      agent: false,
    });
    upstream.on("socket", (socket: Socket) => {
      places.bind(socket);
      this.#track(socket);
      // A guest that accepts and never answers (or stops mid-body) does not hold both sockets for ever.
      socket.setTimeout(idleMs, () => upstream.destroy(new RelayTimeoutError("the sandbox's port", idleMs)));
      failIfConnectIsSlow(socket, () => upstream.destroy(new UpstreamConnectTimeoutError()));
    });
    upstream.on("response", (upstreamResponse: IncomingMessage) => relayResponse(upstreamResponse, response));
    upstream.on("error", (error: Error) => {
      // The guest answered early and then went away (e.g. a 413 before the whole upload): nothing left to say.
      if (response.writableFinished) return;
      // Once the status line is out, the only honest signal left is a cut-off response.
      if (response.headersSent) response.destroy();
      else sendError(response, upstreamFailure(error));
    });
    // The client gone before its response was complete: nobody is left to read what the guest sends.
    response.on("close", () => {
      if (!response.writableFinished) upstream.destroy();
    });
    request.pipe(upstream);
  }

  #relayUpgrade(request: IncomingMessage, client: Duplex, head: Buffer): void {
    // The http server removed its own error handling from an upgraded socket; an error must not crash the process.
    client.on("error", () => client.destroy());
    const target = this.#admit(request, (error) => answerRawSocket(client, error));
    if (!target) return;
    const places = this.#reserveSockets(1);
    if (isRefusal(places)) return answerRawSocket(client, limitReached(places));

    const upstream = connect({ host: target.host, port: target.port, allowHalfOpen: true });
    places.bind(upstream);
    this.#track(upstream);
    upstream.setNoDelay(true);
    const failBeforeConnected = (error: Error) => {
      upstream.destroy();
      answerRawSocket(client, upstreamFailure(error));
    };
    failIfConnectIsSlow(upstream, () => failBeforeConnected(new UpstreamConnectTimeoutError()));
    upstream.once("error", failBeforeConnected);
    // A client that leaves while the guest is still connecting takes the upstream connection with it.
    const abandonUpstream = () => upstream.destroy();
    client.once("close", abandonUpstream);

    upstream.once("connect", () => {
      upstream.off("error", failBeforeConnected);
      client.off("close", abandonUpstream);
      upstream.write(requestHead(request, forwardedRequestHeaders(request, target, { upgrade: true })), "latin1");
      if (head.length > 0) upstream.write(head);
      void relay(client as Socket, upstream, this.#relayOptions);
    });
  }
}

function listenOn(server: Server, host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
}

/** Calls `fail` if the socket is still connecting after the timeout; sockets that are already connected are left alone. */
function failIfConnectIsSlow(socket: Socket, fail: () => void): void {
  if (!socket.connecting) return;
  const timer = setTimeout(fail, UPSTREAM_CONNECT_TIMEOUT_MS);
  const stop = () => clearTimeout(timer);
  socket.once("connect", stop);
  socket.once("close", stop);
}

function relayResponse(upstreamResponse: IncomingMessage, response: ServerResponse): void {
  try {
    response.writeHead(
      upstreamResponse.statusCode ?? 502,
      upstreamResponse.statusMessage ?? "",
      withoutHopByHop(upstreamResponse.rawHeaders, upstreamResponse.headers.connection),
    );
  } catch (error) {
    // Something the guest sent that Node will not send on (an invalid status, say) is the guest's failure.
    upstreamResponse.destroy();
    sendError(response, upstreamFailure(error));
    return;
  }
  // On a failure pipeline destroys both: a guest that dies mid-body gives the client a cut-off body, not a clean end.
  pipeline(upstreamResponse, response, () => undefined);
}

function sendError(response: ServerResponse, error: ProxyError): void {
  if (response.destroyed) return;
  const body = errorBody(error);
  // Close rather than keep the connection: keeping it means reading the rest of a request body nobody will forward
  // (for a 401, possibly a large upload from someone without the token).
  response.writeHead(error.status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(body),
    connection: "close",
  });
  response.end(body);
}

/** An answer written by hand on a socket the http server has handed over (after an Upgrade request). */
function answerRawSocket(socket: Duplex, error: ProxyError): void {
  if (socket.destroyed) return;
  const body = errorBody(error);
  const head =
    `HTTP/1.1 ${error.status} ${STATUS_CODES[error.status] ?? ""}\r\n` +
    "Content-Type: application/json\r\n" +
    `Content-Length: ${Buffer.byteLength(body)}\r\n` +
    "Connection: close\r\n\r\n";
  socket.end(head + body, () => socket.destroy());
}

/** Header names (lower case) listed in a Connection header: they too are hop-by-hop. */
function connectionOptions(connection: string | undefined): Set<string> {
  const names = new Set<string>();
  for (const name of (connection ?? "").split(",")) {
    const trimmed = name.trim().toLowerCase();
    if (trimmed) names.add(trimmed);
  }
  return names;
}

/** Raw headers ([name, value, name, value…], as Node gives them) without the hop-by-hop ones. */
function withoutHopByHop(
  rawHeaders: readonly string[],
  connection: string | undefined,
  alsoDrop: ReadonlySet<string> = new Set(),
): string[] {
  const named = connectionOptions(connection);
  const kept: string[] = [];
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!;
    const lower = name.toLowerCase();
    if (HOP_BY_HOP_HEADERS.has(lower) || named.has(lower) || alsoDrop.has(lower)) continue;
    kept.push(name, rawHeaders[i + 1]!);
  }
  return kept;
}

function hostHeaderFor(target: ExposeTarget): string {
  return `${isIPv6(target.host) ? `[${target.host}]` : target.host}:${target.port}`;
}

/**
 * The request's headers as the guest gets them: the client's own (case and repeats kept) without hop-by-hop headers
 * and the token, plus X-Forwarded-*. For an upgrade, Connection and Upgrade are put back: they are the point of it.
 */
function forwardedRequestHeaders(
  request: IncomingMessage,
  target: ExposeTarget,
  { upgrade }: { upgrade: boolean },
): string[] {
  const headers = withoutHopByHop(
    request.rawHeaders,
    request.headers.connection,
    new Set([EXPOSE_TOKEN_HEADER, FORWARDED_FOR_HEADER, FORWARDED_HOST_HEADER, FORWARDED_PROTO_HEADER]),
  );
  // Proxies append to X-Forwarded-For, so earlier hops stay visible; which of them to trust is the guest's call.
  const forwardedFor = [request.headers[FORWARDED_FOR_HEADER], request.socket.remoteAddress].flat().filter((part) => part);
  headers.push("X-Forwarded-For", forwardedFor.join(", "));
  if (request.headers.host !== undefined) headers.push("X-Forwarded-Host", request.headers.host);
  // This listener only speaks plain HTTP.
  headers.push("X-Forwarded-Proto", "http");
  // An HTTP/1.0 client may send no Host; HTTP/1.1 servers are entitled to refuse a request without one.
  if (request.headers.host === undefined) headers.push("Host", hostHeaderFor(target));
  if (upgrade) headers.push("Connection", "Upgrade", "Upgrade", request.headers.upgrade ?? "");
  return headers;
}

/** The request line and headers, as text to write on a raw socket. */
function requestHead(request: IncomingMessage, headers: readonly string[]): string {
  let head = `${request.method ?? "GET"} ${request.url ?? "/"} HTTP/${request.httpVersion}\r\n`;
  for (let i = 0; i + 1 < headers.length; i += 2) head += `${headers[i]}: ${headers[i + 1]}\r\n`;
  return `${head}\r\n`;
}
