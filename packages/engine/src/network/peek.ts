/**
 * Learns where a sandbox's TCP connection is headed from the first bytes its client sends: the TLS SNI or the
 * HTTP Host header. The transparent proxy only knows the address the guest dialed; policy is written in names.
 *
 * Byte contract: every byte peekDestination reads from the socket is returned in `initial`, in order, and nothing
 * is pushed back (no unshift). The caller writes `initial` to the upstream first, then pipes the socket. When the
 * promise settles none of our listeners remain and the socket is not flowing: bytes after `initial` wait in the
 * socket until the caller pipes it (or resumes it, or adds a 'data' listener). The client may already have ended
 * its side; `pipe`/`pipeline` handle that, a hand-written 'end' listener may not see it (check readableEnded).
 *
 * The promise never rejects for anything the peer does (garbage, silence, resets): hostile bytes only ever yield
 * `name: null`. It rejects with PeekError only for a caller's mistake (bad options, a socket with an encoding).
 * It does not consume the socket's 'error' events for the caller: attach your own error listener before calling.
 */
import { METHODS } from "node:http";
import { isIP, isIPv6, type Socket } from "node:net";
import { Readable } from "node:stream";
import { getExtensionData, readTlsClientHello } from "read-tls-client-hello";

export type PeekedProtocol = "tls" | "http" | "unknown";

export interface PeekedStream {
  protocol: PeekedProtocol;
  /** Destination name from TLS SNI or the HTTP Host header, lower-case, without port or trailing dot; null if none. */
  name: string | null;
  /** True when that name is an IP literal (e.g. SNI "1.2.3.4" or Host "[::1]:80") — callers treat it as no name. */
  nameIsAddress: boolean;
  /** HTTP only: more than one Host header, or Host in an absolute-form request line disagreeing with the header. Callers refuse these. */
  ambiguous: boolean;
  /** Every byte read from the socket so far; the caller writes it to the upstream first. */
  initial: Buffer;
}

export interface PeekOptions {
  /**
   * How long the whole peek may take, from the call. A client that stays silent this long is taken to speak a
   * server-speaks-first protocol (SSH, SMTP, MySQL); one that trickles bytes gets no more time than this either.
   */
  timeoutMs?: number;
  /** The most bytes read while looking for a complete ClientHello or HTTP header block. */
  maxBytes?: number;
}

export const PEEK_DEFAULTS = { timeoutMs: 1000, maxBytes: 16 * 1024 } as const;

/** A caller's mistake, never the peer's: the peer can only make the name come out null. */
export class PeekError extends Error {
  override readonly name = "PeekError";
}

export async function peekDestination(socket: Socket, options: PeekOptions = {}): Promise<PeekedStream> {
  const limits = checkedLimits(options);
  if (socket.readableEncoding !== null) throw new PeekError("the socket has an encoding set; peekDestination needs raw bytes");
  const { bytes, inspection } = await readUntilDecided(socket, limits);
  return describe(inspection, bytes);
}

// ---------------------------------------------------------------------------------------------------------------
// Reading

interface Limits {
  timeoutMs: number;
  maxBytes: number;
}

function checkedLimits(options: PeekOptions): Limits {
  const timeoutMs = options.timeoutMs ?? PEEK_DEFAULTS.timeoutMs;
  const maxBytes = options.maxBytes ?? PEEK_DEFAULTS.maxBytes;
  if (!Number.isFinite(timeoutMs) || timeoutMs < 0) throw new PeekError(`timeoutMs must be a finite number ≥ 0, got ${timeoutMs}`);
  if (!Number.isSafeInteger(maxBytes) || maxBytes < 1) throw new PeekError(`maxBytes must be a positive integer, got ${maxBytes}`);
  return { timeoutMs, maxBytes };
}

interface Collected {
  bytes: Buffer;
  inspection: Inspection;
}

/**
 * Reads until the bytes decide the destination, the client stops (end, close, error), maxBytes are buffered, or
 * the time is up. Uses 'readable' and sized read() calls rather than 'data' so that no more than maxBytes ever
 * leave the socket's own buffer.
 */
function readUntilDecided(socket: Socket, limits: Limits): Promise<Collected> {
  const undecided: Collected = { bytes: Buffer.alloc(0), inspection: UNDECIDED_UNKNOWN };
  if (socket.destroyed || socket.readableEnded) return Promise.resolve(undecided);

  return new Promise((resolve) => {
    let collected = undecided;
    let stopped = false;

    const stop = (): void => {
      if (stopped) return;
      stopped = true;
      clearTimeout(timer);
      socket.off("readable", onReadable);
      socket.off("end", stop);
      socket.off("close", stop);
      socket.off("error", stop);
      resolve(collected);
    };

    const onReadable = (): void => {
      const before = collected.bytes.length;
      const bytes = readAvailable(socket, collected.bytes, limits.maxBytes);
      if (bytes.length === before) return;
      collected = { bytes, inspection: inspect(bytes, limits.maxBytes) };
      if (collected.inspection.kind !== "undecided" || bytes.length >= limits.maxBytes) stop();
    };

    const timer = setTimeout(stop, limits.timeoutMs);
    socket.on("readable", onReadable);
    socket.on("end", stop);
    socket.on("close", stop);
    socket.on("error", stop);
  });
}

