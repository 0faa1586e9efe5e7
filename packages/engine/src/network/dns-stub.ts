/**
 * The DNS server a sandbox is pointed at. It answers each question through a callback (which applies the network
 * policy and resolves on the host) and never forwards anything itself.
 *
 * UDP only, answers of at most 512 bytes without EDNS: enough for a handful of A records, which is all a sandbox
 * (IPv4 only) gets. Other record types only ever get an rcode, never data, so DNS cannot carry data out (TXT
 * tunnels) or in. The sandbox is untrusted: a packet it sends can make us drop it or answer an error, never throw.
 */
import { createSocket, type RemoteInfo, type Socket as UdpSocket } from "node:dgram";
import { isIPv4, isIPv6 } from "node:net";
import dnsPacket, { type Answer, type DecodedPacket, type Question } from "dns-packet";

export type DnsAnswer =
  | { kind: "addresses"; addresses: string[]; ttlSeconds: number } // IPv4 only; may be empty (NOERROR, no data)
  | { kind: "nxdomain" }
  | { kind: "refused" };

export interface DnsQuestion {
  /** Lower case, without the trailing dot ("" for the root). */
  name: string;
  /** e.g. "A", "AAAA", "TXT"; types dns-packet does not name come as "UNKNOWN_<number>". */
  type: string;
}

export interface DnsClient {
  address: string;
  port: number;
}

export interface DnsStubOptions {
  host: string; // e.g. "127.0.0.1"
  port: number; // 0 = any free port
  /** Decides each question. May be slow: other questions are answered meanwhile. A throw answers SERVFAIL. */
  answer(question: DnsQuestion, from: DnsClient): Promise<DnsAnswer>;
}

export class DnsStubError extends Error {
  override readonly name = "DnsStubError";
}

/** RFC 1035 §4.2.1: the most a UDP answer may carry for a client that did not offer more through EDNS. */
export const MAX_UDP_ANSWER_BYTES = 512;
/** Enough for any client to have a fallback; more only makes the answer longer. */
export const MAX_ADDRESSES_PER_ANSWER = 8;
/** Questions being answered at once; beyond this new ones are dropped, and their clients retry. */
const MAX_PENDING_QUESTIONS = 1024;
const MAX_TTL_SECONDS = 2 ** 31 - 1;
const HEADER_BYTES = 12;
const OPCODE_MASK = 0xf << 11;
const OPCODE_QUERY = 0;

const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 } as const;
type Rcode = (typeof RCODE)[keyof typeof RCODE];

export class DnsStub {
  readonly port: number;
  private pending = 0;
  private closing: Promise<void> | null = null;

  private constructor(
    private readonly socket: UdpSocket,
    private readonly answer: DnsStubOptions["answer"],
  ) {
    this.port = socket.address().port;
    // Errors on an unconnected UDP socket concern one datagram; they must not take the stub down.
    socket.on("error", () => {});
    socket.on("message", (datagram, from) => this.receive(datagram, from));
  }

  static async listen(options: DnsStubOptions): Promise<DnsStub> {
    const socket = createSocket({ type: isIPv6(options.host) ? "udp6" : "udp4" });
    await bind(socket, options.host, options.port);
    return new DnsStub(socket, options.answer);
  }

  /** Stops answering; questions still being decided get no answer. Safe to call more than once. */
  close(): Promise<void> {
    this.closing ??= new Promise((resolve) => this.socket.close(() => resolve()));
    return this.closing;
  }

  private receive(datagram: Buffer, from: RemoteInfo): void {
    if (this.pending >= MAX_PENDING_QUESTIONS) return;
    this.pending++;
    void this.reply(datagram, { address: from.address, port: from.port })
      .catch(() => {}) // reply() handles every failure it expects; this only keeps a bug from crashing the engine.
      .finally(() => this.pending--);
  }

  private async reply(datagram: Buffer, from: DnsClient): Promise<void> {
    const query = decodeQuery(datagram);
    if (query === null) return;
    const response = await this.respond(query, datagram, from);
    if (response === null || this.closing !== null) return;
    this.socket.send(response, from.port, from.address, () => {});
  }

