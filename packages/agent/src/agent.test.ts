import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { closeSync, constants as fsConstants, createReadStream, existsSync, openSync } from "node:fs";
import { chmod, mkdtemp, open, readFile, rm, stat, writeFile, type FileHandle } from "node:fs/promises";
import { connect, type ClientHttp2Session, type ClientHttp2Stream, type OutgoingHttpHeaders } from "node:http2";
import { randomBytes } from "node:crypto";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Duplex } from "node:stream";
import { after, before, describe, it } from "node:test";
import {
  AGENT_HANDSHAKE_LIMITS,
  AgentPath,
  EXEC_ID_HEADER,
  EXEC_SPEC_HEADER,
  ExecRecordDecoder,
  ExecRecordFormatError,
  OutputKind,
  encodeExecSpecHeader,
  encodeRecord,
  performHostHandshake,
  type AgentHealth,
  type BackgroundCommandInfo,
  type ExecRecord,
  type ExecSpec,
  type IdentityRequest,
} from "@codecourier/protocol";
import {
  createAgent,
  fdPortIo,
  runSessionLoop,
  validateExecSpec,
  validateIdentityRequest,
  type Agent,
  type IdentityOptions,
  type PortIo,
} from "./index.js";
import { CommandRegistry } from "./commands/registry.js";
import { withOwnHostname } from "./identity/refresh.js";

/**
 * Simulates a virtio-serial port: while no host is connected, read() returns 0 at once (EOF) and writes block
 * until a host connects, like the Linux driver. Bytes a host sent before disconnecting are still read first.
 */
class FakePort implements PortIo {
  readonly #incoming: Buffer[] = [];
  #host: Duplex | undefined;
  #wake: (() => void) | undefined;
  readonly #hostConnected: Array<() => void> = [];