/** Appends whatever the socket has buffered, up to maxBytes in all. */
function readAvailable(socket: Socket, sofar: Buffer, maxBytes: number): Buffer {
  const chunks = [sofar];
  let total = sofar.length;
  for (;;) {
    const size = Math.min(socket.readableLength, maxBytes - total);
    if (size <= 0) {
      // read(0) reads nothing but lets the stream notice a pending end-of-stream and emit 'end'.
      if (socket.readableLength === 0) socket.read(0);
      break;
    }
    const chunk: unknown = socket.read(size);
    if (!Buffer.isBuffer(chunk)) break;
    chunks.push(chunk);
    total += chunk.length;
  }
  return chunks.length === 1 ? sofar : Buffer.concat(chunks, total);
}

// ---------------------------------------------------------------------------------------------------------------
// Deciding what the bytes are

type Inspection =
  /** More bytes could still decide it; `protocol` is what the bytes look like so far. */
  | { kind: "undecided"; protocol: PeekedProtocol }
  | { kind: "opaque" }
  /** A TLS stream; clientHello is the complete ClientHello handshake message, or null when there is none to read. */
  | { kind: "tls"; clientHello: Buffer | null }
  | { kind: "http"; head: HeadFacts };

const UNDECIDED_UNKNOWN: Inspection = { kind: "undecided", protocol: "unknown" };
const UNDECIDED_TLS: Inspection = { kind: "undecided", protocol: "tls" };
const UNDECIDED_HTTP: Inspection = { kind: "undecided", protocol: "http" };
const OPAQUE: Inspection = { kind: "opaque" };
const TLS_WITHOUT_HELLO: Inspection = { kind: "tls", clientHello: null };

const TLS_HANDSHAKE_RECORD = 0x16;

function inspect(bytes: Buffer, maxBytes: number): Inspection {
  if (bytes.length === 0) return UNDECIDED_UNKNOWN;
  return bytes[0] === TLS_HANDSHAKE_RECORD ? inspectTls(bytes, maxBytes) : inspectHttp(bytes);
}

