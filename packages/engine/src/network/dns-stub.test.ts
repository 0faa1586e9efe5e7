import assert from "node:assert/strict";
import { createSocket, type Socket as UdpSocket } from "node:dgram";
import { afterEach, describe, it } from "node:test";
import dnsPacket, { type DecodedPacket, type Packet, type RecordType, type StringAnswer } from "dns-packet";
import { DnsStub, DnsStubError, type DnsAnswer, type DnsQuestion, type DnsStubOptions } from "./dns-stub.js";

const HOST = "127.0.0.1";
/** Every test that waits on the network gets this long: a stub that never answers fails instead of stalling. */
const TEST_TIMEOUT = { timeout: 10_000 };
/** How long a test waits to be sure no answer is coming. */
const SILENCE_MS = 150;

const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 } as const;

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

interface Asked {
  question: DnsQuestion;
  from: { address: string; port: number };
}

/** A stub whose callback records each question and answers with `decide`. */
async function startStub(decide: (question: DnsQuestion) => Promise<DnsAnswer> | DnsAnswer): Promise<{ stub: DnsStub; asked: Asked[] }> {
  const asked: Asked[] = [];
  const answer: DnsStubOptions["answer"] = async (question, from) => {
    asked.push({ question, from });
    return decide(question);
  };
  const stub = await DnsStub.listen({ host: HOST, port: 0, answer });
  cleanups.push(() => stub.close());
  return { stub, asked };
}

/** A UDP client; each call to `next` waits for the next datagram it receives, or null after `waitMs`. */
async function startClient(): Promise<{ socket: UdpSocket; send(bytes: Buffer, port: number): void; next(waitMs?: number): Promise<Buffer | null> }> {
  const socket = createSocket("udp4");
  const received: Buffer[] = [];
  const waiting: Array<(datagram: Buffer) => void> = [];
  socket.on("message", (datagram) => {
    const waiter = waiting.shift();
    if (waiter) waiter(datagram);
    else received.push(datagram);
  });
  await new Promise<void>((resolve) => socket.bind(0, HOST, () => resolve()));
  cleanups.push(() => new Promise((resolve) => socket.close(() => resolve())));
  return {
    socket,
    send: (bytes, port) => socket.send(bytes, port, HOST),
    next: (waitMs = 5_000) => {
      const datagram = received.shift();
      if (datagram) return Promise.resolve(datagram);
      return new Promise((resolve) => {
        const waiter = (answer: Buffer): void => {
          clearTimeout(timer);
          resolve(answer);
        };
        const timer = setTimeout(() => {
          waiting.splice(waiting.indexOf(waiter), 1);
          resolve(null);
        }, waitMs);
        waiting.push(waiter);
      });
    },
  };
}

function query(name: string, type: RecordType, extra: Partial<Packet> = {}): Buffer {
  return dnsPacket.encode({ type: "query", id: 4242, flags: dnsPacket.RECURSION_DESIRED, questions: [{ type, name, class: "IN" }], ...extra });
}

/** Sends one query from a fresh client and decodes the answer. */
async function ask(stub: DnsStub, bytes: Buffer): Promise<DecodedPacket> {
  const client = await startClient();
  client.send(bytes, stub.port);
  const answer = await client.next();
  assert.ok(answer, "the stub answered");
  return dnsPacket.decode(answer);
}

function rcodeOf(packet: DecodedPacket): number {
  return (packet.flags ?? 0) & 0xf;
}

function addressesOf(packet: DecodedPacket): string[] {
  return (packet.answers ?? []).map((answer) => {
    assert.equal(answer.type, "A");
    return (answer as StringAnswer).data;
  });
}

const addresses = (...list: string[]): DnsAnswer => ({ kind: "addresses", addresses: list, ttlSeconds: 60 });