  connectHost(): Duplex {
    const port = this;
    const host = new Duplex({
      read() {},
      write(chunk: Buffer, _encoding, callback) {
        port.#incoming.push(chunk);
        port.#notify();
        callback();
      },
      destroy(error, callback) {
        if (port.#host === host) port.#host = undefined;
        port.#notify();
        callback(error);
      },
    });
    this.#host = host;
    for (const resolve of this.#hostConnected.splice(0)) resolve();
    return host;
  }

  get hostConnected(): boolean {
    return this.#host !== undefined;
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }

  async read(buffer: Buffer): Promise<number> {
    for (;;) {
      const chunk = this.#incoming.shift();
      if (chunk !== undefined) {
        const n = chunk.copy(buffer);
        if (n < chunk.length) this.#incoming.unshift(chunk.subarray(n));
        return n;
      }
      if (this.#host === undefined) return 0;
      await new Promise<void>((resolve) => (this.#wake = resolve));
    }
  }

  /** When set, writes block as if the host had stopped reading, until a later host connects. */
  stallWrites = false;

  async write(data: Uint8Array): Promise<number> {
    // Blocks while no host is connected (without keeping the event loop alive, like a parked threadpool read).
    while (this.#host === undefined || this.stallWrites) {
      await new Promise<void>((resolve) => this.#hostConnected.push(resolve));
    }
    this.#host.push(Buffer.from(data));
    return data.length;
  }
}

function request(
  client: ClientHttp2Session,
  headers: OutgoingHttpHeaders,
  body?: Buffer | string,
): Promise<{ status: number; headers: Record<string, unknown>; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const stream = client.request(headers, { endStream: body === undefined });
    if (body !== undefined) stream.end(body);
    const chunks: Buffer[] = [];
    let head: Record<string, unknown> = {};
    stream.on("response", (h) => (head = h));
    stream.on("data", (chunk: Buffer) => chunks.push(chunk));
    stream.on("end", () => resolve({ status: Number(head[":status"]), headers: head, body: Buffer.concat(chunks) }));
    stream.on("error", reject);
  });
}

async function health(client: ClientHttp2Session): Promise<AgentHealth> {
  const response = await request(client, { ":path": AgentPath.health });
  assert.equal(response.status, 200);
  return JSON.parse(response.body.toString()) as AgentHealth;
}

/** An HTTP/2 client over `end` once the handshake is done, as the host connects. */
async function connectOver(end: Duplex): Promise<ClientHttp2Session> {
  await performHostHandshake(end, randomBytes(AGENT_HANDSHAKE_LIMITS.nonceBytes).toString("hex"), 5000);
  const client = connect("http://agent", { createConnection: () => end });
  client.on("error", () => {});
  return client;
}

async function withLoopback<T>(run: (client: ClientHttp2Session, agent: Agent) => Promise<T>, agent = createAgent()): Promise<T> {
  const { port, stop } = serveOverFakePort(agent);
  const client = await connectOver(port.connectHost());
  try {
    return await run(client, agent);
  } finally {
    client.destroy();
    await stop();
    agent.killAllCommands();
  }
}

/** An agent serving sessions on a fake port, as its main loop does on the real one, until stop(). */
function serveOverFakePort(agent = createAgent()) {
  const port = new FakePort();
  const controller = new AbortController();
  const loop = runSessionLoop(port, (duplex) => agent.serveSession(duplex), { signal: controller.signal, pollIntervalMs: 5 });
  return {
    agent,
    port,
    stop: async () => {
      controller.abort();
      await loop;
    },
  };
}

describe("session loop over a virtio-serial-like port", () => {
  it("serves a new session after the host disconnects and reconnects", async () => {
    const { agent, port, stop } = serveOverFakePort();

    const sessionIds: string[] = [];
    for (let connection = 0; connection < 3; connection++) {
      const client = await connectOver(port.connectHost());
      const first = await health(client);
      assert.equal(first.bootId, agent.bootId);
      sessionIds.push(first.sessionId);
      assert.equal((await health(client)).sessionId, first.sessionId, "same session while connected");
      client.destroy();
      while (port.hostConnected) await new Promise((resolve) => setTimeout(resolve, 5));
    }
    assert.equal(new Set(sessionIds).size, 3, "each connection gets its own session");
    await stop();
  });

  it("notices a disconnect even while a write to the port is blocked", async () => {
    const agent = createAgent();
    const port = new FakePort();
    const stop = new AbortController();
    const sessions: Array<Promise<void>> = [];
    const loop = runSessionLoop(
      port,
      (duplex) => {
        const session = agent.serveSession(duplex);
        sessions.push(session.closed);
        return session;
      },
      { signal: stop.signal, pollIntervalMs: 5 },
    );
    const stalled = await connectOver(port.connectHost());
    await health(stalled);
    port.stallWrites = true;
    stalled.request({ ":path": AgentPath.health }).on("error", () => {});
    await new Promise((resolve) => setTimeout(resolve, 50));
    stalled.destroy();
    await sessions[0]; // the first session ends although its last write never completed
    port.stallWrites = false;

    // The stuck write lands in the next connection (as it would with the real port), before the agent's ready line:
    // the host skips it, so the very first attempt works.
    const client = await connectOver(port.connectHost());
    try {
      assert.equal((await health(client)).bootId, agent.bootId);
    } finally {
      client.destroy();
    }
    stop.abort();
    await loop;
  });

  it("serves a host that connected before the agent saw the previous one leave", async () => {
    const { agent, port, stop } = serveOverFakePort();
    const firstEnd = port.connectHost();
    const first = await connectOver(firstEnd);
    const before = await health(first);
    // The transport goes first (no GOAWAY), and the next host connects in the same tick: the loop's pending read
    // never sees the port without a host, so it gets no EOF, only the new host's preface.
    firstEnd.destroy();
    first.destroy();
    const secondEnd = port.connectHost();
    const second = await connectOver(secondEnd);
    try {
      const after = await health(second);
      assert.equal(after.bootId, before.bootId);
      assert.notEqual(after.sessionId, before.sessionId);
    } finally {
      second.destroy();
      await stop();
    }
  });

  it("skips junk and a stale partial HTTP/2 frame before the host's hello", async () => {
    const { agent, port, stop } = serveOverFakePort();
    // What a restarted agent finds in the port: the previous host's frames, cut off in the middle of one.
    const end = port.connectHost();
    end.write(Buffer.concat([Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Buffer.from([0, 0x40, 0, 0, 0, 0, 0, 0, 1]), randomBytes(1000)]));
    end.write(Buffer.from("CCHELLO1 not-a-nonce\n"));
    const client = await connectOver(end);
    try {
      assert.equal((await health(client)).bootId, agent.bootId);
    } finally {
      client.destroy();
      await stop();
    }
  });

  it("serves the real host after a hello that a stale byte stream happened to hold", async () => {
    const { agent, port, stop } = serveOverFakePort();
    const end = port.connectHost();
    // A well-formed hello inside stale bytes (an upload's content, say): the agent answers a nonce nobody waits for.
    end.write(Buffer.concat([randomBytes(100), Buffer.from(`CCHELLO1 ${"ab".repeat(16)}\n`)]));
    const client = await connectOver(end);
    try {
      assert.equal((await health(client)).bootId, agent.bootId);
    } finally {
      client.destroy();
      await stop();
    }
  });

  it("does not mistake a client preface inside a frame for a new host", () =>
    withLoopback(async (client) => {
      const preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
      const sessionId = (await health(client)).sessionId;
      const response = await request(
        client,
        { ":method": "POST", ":path": AgentPath.exec, [EXEC_SPEC_HEADER]: encodeExecSpecHeader({ argv: ["cat"] }) },
        preface + preface,
      );
      assert.equal(response.status, 200);
      const stdout: Buffer[] = [];
      new ExecRecordDecoder().push(response.body, (record) => {
        if (record.kind === "stdout") stdout.push(Buffer.from(record.payload));
      });
      assert.equal(Buffer.concat(stdout).toString(), preface + preface);
      assert.equal((await health(client)).sessionId, sessionId, "still the same session");
    }));

  it("kills a running command when its host disconnects", async () => {
    const { agent, port, stop } = serveOverFakePort();
    const client = await connectOver(port.connectHost());
    const stream = client.request(
      { ":method": "POST", ":path": AgentPath.exec, [EXEC_SPEC_HEADER]: encodeExecSpecHeader({ argv: ["sleep", "100"] }) },
      { endStream: true },
    );
    stream.on("error", () => {});
    await new Promise((resolve) => stream.once("response", resolve));
    assert.equal(agent.commands.size, 1);
    client.destroy();
    for (let i = 0; i < 200 && agent.commands.size > 0; i++) await new Promise((resolve) => setTimeout(resolve, 10));
    assert.equal(agent.commands.size, 0);
    await stop();
  });
});

describe("session loop over real file descriptors", () => {
  it("reads with blocking fs.read, sees EOF when the host leaves and serves the next host", async () => {
    // Two FIFOs stand in for the port: like virtio-serial, a FIFO reader gets EOF (at once, repeatedly) while no
    // writer is connected, and blocks for data while one is.
    const dir = await mkdtemp(join(tmpdir(), "cc-port-"));
    const toAgent = join(dir, "to-agent");
    const toHost = join(dir, "to-host");
    execFileSync("mkfifo", [toAgent, toHost]);
    const agent = createAgent();
    const stop = new AbortController();
    const agentReadFd = open(toAgent, fsConstants.O_RDONLY); // completes once the first host opens its end
    const agentWriteFd = openSync(toHost, fsConstants.O_RDWR); // never blocks, keeps the FIFO writable
    const hostReader = createReadStream("", { fd: openSync(toHost, fsConstants.O_RDONLY) });
    let hostEnd: Duplex | undefined;
    hostReader.on("data", (chunk) => hostEnd?.push(chunk));

    const connectHost = async (): Promise<{ client: ClientHttp2Session; writer: FileHandle }> => {
      const writer = await open(toAgent, fsConstants.O_WRONLY);
      const duplex = new Duplex({
        read() {},
        write(chunk: Buffer, _encoding, callback) {
          writer.write(chunk).then(() => callback(), callback);
        },
      });
      hostEnd = duplex;
      return { client: await connectOver(duplex), writer };
    };

    const sessions: Array<{ sessionId: string; closed: Promise<void> }> = [];
    const first = connectHost();
    const readFd = await agentReadFd;
    const loop = runSessionLoop(
      fdPortIo(readFd.fd, agentWriteFd),
      (duplex) => {
        const session = agent.serveSession(duplex);
        sessions.push(session);
        return session;
      },
      { signal: stop.signal, pollIntervalMs: 5 },
    );
    try {
      for (let host = 0; host < 2; host++) {
        const { client, writer } = await (host === 0 ? first : connectHost());
        const result = await health(client);
        assert.equal(result.sessionId, sessions.at(-1)?.sessionId);
        client.destroy();
        await writer.close(); // the host hangs up: the agent reads EOF
        await sessions.at(-1)?.closed;
        // The old session's last writes (e.g. its GOAWAY) may still reach the next host: its handshake skips them.
      }
      assert.equal(sessions.length, 2);
    } finally {
      stop.abort();
      await loop;
      await readFd.close();
      closeSync(agentWriteFd); // EOF for the host reader, which otherwise blocks a threadpool thread forever
      hostReader.destroy();
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("agent routes", () => {
  it("answers health with boot and session ids", () =>
    withLoopback(async (client, agent) => {
      const result = await health(client);
      assert.equal(result.ok, true);
      assert.equal(result.bootId, agent.bootId);
      assert.equal(typeof result.kernel, "string");
      assert.equal(result.runningCommands, 0);
    }));

  it("rejects malformed exec specs with 400 bad_request", () =>
    withLoopback(async (client) => {
      const bad = ["not base64!", Buffer.from("{").toString("base64url"), encodeExecSpecHeader({} as never)];
      for (const header of bad) {
        const response = await request(client, { ":method": "POST", ":path": AgentPath.exec, [EXEC_SPEC_HEADER]: header });
        assert.equal(response.status, 400);
        assert.equal(JSON.parse(response.body.toString()).error.code, "bad_request");
      }
    }));

  it("returns 404 for unknown paths and unknown commands, 400 for bad signals", () =>
    withLoopback(async (client) => {
      assert.equal((await request(client, { ":path": "/v1/nope" })).status, 404);
      const signalPath = AgentPath.signal("no-such-id");
      const unknown = await request(client, { ":method": "POST", ":path": signalPath }, JSON.stringify({ signal: "SIGTERM" }));
      assert.equal(unknown.status, 404);
      const badSignal = await request(client, { ":method": "POST", ":path": signalPath }, JSON.stringify({ signal: "SIGNOPE" }));
      assert.equal(badSignal.status, 400);
      const notJson = await request(client, { ":method": "POST", ":path": signalPath }, "{");
      assert.equal(notJson.status, 400);
    }));

  it("validates resize bodies, and answers 404 for an unknown command and 400 for a command without a pty", () =>
    withLoopback(async (client) => {
      const resize = (id: string, body: string) => request(client, { ":method": "POST", ":path": AgentPath.resize(id) }, body);
      for (const body of ["{", "[]", '{"rows":0,"cols":80}', '{"rows":24,"cols":1001}', '{"rows":24}', '{"rows":24,"cols":80,"x":1}']) {
        const response = await resize("no-such-id", body);
        assert.equal(response.status, 400, body);
      }
      assert.equal((await resize("no-such-id", '{"rows":24,"cols":80}')).status, 404);
      const stream = client.request(
        { ":method": "POST", ":path": AgentPath.exec, [EXEC_SPEC_HEADER]: encodeExecSpecHeader({ argv: ["sleep", "100"] }) },
        { endStream: true },
      );
      stream.on("error", () => {});
      const id = String(((await new Promise((resolve) => stream.once("response", resolve))) as Record<string, unknown>)[EXEC_ID_HEADER]);
      const refused = await resize(id, '{"rows":24,"cols":80}');
      assert.equal(refused.status, 400);
      assert.match(JSON.parse(refused.body.toString()).error.message, /not started with a pty/);
      stream.close();
    }));

  it("limits concurrent commands with 429 too_many_commands", () =>
    withLoopback(
      async (client, agent) => {
        const spec = encodeExecSpecHeader({ argv: ["sleep", "100"] });
        const headers = { ":method": "POST", ":path": AgentPath.exec, [EXEC_SPEC_HEADER]: spec };
        const started = [client.request(headers), client.request(headers)].map((stream) => {
          stream.on("error", () => {});
          return new Promise((resolve) => stream.once("response", resolve));
        });
        await Promise.all(started);
        const refused = await request(client, headers);
        assert.equal(refused.status, 429);
        assert.equal(JSON.parse(refused.body.toString()).error.code, "too_many_commands");
        agent.killAllCommands();
      },
      createAgent({ maxConcurrentCommands: 2 }),
    ));

  it("streams records and an exit record for exec", () =>
    withLoopback(async (client) => {
      const response = await request(
        client,
        { ":method": "POST", ":path": AgentPath.exec, [EXEC_SPEC_HEADER]: encodeExecSpecHeader({ shell: "cat; echo oops >&2; exit 4" }) },
        "ping",
      );
      assert.equal(response.status, 200);
      assert.match(String(response.headers[EXEC_ID_HEADER]), /^[0-9a-f-]{36}$/);
      const records: ExecRecord[] = [];
      new ExecRecordDecoder().push(response.body, (record) => records.push({ ...record, payload: Buffer.from(record.payload) }));
      const text = (kind: string) =>
        records.filter((r) => r.kind === kind).map((r) => Buffer.from(r.payload).toString()).join("");
      assert.equal(text("stdout"), "ping");
      assert.equal(text("stderr"), "oops\n");
      assert.equal(records.at(-1)?.kind, "exit");
      assert.deepEqual(JSON.parse(text("exit")), { exitCode: 4, signal: null, timedOut: false });
    }));
});

describe("exec spec validation", () => {
  const rejects = (spec: unknown) => assert.throws(() => validateExecSpec(spec), { status: 400, code: "bad_request" });

  it("accepts well-formed specs", () => {
    const spec = { argv: ["ls", "-l"], env: { A: "1" }, cwd: "/tmp", user: "nobody", timeoutMs: 5, stdin: false };
    assert.deepEqual(validateExecSpec(spec), spec);
    assert.deepEqual(validateExecSpec({ shell: "true", user: 1000 }), { shell: "true", user: 1000 });
    assert.deepEqual(validateExecSpec({ shell: "sh", pty: { rows: 1, cols: 1000 } }), { shell: "sh", pty: { rows: 1, cols: 1000 } });
  });

  it("rejects malformed specs", () => {
    rejects(null);
    rejects([]);
    rejects({});
    rejects({ argv: ["a"], shell: "b" });
    rejects({ argv: [] });
    rejects({ argv: ["a", 1] });
    rejects({ argv: ["a\0b"] });
    rejects({ shell: "" });
    rejects({ shell: "x", extra: 1 });
    rejects({ shell: "x", env: { "A=B": "c" } });
    rejects({ shell: "x", env: { A: 1 } });
    rejects({ shell: "x", cwd: "relative" });
    rejects({ shell: "x", user: "bad user" });
    rejects({ shell: "x", user: -1 });
    rejects({ shell: "x", timeoutMs: 0 });
    rejects({ shell: "x", timeoutMs: 1.5 });
    rejects({ shell: "x", stdin: "yes" });
    for (const pty of [null, "24x80", { rows: 24 }, { rows: 0, cols: 80 }, { rows: 24, cols: 1001 }, { rows: 24.5, cols: 80 }, { rows: 24, cols: 80, x: 1 }]) {
      rejects({ shell: "x", pty });
    }
  });
});

describe("exec record codec", () => {
  const sample = Buffer.concat([
    encodeRecord(OutputKind.stdout, Buffer.from("hello")),
    encodeRecord(OutputKind.stderr, Buffer.alloc(0)),
    encodeRecord(OutputKind.stdout, Buffer.alloc(70_000 >> 2, 7)),
    encodeRecord(OutputKind.exit, Buffer.from("{}")),
  ]);

  it("decodes records split at any byte boundary", () => {
    for (const split of [1, 2, 3, 5, 7, 64, 4096, sample.length]) {
      const decoded: string[] = [];
      const decoder = new ExecRecordDecoder();
      for (let offset = 0; offset < sample.length; offset += split) {
        decoder.push(sample.subarray(offset, offset + split), (r) => decoded.push(`${r.kind}:${r.payload.length}`));
      }
      assert.deepEqual(decoded, ["stdout:5", "stderr:0", "stdout:17500", "exit:2"], `split ${split}`);
      assert.equal(decoder.atRecordBoundary, true);
    }
  });

  it("rejects unknown kinds and oversized records before buffering them", () => {
    assert.throws(() => new ExecRecordDecoder().push(Buffer.from([9, 0, 0, 0, 1, 0]), () => {}), ExecRecordFormatError);
    const huge = Buffer.from([1, 0xff, 0xff, 0xff, 0xff]);
    assert.throws(() => new ExecRecordDecoder().push(huge, () => {}), ExecRecordFormatError);
  });
});

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Decodes an exec or attach response as it streams in. */
class RecordCollector {
  readonly records: ExecRecord[] = [];
  readonly head: Promise<Record<string, unknown>>;
  /** Resolves when the response body has ended. */
  readonly ended: Promise<void>;
  readonly #decoder = new ExecRecordDecoder();

  constructor(readonly stream: ClientHttp2Stream) {
    stream.on("error", () => {});
    this.head = new Promise((resolve) => stream.once("response", (headers) => resolve(headers)));
    this.ended = new Promise((resolve) => stream.once("close", resolve));
    stream.on("data", (chunk: Buffer) =>
      this.#decoder.push(chunk, (record) => this.records.push({ ...record, payload: Buffer.from(record.payload) })),
    );
  }

  text(kind: ExecRecord["kind"]): string {
    return this.records
      .filter((record) => record.kind === kind)
      .map((record) => Buffer.from(record.payload).toString())
      .join("");
  }

  get kinds(): string[] {
    return [...new Set(this.records.map((record) => record.kind))];
  }

  exit(): unknown {
    const last = this.records.at(-1);
    assert.equal(last?.kind, "exit", `records end with ${last?.kind ?? "nothing"}`);
    return JSON.parse(Buffer.from(last.payload).toString());
  }

  async waitForStdout(marker: string): Promise<void> {
    for (let i = 0; i < 500 && !this.text("stdout").includes(marker); i++) await sleep(10);
    assert.ok(this.text("stdout").includes(marker), `no "${marker}" in ${JSON.stringify(this.text("stdout"))}`);
  }
}

function startExec(client: ClientHttp2Session, spec: ExecSpec, options: { endStream?: boolean } = {}): RecordCollector {
  const headers = { ":method": "POST", ":path": AgentPath.exec, [EXEC_SPEC_HEADER]: encodeExecSpecHeader(spec) };
  return new RecordCollector(client.request(headers, { endStream: options.endStream ?? true }));
}

function startAttach(client: ClientHttp2Session, id: string): RecordCollector {
  return new RecordCollector(client.request({ ":path": AgentPath.attach(id) }));
}

async function listCommands(client: ClientHttp2Session): Promise<BackgroundCommandInfo[]> {
  const response = await request(client, { ":path": AgentPath.commands });
  assert.equal(response.status, 200);
  return JSON.parse(response.body.toString()) as BackgroundCommandInfo[];
}

/** Polls the command list until the command has exited. */
async function exitedCommand(client: ClientHttp2Session, id: string): Promise<BackgroundCommandInfo> {
  for (let i = 0; i < 500; i++) {
    const entry = (await listCommands(client)).find((command) => command.id === id);
    if (entry?.running === false) return entry;
    await sleep(10);
  }
  throw new Error(`command ${id} did not exit`);
}

/**
 * One agent behind one port, and hosts that connect to it one after another: what a VM that is paused and resumed
 * (or forked) looks like to the agent.
 */
async function withSuccessiveHosts(
  run: (hosts: { connect(): Promise<ClientHttp2Session>; disconnect(client: ClientHttp2Session): Promise<void> }, agent: Agent) => Promise<void>,
  agent = createAgent(),
): Promise<void> {
  const { port, stop } = serveOverFakePort(agent);
  const clients: ClientHttp2Session[] = [];
  const hosts = {
    async connect() {
      const client = await connectOver(port.connectHost());
      clients.push(client);
      return client;
    },
    async disconnect(client: ClientHttp2Session) {
      client.destroy();
      while (port.hostConnected) await sleep(5);
    },
  };
  try {
    await run(hosts, agent);
  } finally {
    for (const client of clients) client.destroy();
    await stop();
    agent.killAllCommands();
  }
}

describe("background commands", () => {
  let dir: string;
  before(async () => (dir = await mkdtemp(join(tmpdir(), "cc-background-"))));
  after(() => rm(dir, { recursive: true, force: true }));

  it("survive the host going away and can be re-attached from a new session", () =>
    withSuccessiveHosts(async (hosts, agent) => {
      const go = join(dir, "go-1");
      const first = (await hosts.connect());
      const exec = startExec(first, {
        shell: `echo started; while [ ! -e ${go} ]; do sleep 0.02; done; echo after-attach; echo err >&2; exit 5`,
        background: true,
      });
      const id = String((await exec.head)[EXEC_ID_HEADER]);
      await exec.waitForStdout("started");
      await hosts.disconnect(first);
      await sleep(50);
      assert.equal(agent.commands.size, 1, "still running without a host");

      const second = (await hosts.connect());
      const listed = await listCommands(second);
      assert.deepEqual(
        listed.map(({ id, running }) => ({ id, running })),
        [{ id, running: true }],
      );
      assert.ok(Math.abs((listed[0]?.startedAtMs ?? 0) - Date.now()) < 60_000);

      const attached = startAttach(second, id);
      const head = await attached.head;
      assert.equal(head[":status"], 200);
      assert.equal(head[EXEC_ID_HEADER], id);
      await writeFile(go, "");
      await attached.ended;
      assert.equal(attached.text("stdout"), "after-attach\n", "output from the moment of attaching");
      assert.equal(attached.text("stderr"), "err\n");
      assert.deepEqual(attached.exit(), { exitCode: 5, signal: null, timedOut: false });

      const [exited] = await listCommands(second);
      assert.deepEqual(exited?.exit, { exitCode: 5, signal: null, timedOut: false });
      assert.equal(exited?.running, false);
      assert.equal(agent.commands.size, 0);

      const late = startAttach(second, id);
      await late.ended;
      assert.deepEqual(late.kinds, ["exit"], "an exited command answers with its exit record only");
      assert.deepEqual(late.exit(), { exitCode: 5, signal: null, timedOut: false });
    }));

  it("keep reading (and dropping) output while nobody is attached", () =>
    withSuccessiveHosts(async (hosts) => {
      const first = (await hosts.connect());
      // Far more than the pipe and stream buffers hold: it only finishes if the agent reads on after the host left.
      const exec = startExec(first, { shell: "head -c 20000000 /dev/zero; echo done", background: true });
      const id = String((await exec.head)[EXEC_ID_HEADER]);
      await hosts.disconnect(first);
      const exited = await exitedCommand((await hosts.connect()), id);
      assert.deepEqual(exited.exit, { exitCode: 0, signal: null, timedOut: false });
    }));

  it("end stdin when the original stream goes away before its body ends", () =>
    withSuccessiveHosts(async (hosts, agent) => {
      const first = (await hosts.connect());
      const exec = startExec(first, { shell: "cat; exit 7", background: true }, { endStream: false });
      exec.stream.write("partial input");
      const id = String((await exec.head)[EXEC_ID_HEADER]);
      await exec.waitForStdout("partial input");
      assert.equal(agent.commands.size, 1, "cat waits for more input");
      await hosts.disconnect(first);
      const exited = await exitedCommand((await hosts.connect()), id);
      assert.deepEqual(exited.exit, { exitCode: 7, signal: null, timedOut: false });
    }));

  it("hand their output to the newest attachment and detach the previous one", () =>
    withSuccessiveHosts(async (hosts) => {
      const client = (await hosts.connect());
      const exec = startExec(client, { shell: "while :; do echo tick; sleep 0.02; done", background: true });
      const id = String((await exec.head)[EXEC_ID_HEADER]);
      await exec.waitForStdout("tick");
      const first = startAttach(client, id);
      await exec.ended;
      assert.equal(exec.records.at(-1)?.kind, "detached", "the exec stream was detached");
      await first.waitForStdout("tick");
      const second = startAttach(client, id);
      await first.ended;
      assert.equal(first.records.at(-1)?.kind, "detached");
      await second.waitForStdout("tick");
      const signalled = await request(client, { ":method": "POST", ":path": AgentPath.signal(id) }, JSON.stringify({ signal: "SIGTERM" }));
      assert.equal(signalled.status, 204);
      await second.ended;
      assert.deepEqual(second.exit(), { exitCode: null, signal: "SIGTERM", timedOut: false });
    }));

  it("answer 404 for unknown ids and 400 for foreground commands", () =>
    withLoopback(async (client) => {
      const unknown = await request(client, { ":path": AgentPath.attach("no-such-id") });
      assert.equal(unknown.status, 404);
      assert.equal(JSON.parse(unknown.body.toString()).error.code, "not_found");

      const foreground = startExec(client, { argv: ["sleep", "100"] });
      const id = String((await foreground.head)[EXEC_ID_HEADER]);
      const refused = await request(client, { ":path": AgentPath.attach(id) });
      assert.equal(refused.status, 400);
      assert.equal(JSON.parse(refused.body.toString()).error.code, "bad_request");
      assert.deepEqual(await listCommands(client), [], "foreground commands are not listed");

      const wrongMethod = await request(client, { ":method": "POST", ":path": AgentPath.attach(id) });
      assert.equal(wrongMethod.status, 400);
    }));

  it("remember a bounded number of exits", () => {
    const registry = new CommandRegistry(10, 3);
    const exit = { exitCode: 0, signal: null, timedOut: false };
    for (let i = 0; i < 5; i++) {
      const command = { id: `c${i}`, background: true, startedAtMs: i, signal() {} };
      registry.add(command);
      registry.finish(command, exit);
    }
    const foreground = { id: "f", background: false, startedAtMs: 9, signal() {} };
    registry.add(foreground);
    registry.finish(foreground, exit);
    assert.deepEqual([...registry.exitedValues()].map(({ id }) => id), ["c2", "c3", "c4"]);
    assert.equal(registry.size, 0);
  });
});

describe("identity refresh", () => {
  let dir: string;
  let options: Required<IdentityOptions>;
  /** Where the stand-in helper records how it was called. */
  let helperArgs: string;
  let helperInput: string;

  const valid = (): IdentityRequest => ({
    epochMs: Date.UTC(2031, 4, 6, 7, 8, 9, 123),
    entropy: randomBytes(64).toString("base64"),
    hostname: "clone-7.sandbox",
    machineId: "0123456789abcdef0123456789abcdef",
  });
  const post = (client: ClientHttp2Session, body: unknown) =>
    request(client, { ":method": "POST", ":path": AgentPath.identity }, typeof body === "string" ? body : JSON.stringify(body));

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "cc-identity-"));
    helperArgs = join(dir, "helper-args");
    helperInput = join(dir, "helper-input");
    // Stands in for guest-identity --serve, which sets the real clock and needs a guest: records its arguments and
    // each request line, and answers "ok".
    const helperPath = join(dir, "fake-guest-identity");
    await writeFile(helperPath, `#!/bin/sh\necho "$@" > ${helperArgs}\nwhile read -r line; do echo "$line" >> ${helperInput}; echo ok; done\n`);
    await chmod(helperPath, 0o755);
    options = { helperPath, hostnamePath: join(dir, "hostname"), machineIdPath: join(dir, "machine-id"), hostsPath: join(dir, "hosts") };
    await writeFile(options.hostsPath, "127.0.0.1\tlocalhost\n127.0.1.1\tsandbox\n::1\tlocalhost ip6-localhost\n");
  });
  after(() => rm(dir, { recursive: true, force: true }));

  it("runs the helper with the clock and entropy, then sets the hostname and machine id", () =>
    withLoopback(async (client) => {
      const identity = valid();
      const response = await post(client, identity);
      assert.equal(response.status, 200, response.body.toString());
      assert.deepEqual(JSON.parse(response.body.toString()), {
        clockSetTo: identity.epochMs,
        reseeded: true,
        hostname: identity.hostname,
        machineId: identity.machineId,
        machineIdWritten: true,
      });
      assert.equal(await readFile(helperArgs, "utf8"), "--serve\n");
      const hex = Buffer.from(identity.entropy, "base64").toString("hex");
      assert.equal(await readFile(helperInput, "utf8"), `${identity.epochMs} ${hex}\n`);
      assert.equal(await readFile(options.hostnamePath, "utf8"), identity.hostname);
      assert.equal(await readFile(options.machineIdPath, "utf8"), `${identity.machineId}\n`);
      assert.equal((await stat(options.machineIdPath)).mode & 0o777, 0o444);
      assert.equal(await readFile(options.hostsPath, "utf8"), `127.0.0.1\tlocalhost\n127.0.1.1\t${identity.hostname}\n::1\tlocalhost ip6-localhost\n`);
    }, createAgent({ identity: options })));

  it("rewrites the names only when they change; the clock and the reseed are applied every time", () =>
    withLoopback(async (client) => {
      await rm(helperInput, { force: true });
      const first = valid();
      assert.equal((await post(client, first)).status, 200);
      // The sandbox's own user renames it: a later refresh with the same identity (a wake, a resume) leaves that be.
      await writeFile(options.hostnamePath, "renamed-by-user");
      const again = { ...valid(), hostname: first.hostname, machineId: first.machineId };
      const response = await post(client, again);
      assert.equal(response.status, 200, response.body.toString());
      assert.equal(JSON.parse(response.body.toString()).machineIdWritten, true, "reports what the last write did");
      assert.equal(await readFile(options.hostnamePath, "utf8"), "renamed-by-user");
      const lines = (await readFile(helperInput, "utf8")).trim().split("\n");
      assert.equal(lines.length, 2, "the helper ran for both refreshes");
      assert.equal(lines[1], `${again.epochMs} ${Buffer.from(again.entropy, "base64").toString("hex")}`);
      // A new identity (a fork) is written again.
      const fork = { ...valid(), hostname: "clone-8.sandbox", machineId: "fedcba9876543210fedcba9876543210" };
      assert.equal((await post(client, fork)).status, 200);
      assert.equal(await readFile(options.hostnamePath, "utf8"), fork.hostname);
      assert.equal(await readFile(options.machineIdPath, "utf8"), `${fork.machineId}\n`);
    }, createAgent({ identity: options })));

  it("rejects malformed requests with 400 and changes nothing", () =>
    withLoopback(async (client) => {
      await rm(helperInput, { force: true });
      await writeFile(options.hostnamePath, "before");
      const bad: unknown[] = [
        "{",
        [],
        { ...valid(), hostname: "bad_name" },
        { ...valid(), hostname: "-leading-hyphen" },
        { ...valid(), hostname: `${"a".repeat(60)}.com` },
        { ...valid(), hostname: "" },
        { ...valid(), entropy: randomBytes(16).toString("base64") },
        { ...valid(), entropy: randomBytes(600).toString("base64") },
        { ...valid(), entropy: "not base64!" },
        { ...valid(), machineId: "0123456789ABCDEF0123456789ABCDEF" },
        { ...valid(), machineId: "0".repeat(32) },
        { ...valid(), machineId: "abc" },
        { ...valid(), epochMs: 1_700_000_000 },
        { ...valid(), epochMs: 1.5e12 + 0.5 },
        { ...valid(), extra: true },
        { entropy: valid().entropy, hostname: "x", machineId: valid().machineId },
      ];
      for (const body of bad) {
        const response = await post(client, body);
        assert.equal(response.status, 400, `${JSON.stringify(body).slice(0, 120)}: ${response.body.toString()}`);
        assert.equal(JSON.parse(response.body.toString()).error.code, "bad_request");
      }
      assert.equal(existsSync(helperInput), false, "the helper got no request");
      assert.equal(await readFile(options.hostnamePath, "utf8"), "before");
    }, createAgent({ identity: options })));

  it("skips the machine id where there is no writable /etc and says so", () =>
    withLoopback(async (client) => {
      const response = await post(client, valid());
      assert.equal(response.status, 200, response.body.toString());
      assert.equal(JSON.parse(response.body.toString()).machineIdWritten, false);
    }, createAgent({ identity: { ...options, machineIdPath: join(dir, "no-such-etc", "machine-id") } })));

  it("reports a failing or missing helper as a 500 internal error", async () => {
    const failing = join(dir, "failing-helper");
    await writeFile(failing, "#!/bin/sh\necho 'guest-identity: clock_settime(CLOCK_REALTIME): Operation not permitted' >&2\nexit 1\n");
    await chmod(failing, 0o755);
    for (const helperPath of [failing, join(dir, "missing-helper"), undefined]) {
      await withLoopback(async (client) => {
        const response = await post(client, valid());
        assert.equal(response.status, 500);
        const { error } = JSON.parse(response.body.toString());
        assert.equal(error.code, "internal");
        if (helperPath === failing) assert.match(error.message, /Operation not permitted/);
      }, createAgent({ identity: { ...options, helperPath } }));
    }
  });

  it("runs a command that arrives right after a refresh only once the refresh is done", async () => {
    const slow = join(dir, "slow-helper");
    await writeFile(slow, "#!/bin/sh\nwhile read -r line; do sleep 0.3; echo ok; done\n");
    await chmod(slow, 0o755);
    await writeFile(options.hostnamePath, "before");
    await withLoopback(async (client) => {
      const identity = valid();
      const refreshed = post(client, identity);
      const command = startExec(client, { argv: ["cat", options.hostnamePath], stdin: false });
      await command.ended;
      assert.equal(command.text("stdout"), identity.hostname);
      assert.equal((await refreshed).status, 200);
    }, createAgent({ identity: { ...options, helperPath: slow } }));
  });

  it("refuses commands (503) after a failed refresh, until one succeeds", async () => {
    const flaky = join(dir, "flaky-helper");
    const attempts = join(dir, "flaky-attempts");
    await writeFile(flaky, `#!/bin/sh\nwhile read -r line; do echo x >> ${attempts}; if [ $(wc -l < ${attempts}) -eq 1 ]; then echo "error ioctl(RNDRESEEDCRNG): Operation not permitted"; else echo ok; fi; done\n`);
    await chmod(flaky, 0o755);
    await withLoopback(async (client) => {
      assert.equal((await post(client, valid())).status, 500);
      const execTrue = () =>
        request(client, { ":method": "POST", ":path": AgentPath.exec, [EXEC_SPEC_HEADER]: encodeExecSpecHeader({ argv: ["true"], stdin: false }) });
      const refused = await execTrue();
      assert.equal(refused.status, 503);
      assert.equal(JSON.parse(refused.body.toString()).error.code, "identity_refresh_failed");
      assert.equal((await post(client, { ...valid(), hostname: "bad_name" })).status, 400, "a malformed request changes nothing");
      assert.equal((await execTrue()).status, 503);
      assert.equal((await post(client, valid())).status, 200);
      const allowed = startExec(client, { argv: ["true"], stdin: false });
      assert.equal((await allowed.head)[":status"], 200);
      await allowed.ended;
    }, createAgent({ identity: { ...options, helperPath: flaky } }));
  });

  it("names the new hostname in /etc/hosts, adding the line where there is none", () => {
    assert.equal(withOwnHostname("127.0.0.1 localhost\n127.0.1.1   old old.local\n", "new"), "127.0.0.1 localhost\n127.0.1.1\tnew\n");
    assert.equal(withOwnHostname("127.0.0.1 localhost\n", "new"), "127.0.0.1 localhost\n127.0.1.1\tnew\n");
    assert.equal(withOwnHostname("127.0.0.1 localhost", "new"), "127.0.0.1 localhost\n127.0.1.1\tnew");
  });

  it("validates requests without a server too", () => {
    assert.deepEqual(validateIdentityRequest({ ...valid(), entropy: Buffer.alloc(32, 1).toString("base64") }).entropy, Buffer.alloc(32, 1));
    assert.throws(() => validateIdentityRequest({ ...valid(), hostname: "a".repeat(64) }), { status: 400 });
    assert.throws(() => validateIdentityRequest({ ...valid(), entropy: "AAAA" }), { status: 400 });
  });
});