  private async respond(query: DecodedPacket, datagram: Buffer, from: DnsClient): Promise<Buffer | null> {
    const questions = query.questions ?? [];
    if (opcodeOf(query) !== OPCODE_QUERY) return encodeResponse(query, RCODE.NOTIMP, questions);
    const [question] = questions;
    if (questions.length !== 1 || question === undefined || question.class !== "IN" || !questionIsFaithful(datagram, question)) {
      return encodeResponse(query, RCODE.FORMERR, questions);
    }
    let answer: DnsAnswer;
    try {
      answer = await this.answer({ name: normalizedName(question.name), type: question.type }, from);
    } catch {
      return encodeResponse(query, RCODE.SERVFAIL, questions);
    }
    return encodeResponse(query, rcodeOf(answer), questions, addressRecords(question, answer));
  }
}

function bind(socket: UdpSocket, host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const failed = (error: Error): void => {
      socket.close();
      reject(new DnsStubError(`cannot listen for DNS on ${host}:${port}: ${error.message}`, { cause: error }));
    };
    socket.once("error", failed);
    socket.bind(port, host, () => {
      socket.off("error", failed);
      resolve();
    });
  });
}

/** A query from the wire, or null for anything to drop unanswered: garbage, and responses (answering those could loop). */
function decodeQuery(datagram: Buffer): DecodedPacket | null {
  try {
    const packet = dnsPacket.decode(datagram);
    return packet.type === "query" ? packet : null;
  } catch {
    return null;
  }
}

/**
 * dns-packet decodes label bytes as UTF-8 and joins labels with dots, so a label holding a dot or bytes that are
 * not UTF-8 would reach the policy as some other name. Only a question that encodes back to the very bytes the
 * client sent is taken at its word.
 */
function questionIsFaithful(datagram: Buffer, question: Question): boolean {
  try {
    const encoded = dnsPacket.encode({ questions: [question] }).subarray(HEADER_BYTES);
    return datagram.subarray(HEADER_BYTES, HEADER_BYTES + encoded.length).equals(encoded);
  } catch {
    return false;
  }
}

function opcodeOf(packet: DecodedPacket): number {
  return ((packet.flags ?? 0) & OPCODE_MASK) >> 11;
}

function normalizedName(name: string): string {
  const lower = name.toLowerCase();
  return lower.endsWith(".") ? lower.slice(0, -1) : lower;
}

function rcodeOf(answer: DnsAnswer): Rcode {
  switch (answer.kind) {
    case "addresses":
      return RCODE.NOERROR;
    case "nxdomain":
      return RCODE.NXDOMAIN;
    case "refused":
      return RCODE.REFUSED;
  }
}

/** A records for an A question; nothing for any other type, whatever the callback said. */
function addressRecords(question: Question, answer: DnsAnswer): Answer[] {
  if (answer.kind !== "addresses" || question.type !== "A") return [];
  const ttl = Math.min(Math.max(Math.floor(answer.ttlSeconds), 0), MAX_TTL_SECONDS) || 0;
  return answer.addresses
    .filter((address) => isIPv4(address))
    .slice(0, MAX_ADDRESSES_PER_ANSWER)
    .map((address) => ({ type: "A", class: "IN", name: question.name, ttl, data: address }));
}

/**
 * The response to `query`: same id and opcode, RD copied, RA set, the question echoed so the client can match it.
 * dns-packet does not compress names, so with a long name fewer records fit: records are dropped from the end
 * until the answer fits, then the echoed questions too (only ever for error answers to odd queries).
 */
function encodeResponse(query: DecodedPacket, rcode: Rcode, questions: Question[], answers: Answer[] = []): Buffer | null {
  const flags = ((query.flags ?? 0) & (OPCODE_MASK | dnsPacket.RECURSION_DESIRED)) | dnsPacket.RECURSION_AVAILABLE | rcode;
  const response = { type: "response" as const, id: query.id ?? 0, flags, questions, answers: [...answers] };
  try {
    while (response.answers.length > 0 && dnsPacket.encodingLength(response) > MAX_UDP_ANSWER_BYTES) response.answers.pop();
    if (dnsPacket.encodingLength(response) > MAX_UDP_ANSWER_BYTES) response.questions = [];
    return dnsPacket.encode(response);
  } catch {
    return null;
  }
}