describe("DnsStub", () => {
  it("answers an A question with the callback's addresses, echoing id, RD and the question", TEST_TIMEOUT, async () => {
    const { stub, asked } = await startStub(() => addresses("93.184.216.34", "93.184.216.35"));
    const client = await startClient();
    client.send(query("www.example.com", "A"), stub.port);
    const response = dnsPacket.decode((await client.next())!);

    assert.equal(response.id, 4242);
    assert.equal(response.type, "response");
    assert.equal(response.flag_rd, true);
    assert.equal(response.flag_ra, true);
    assert.equal(rcodeOf(response), RCODE.NOERROR);
    assert.deepEqual(response.questions, [{ name: "www.example.com", type: "A", class: "IN" }]);
    assert.deepEqual(addressesOf(response), ["93.184.216.34", "93.184.216.35"]);
    assert.deepEqual(
      response.answers?.map((answer) => [answer.name, (answer as StringAnswer).ttl, (answer as StringAnswer).class]),
      [
        ["www.example.com", 60, "IN"],
        ["www.example.com", 60, "IN"],
      ],
    );
    assert.deepEqual(asked, [{ question: { name: "www.example.com", type: "A" }, from: { address: HOST, port: client.socket.address().port } }]);
  });

  it("copies RD when it is clear and answers NOERROR with no data for an empty address list", TEST_TIMEOUT, async () => {
    const { stub } = await startStub(() => addresses());
    const response = await ask(stub, query("empty.example.com", "A", { id: 7, flags: 0 }));
    assert.equal(response.id, 7);
    assert.equal(response.flag_rd, false);
    assert.equal(rcodeOf(response), RCODE.NOERROR);
    assert.deepEqual(response.answers, []);
  });

  it("answers NXDOMAIN and REFUSED as the callback says", TEST_TIMEOUT, async () => {
    const { stub } = await startStub((question) => (question.name.startsWith("missing") ? { kind: "nxdomain" } : { kind: "refused" }));
    const missing = await ask(stub, query("missing.example.com", "A"));
    assert.equal(rcodeOf(missing), RCODE.NXDOMAIN);
    assert.deepEqual(missing.answers, []);
    const denied = await ask(stub, query("denied.example.com", "A"));
    assert.equal(rcodeOf(denied), RCODE.REFUSED);
    assert.deepEqual(denied.answers, []);
  });

  for (const type of ["AAAA", "TXT", "MX", "CNAME"] as const) {
    it(`never carries records for ${type}, but lets the callback choose the rcode`, TEST_TIMEOUT, async () => {
      const { stub, asked } = await startStub((question) => (question.name === "gone.example.com" ? { kind: "nxdomain" } : addresses("10.0.0.1")));
      const found = await ask(stub, query("found.example.com", type));
      assert.equal(rcodeOf(found), RCODE.NOERROR);
      assert.deepEqual(found.answers, []);
      assert.deepEqual(found.questions, [{ name: "found.example.com", type, class: "IN" }]);
      const gone = await ask(stub, query("gone.example.com", type));
      assert.equal(rcodeOf(gone), RCODE.NXDOMAIN);
      assert.deepEqual(
        asked.map(({ question }) => question.type),
        [type, type],
      );
    });
  }

  it("passes types dns-packet does not name (HTTPS, 65) through by number, without records", TEST_TIMEOUT, async () => {
    const { stub, asked } = await startStub(() => addresses("10.0.0.1"));
    const bytes = query("svc.example.com", "A");
    bytes.writeUInt16BE(65, bytes.length - 4);
    const response = await ask(stub, bytes);
    assert.equal(rcodeOf(response), RCODE.NOERROR);
    assert.deepEqual(response.answers, []);
    assert.equal(asked[0]?.question.type, "UNKNOWN_65");
  });

  it("lower-cases the name for the callback but echoes it as sent", TEST_TIMEOUT, async () => {
    const { stub, asked } = await startStub(() => addresses("10.0.0.1"));
    const response = await ask(stub, query("WwW.ExAmPlE.CoM.", "A"));
    assert.deepEqual(asked.map(({ question }) => question.name), ["www.example.com"]);
    assert.equal(response.questions?.[0]?.name, "WwW.ExAmPlE.CoM");
    assert.equal(response.answers?.[0]?.name, "WwW.ExAmPlE.CoM");
  });

  it("gives the root name as an empty string", TEST_TIMEOUT, async () => {
    const { stub, asked } = await startStub(() => ({ kind: "refused" }));
    const response = await ask(stub, query(".", "A"));
    assert.equal(rcodeOf(response), RCODE.REFUSED);
    assert.equal(asked[0]?.question.name, "");
  });

  it("answers at most 8 addresses, drops what is not IPv4, and stays within 512 bytes", TEST_TIMEOUT, async () => {
    const many = Array.from({ length: 20 }, (_, index) => `10.0.0.${index + 1}`);
    const { stub } = await startStub(() => addresses("::1", "not an address", ...many));
    const client = await startClient();
    client.send(query("many.example.com", "A"), stub.port);
    const raw = (await client.next())!;
    assert.ok(raw.length <= 512);
    assert.deepEqual(addressesOf(dnsPacket.decode(raw)), many.slice(0, 8));
  });

  it("answers fewer addresses for a long name rather than going over 512 bytes", TEST_TIMEOUT, async () => {
    const longName = `${"a".repeat(60)}.${"b".repeat(60)}.example.com`;
    const { stub } = await startStub(() => addresses("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6", "10.0.0.7", "10.0.0.8"));
    const client = await startClient();
    client.send(query(longName, "A"), stub.port);
    const raw = (await client.next())!;
    assert.ok(raw.length <= 512, `${raw.length} bytes`);
    const answered = addressesOf(dnsPacket.decode(raw));
    assert.ok(answered.length >= 1 && answered.length < 8, `${answered.length} addresses`);
  });

  it("clamps the TTL to whole non-negative seconds", TEST_TIMEOUT, async () => {
    const { stub } = await startStub((question) => ({ kind: "addresses", addresses: ["10.0.0.1"], ttlSeconds: question.name === "negative.example.com" ? -5 : 12.7 }));
    const negative = await ask(stub, query("negative.example.com", "A"));
    assert.equal((negative.answers?.[0] as StringAnswer).ttl, 0);
    const fractional = await ask(stub, query("fraction.example.com", "A"));
    assert.equal((fractional.answers?.[0] as StringAnswer).ttl, 12);
  });

  it("answers SERVFAIL when the callback throws", TEST_TIMEOUT, async () => {
    const { stub } = await startStub(() => {
      throw new Error("resolver down");
    });
    const response = await ask(stub, query("broken.example.com", "A"));
    assert.equal(rcodeOf(response), RCODE.SERVFAIL);
    assert.deepEqual(response.answers, []);
  });

  it("answers FORMERR to two questions or a class other than IN, without asking the callback", TEST_TIMEOUT, async () => {
    const { stub, asked } = await startStub(() => addresses("10.0.0.1"));
    const two = await ask(
      stub,
      dnsPacket.encode({
        type: "query",
        id: 1,
        questions: [
          { type: "A", name: "one.example.com", class: "IN" },
          { type: "A", name: "two.example.com", class: "IN" },
        ],
      }),
    );
    assert.equal(rcodeOf(two), RCODE.FORMERR);
    assert.equal(two.id, 1);
    assert.deepEqual(two.answers, []);
    const none = await ask(stub, dnsPacket.encode({ type: "query", id: 2, questions: [] }));
    assert.equal(rcodeOf(none), RCODE.FORMERR);
    const chaos = await ask(stub, dnsPacket.encode({ type: "query", id: 3, questions: [{ type: "TXT", name: "version.bind", class: "CH" }] }));
    assert.equal(rcodeOf(chaos), RCODE.FORMERR);
    assert.deepEqual(chaos.answers, []);
    assert.deepEqual(asked, []);
  });

  it("answers FORMERR to a name dns-packet would misread (a dot inside a label)", TEST_TIMEOUT, async () => {
    const { stub, asked } = await startStub(() => addresses("10.0.0.1"));
    const header = dnsPacket.encode({ type: "query", id: 9, questions: [] });
    header.writeUInt16BE(1, 4); // one question
    const label = Buffer.from("good.example.com");
    const question = Buffer.concat([Buffer.from([label.length]), label, Buffer.from("\x04evil\x00", "latin1"), Buffer.from([0, 1, 0, 1])]);
    const response = await ask(stub, Buffer.concat([header, question]));
    assert.equal(rcodeOf(response), RCODE.FORMERR);
    assert.deepEqual(asked, []);
  });

  it("answers NOTIMP, keeping the opcode, to anything but a standard query", TEST_TIMEOUT, async () => {
    const { stub, asked } = await startStub(() => addresses("10.0.0.1"));
    const NOTIFY = 4;
    const response = await ask(stub, query("zone.example.com", "SOA", { flags: NOTIFY << 11 }));
    assert.equal(rcodeOf(response), RCODE.NOTIMP);
    assert.equal(((response.flags ?? 0) >> 11) & 0xf, NOTIFY);
    assert.deepEqual(asked, []);
  });

  it("drops malformed datagrams and responses silently, and still answers afterwards", TEST_TIMEOUT, async () => {
    const { stub, asked } = await startStub(() => addresses("10.0.0.1"));
    const client = await startClient();
    const valid = query("after.example.com", "A");
    const garbage = [
      Buffer.alloc(0),
      Buffer.from("hello"),
      valid.subarray(0, 20),
      Buffer.concat([valid.subarray(0, 12), Buffer.from([0xc0, 0xff, 0, 1, 0, 1])]), // a compression pointer to nowhere
      Buffer.from(Array.from({ length: 300 }, (_, index) => (index * 37) % 256)),
      dnsPacket.encode({ type: "response", id: 5, questions: [{ type: "A", name: "loop.example.com", class: "IN" }] }),
    ];
    for (const datagram of garbage) client.send(datagram, stub.port);
    assert.equal(await client.next(SILENCE_MS), null);
    client.send(valid, stub.port);
    const response = dnsPacket.decode((await client.next())!);
    assert.deepEqual(addressesOf(response), ["10.0.0.1"]);
    assert.deepEqual(
      asked.map(({ question }) => question.name),
      ["after.example.com"],
    );
  });

  it("keeps answering others while one answer is slow", TEST_TIMEOUT, async () => {
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    const { stub } = await startStub(async (question) => {
      if (question.name === "slow.example.com") await released;
      return addresses(question.name === "slow.example.com" ? "10.0.0.1" : "10.0.0.2");
    });
    const client = await startClient();
    client.send(query("slow.example.com", "A", { id: 1 }), stub.port);
    client.send(query("fast.example.com", "A", { id: 2 }), stub.port);
    const first = dnsPacket.decode((await client.next())!);
    assert.equal(first.id, 2);
    release();
    const second = dnsPacket.decode((await client.next())!);
    assert.equal(second.id, 1);
    assert.deepEqual(addressesOf(second), ["10.0.0.1"]);
  });

  it("sends nothing for questions still pending when it closes, and closes more than once", TEST_TIMEOUT, async () => {
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    const { stub } = await startStub(async () => {
      await released;
      return addresses("10.0.0.1");
    });
    const client = await startClient();
    client.send(query("late.example.com", "A"), stub.port);
    await new Promise((resolve) => setTimeout(resolve, 50));
    await stub.close();
    release();
    assert.equal(await client.next(SILENCE_MS), null);
    await stub.close();
  });

  it("rejects with DnsStubError when it cannot listen", async () => {
    const { stub } = await startStub(() => addresses());
    await assert.rejects(DnsStub.listen({ host: HOST, port: stub.port, answer: async () => addresses() }), DnsStubError);
  });
});