async function describe(inspection: Inspection, initial: Buffer): Promise<PeekedStream> {
  const nameless = { name: null, nameIsAddress: false, ambiguous: false, initial };
  switch (inspection.kind) {
    case "undecided":
      return { ...nameless, protocol: inspection.protocol };
    case "opaque":
      return { ...nameless, protocol: "unknown" };
    case "http":
      return { ...inspection.head, protocol: "http", initial };
    case "tls": {
      const serverName = inspection.clientHello === null ? null : await serverNameOf(inspection.clientHello);
      const facts = serverName === null ? NO_NAME : nameFacts(serverName);
      return { ...facts, ambiguous: false, protocol: "tls", initial };
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// TLS

const RECORD_HEADER_BYTES = 5;
const HANDSHAKE_HEADER_BYTES = 4;
const CLIENT_HELLO = 0x01;
/** RFC 8446 §5.1: a plaintext record carries at most 2^14 bytes. */
const MAX_RECORD_PAYLOAD = 2 ** 14;
/** The ClientHello is handed to the library re-framed as one record, whose length field has 16 bits. */
const MAX_REFRAMED_HELLO = 0xffff;

/**
 * Gathers the ClientHello from the leading handshake records. A ClientHello may be split over several records
 * (large post-quantum key shares, clients that fragment on purpose), which read-tls-client-hello does not follow:
 * it reads exactly one record. So the framing is undone here and the library parses the message itself.
 */
function inspectTls(bytes: Buffer, maxBytes: number): Inspection {
  let handshake = Buffer.alloc(0);
  let offset = 0;
  for (;;) {
    const hello = clientHelloIn(handshake, maxBytes);
    if (hello !== "incomplete") return { kind: "tls", clientHello: hello };
    if (offset + RECORD_HEADER_BYTES > bytes.length) return UNDECIDED_TLS;
    const payloadLength = bytes.readUInt16BE(offset + 3);
    const isHandshakeRecord = bytes[offset] === TLS_HANDSHAKE_RECORD && payloadLength > 0 && payloadLength <= MAX_RECORD_PAYLOAD;
    if (!isHandshakeRecord) return TLS_WITHOUT_HELLO;
    const payloadEnd = offset + RECORD_HEADER_BYTES + payloadLength;
    handshake = Buffer.concat([handshake, bytes.subarray(offset + RECORD_HEADER_BYTES, Math.min(payloadEnd, bytes.length))]);
    offset = payloadEnd;
  }
}

/** The complete ClientHello at the start of the handshake bytes; null when it is something else or cannot fit. */
function clientHelloIn(handshake: Buffer, maxBytes: number): Buffer | null | "incomplete" {
  if (handshake.length < HANDSHAKE_HEADER_BYTES) return "incomplete";
  if (handshake[0] !== CLIENT_HELLO) return null;
  const length = HANDSHAKE_HEADER_BYTES + handshake.readUIntBE(1, 3);
  // Give up as soon as the header says it cannot fit, rather than waiting for bytes we would not keep.
  if (RECORD_HEADER_BYTES + length > maxBytes || length > MAX_REFRAMED_HELLO) return null;
  return handshake.length >= length ? handshake.subarray(0, length) : "incomplete";
}

async function serverNameOf(clientHello: Buffer): Promise<string | null> {
  try {
    const hello = await readTlsClientHello(Readable.from([asSingleRecord(clientHello)], { objectMode: false }));
    return getExtensionData(hello, "sni")?.serverName ?? null;
  } catch {
    // The library rejects malformed hellos; a client that sends one gets no name, never an exception.
    return null;
  }
}

function asSingleRecord(handshakeMessage: Buffer): Buffer {
  const header = Buffer.from([TLS_HANDSHAKE_RECORD, 0x03, 0x01, 0, 0]);
  header.writeUInt16BE(handshakeMessage.length, 3);
  return Buffer.concat([header, handshakeMessage]);
}

// ---------------------------------------------------------------------------------------------------------------
// HTTP/1.x

interface NameFacts {
  name: string | null;
  nameIsAddress: boolean;
}

interface HeadFacts extends NameFacts {
  ambiguous: boolean;
}

const NO_NAME: NameFacts = { name: null, nameIsAddress: false };
const AMBIGUOUS: HeadFacts = { ...NO_NAME, ambiguous: true };

const LF = 0x0a;
const KNOWN_METHODS: ReadonlySet<string> = new Set(METHODS);
const VISIBLE_ASCII = /^[\x21-\x7e]*$/;
const HTTP_1_VERSION = /^HTTP\/1\.\d$/;
const FIELD_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

/**
 * Decides as early as the bytes allow: a first line that cannot become `METHOD SP target SP HTTP/1.x` is not
 * HTTP, so other client-speaks-first protocols are passed on without waiting for the timeout.
 */
function inspectHttp(bytes: Buffer): Inspection {
  const lineEnd = bytes.indexOf(LF);
  if (lineEnd < 0) return partialRequestLine(bytes.toString("latin1"));
  const target = requestTarget(withoutCR(bytes.toString("latin1", 0, lineEnd)));
  if (target === null) return OPAQUE;
  const blankLine = blankLineAfter(bytes, lineEnd);
  if (blankLine < 0) return UNDECIDED_HTTP;
  const fieldLines = bytes.toString("latin1", lineEnd + 1, blankLine).split("\n").slice(0, -1);
  return { kind: "http", head: headFacts(target, fieldLines) };
}

function partialRequestLine(line: string): Inspection {
  const [method = "", target, version, ...rest] = line.split(" ");
  if (rest.length > 0) return OPAQUE;
  if (target === undefined) return [...KNOWN_METHODS].some((known) => known.startsWith(method)) ? UNDECIDED_UNKNOWN : OPAQUE;
  if (!KNOWN_METHODS.has(method) || !VISIBLE_ASCII.test(target)) return OPAQUE;
  if (version === undefined) return UNDECIDED_HTTP;
  const versionSoFar = withoutCR(version);
  const couldBeVersion = target.length > 0 && ("HTTP/1.".startsWith(versionSoFar) || HTTP_1_VERSION.test(versionSoFar));
  return couldBeVersion ? UNDECIDED_HTTP : OPAQUE;
}

/** The request target of a valid HTTP/1.x request line, else null. */
function requestTarget(line: string): string | null {
  const parts = line.split(" ");
  if (parts.length !== 3) return null;
  const [method = "", target = "", version = ""] = parts;
  const valid = KNOWN_METHODS.has(method) && target.length > 0 && VISIBLE_ASCII.test(target) && HTTP_1_VERSION.test(version);
  return valid ? target : null;
}

/**
 * Where the empty line that ends the header block starts (just after the LF before it), or -1. A bare LF counts
 * as a line end, as lenient servers (nginx, llhttp) count it, so that we see every Host header any of them sees.
 */
function blankLineAfter(bytes: Buffer, requestLineEnd: number): number {
  const candidates = [bytes.indexOf("\n\n", requestLineEnd, "latin1"), bytes.indexOf("\n\r\n", requestLineEnd, "latin1")];
  const found = candidates.filter((index) => index >= 0);
  return found.length === 0 ? -1 : Math.min(...found) + 1;
}

function headFacts(target: string, fieldLines: string[]): HeadFacts {
  const hosts: string[] = [];
  for (const rawLine of fieldLines) {
    const line = withoutCR(rawLine);
    // A bare CR or a folded line: servers disagree on where such lines end, so a Host could hide in them.
    if (line.includes("\r") || line.startsWith(" ") || line.startsWith("\t")) return AMBIGUOUS;
    const colon = line.indexOf(":");
    const fieldName = colon < 0 ? line : line.slice(0, colon);
    if (fieldName.trim().toLowerCase() !== "host") continue;
    // "Host : x" or a Host line without a colon: some servers still take it for Host, most refuse it.
    if (colon < 0 || !FIELD_NAME.test(fieldName)) return AMBIGUOUS;
    hosts.push(trimOptionalWhitespace(line.slice(colon + 1)));
  }
  if (hosts.length > 1) return AMBIGUOUS;

  const absolute = absoluteFormAuthority(target);
  if (absolute === "has-userinfo") return AMBIGUOUS;
  const fromHeader = hosts[0] === undefined ? undefined : nameFromAuthority(hosts[0]);
  const fromTarget = absolute === null ? undefined : nameFromAuthority(absolute);
  // RFC 9112 §3.2.2: a server takes the absolute-form's host over the Host header; a proxy that read the header could be led elsewhere.
  if (fromHeader !== undefined && fromTarget !== undefined && fromHeader.name !== fromTarget.name) return AMBIGUOUS;
  return { ...(fromTarget ?? fromHeader ?? NO_NAME), ambiguous: false };
}

const ABSOLUTE_FORM = /^[a-z][a-z0-9+.-]*:\/\/([^/?#]*)/i;

/** The authority of an absolute-form target (`http://host:port/path`), null for other forms. */
function absoluteFormAuthority(target: string): string | null | "has-userinfo" {
  const authority = ABSOLUTE_FORM.exec(target)?.[1];
  if (authority === undefined) return null;
  // RFC 9110 §4.2.4 forbids userinfo here, and parsers disagree on which '@' ends it.
  return authority.includes("@") ? "has-userinfo" : authority;
}

/** `host`, `host:port`, `[v6]` or `[v6]:port`; anything else has no name. */
function nameFromAuthority(authority: string): NameFacts {
  const bracketed = /^\[([^\]]*)\](?::\d*)?$/.exec(authority);
  if (bracketed) {
    const literal = (bracketed[1] ?? "").toLowerCase();
    return isIPv6(literal) ? { name: literal, nameIsAddress: true } : NO_NAME;
  }
  const host = /^([^:[\]]*)(?::\d*)?$/.exec(authority)?.[1];
  return host === undefined ? NO_NAME : nameFacts(host);
}

// ---------------------------------------------------------------------------------------------------------------
// Names

const LABEL = /^[a-z0-9_-]{1,63}$/;
const MAX_NAME_LENGTH = 253;
/** A last label like this makes resolvers and URL parsers read the whole name as an IPv4 address (`127.1`, `0x7f.1`). */
const NUMERIC_LABEL = /^(\d+|0x[0-9a-f]*)$/;

/**
 * Lower case, one trailing dot dropped. Something that is not a hostname (spaces, NUL, non-ASCII, empty labels)
 * has no name at all: handing it on could let a resolver read it differently from the policy.
 */
function nameFacts(raw: string): NameFacts {
  const lower = raw.toLowerCase();
  if (isIP(lower) !== 0) return { name: lower, nameIsAddress: true };
  const name = lower.endsWith(".") ? lower.slice(0, -1) : lower;
  if (name.length === 0 || name.length > MAX_NAME_LENGTH) return NO_NAME;
  const labels = name.split(".");
  if (!labels.every((label) => LABEL.test(label))) return NO_NAME;
  return { name, nameIsAddress: NUMERIC_LABEL.test(labels[labels.length - 1] ?? "") };
}

function withoutCR(line: string): string {
  return line.endsWith("\r") ? line.slice(0, -1) : line;
}

/** RFC 9110 OWS is spaces and tabs only; String.trim would also eat characters a server keeps. */
function trimOptionalWhitespace(value: string): string {
  return value.replace(/^[ \t]+|[ \t]+$/g, "");
}
