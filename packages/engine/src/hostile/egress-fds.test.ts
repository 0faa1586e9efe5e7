// Hostile suite: one sandbox must not be able to exhaust the server's file descriptors through the egress proxy.
// The attack (issue 12): a policy allows a target that accepts connections and never answers or closes them (a
// tarpit in a test namespace); the guest opens hundreds of connections to it, exits, and does it again. Each
// connection holds two server sockets (guest side, upstream side); before the fix the upstream side outlived the
// guest's and was no longer counted, so descriptors grew without bound until `spawn ip EMFILE` ended the server.
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { readdir, readFile } from "node:fs/promises";
import { createInterface } from "node:readline";
import { after, before, describe, it } from "node:test";
import type { NetworkEvent, Sandbox } from "@codecourier/sdk";
import { openFileCount, openFileLimit } from "../network/fd-usage.js";
import { startOriginNetns, type OriginNetns } from "../testing/origin-netns.js";
import { startLocalServer, withServerLog, type LocalServer } from "../testing/local-server.js";
import { isAlive } from "../testing/server-process.js";
import { runTool } from "../util/run-tool.js";

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Small limits so that the attack reaches them quickly; the mechanism is the same as with the defaults. */
const MAX_SOCKETS_PER_SANDBOX = 400;
const MAX_RELAYS_PER_SANDBOX = MAX_SOCKETS_PER_SANDBOX / 2;
/** A guest that exits leaves every relay half-closed (its FIN went upstream); this is how long those may linger. */
const HALF_CLOSED_TIMEOUT_MS = 5000;
const TARPIT_PORT = 9000;
const ROUNDS = 3;
const CONNECTIONS_PER_ROUND = 300;
/** Descriptors the server may open besides the sandbox's sockets while the test runs (API requests, event streams). */
const SLACK_FDS = 64;

/** A TCP server in the namespace that accepts, reads and discards, never writes and never closes. */
const TARPIT_SCRIPT = `
  const net = require("node:net");
  let open = 0, max = 0, accepted = 0;
  net.createServer({ allowHalfOpen: true }, (socket) => {
    accepted++; open++; max = Math.max(max, open);
    socket.on("error", () => {});
    socket.resume();
    let gone = false;
    const done = () => { if (!gone) { gone = true; open--; } };
    socket.once("end", done);
    socket.once("close", done);
  }).listen(${TARPIT_PORT}, "0.0.0.0", () => console.log(JSON.stringify({ ready: true })));
  setInterval(() => console.log(JSON.stringify({ open, max, accepted })), 250);
`;

interface TarpitCounts {
  /** Connections that have not ended (no FIN or reset seen) right now, most at once, and all so far. */
  open: number;
  max: number;
  accepted: number;
}

async function startTarpit(netns: string): Promise<{ counts(): TarpitCounts; stop(): void }> {
  const child: ChildProcess = spawn("nsenter", [`--net=/run/netns/${netns}`, process.execPath, "-e", TARPIT_SCRIPT], { stdio: ["ignore", "pipe", "inherit"] });
  child.on("error", () => {});
  let latest: TarpitCounts = { open: 0, max: 0, accepted: 0 };
  await new Promise<void>((resolve, reject) => {
    child.once("exit", (code) => reject(new Error(`the tarpit exited (${code})`)));
    createInterface({ input: child.stdout! }).on("line", (line) => {
      const message = JSON.parse(line) as TarpitCounts & { ready?: boolean };
      if (message.ready) resolve();
      else latest = message;
    });
  });
  return { counts: () => latest, stop: () => void child.kill("SIGKILL") };
}

/** The pid of the server that runs on this data dir (its environment names it). */
async function serverPid(home: string): Promise<number> {
  for (const entry of await readdir("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    const [cmdline, environ] = await Promise.all([readFile(`/proc/${entry}/cmdline`, "utf8").catch(() => ""), readFile(`/proc/${entry}/environ`, "utf8").catch(() => "")]);
    if (cmdline.includes("server/main.js") && environ.split("\0").includes(`CODECOURIER_HOME=${home}`)) return Number(entry);
  }
  throw new Error(`no server process for ${home}`);
}

/** Bash opens `count` connections (held as descriptors), keeps them `holdSeconds`, and exits: the kernel closes them. */
const openAndExit = (address: string, count: number, holdSeconds: number) =>
  `bash -c 'for i in $(seq ${count}); do exec {fd}<>/dev/tcp/${address}/${TARPIT_PORT}; done; sleep ${holdSeconds}'`;

/** Most relayed connections alive at the same moment, from the events' start times and durations. */
function maxConcurrentRelays(events: NetworkEvent[]): number {
  const edges: Array<[number, number]> = [];
  for (const event of events) {
    if (event.type !== "network.connection" || !event.allowed) continue;
    edges.push([event.time, 1], [event.time + event.durationMs, -1]);
  }
  // At one instant an end comes before a start: the end's socket is gone.
  edges.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let now = 0;
  let most = 0;
  for (const [, change] of edges) most = Math.max(most, (now += change));
  return most;
}

describe("hostile: a sandbox opening connections to a tarpit, exiting and repeating (egress file descriptors)", () => {
  let server: LocalServer;
  let origins: OriginNetns;
  let tarpit: Awaited<ReturnType<typeof startTarpit>>;
  let tarpitAddress: string;
  let pid: number;
  let hostile: Sandbox;
  let bystander: Sandbox;
  const events: NetworkEvent[] = [];
  const following = new AbortController();

  /** Samples the server's open descriptors every 200 ms while `work` runs; returns the most seen. */
  async function peakFdsDuring(work: () => Promise<unknown>): Promise<number> {
    let peak = await openFileCount(pid);
    let running = true;
    const sampling = (async () => {
      while (running) {
        peak = Math.max(peak, await openFileCount(pid).catch(() => peak));
        await sleep(200);
      }
    })();
    try {
      await work();
    } finally {
      running = false;
      await sampling;
    }
    return peak;
  }

  /** Waits (bounded) until the server holds at most `limit` descriptors; returns the count. */
  async function fdsSettleAtMost(limit: number, what: string): Promise<number> {
    const deadline = Date.now() + HALF_CLOSED_TIMEOUT_MS + 90_000;
    for (;;) {
      const count = await openFileCount(pid);
      if (count <= limit) return count;
      if (Date.now() > deadline) assert.fail(`${what}: the server still holds ${count} descriptors, expected at most ${limit}`);
      await sleep(500);
    }
  }

  async function run(sandbox: Sandbox, command: string): Promise<void> {
    const result = await sandbox.runCommand(command, { timeoutMs: 300_000 });
    assert.equal(result.exitCode, 0, `${command}: ${result.stdout}${result.stderr}`);
  }

  before(async () => {
    origins = await startOriginNetns(1);
    tarpitAddress = origins.addresses[0]!;
    tarpit = await startTarpit(origins.name);
    server = await startLocalServer({
      prefix: "cchostile-fds-",
      env: {
        CODECOURIER_NETWORK_MAX_SOCKETS_PER_SANDBOX: String(MAX_SOCKETS_PER_SANDBOX),
        CODECOURIER_NETWORK_HALF_CLOSED_TIMEOUT_MS: String(HALF_CLOSED_TIMEOUT_MS),
      },
    });
    pid = await serverPid(server.home);
    const sdk = await import("@codecourier/sdk");
    hostile = await withServerLog(server, async () =>
      sdk.createSandbox({ url: server.url, apiKey: await server.createKey("attacker"), network: { allow: [`${tarpitAddress}/32`] } }),
    );
    bystander = await withServerLog(server, async () => sdk.createSandbox({ url: server.url, apiKey: await server.createKey("bystander") }));
    void (async () => {
      for await (const event of hostile.network.events({ follow: true, signal: following.signal })) events.push(event);
    })().catch(() => {});
  });

  after(async () => {
    following.abort();
    await hostile?.kill().catch(() => {});
    await bystander?.kill().catch(() => {});
    await server?.stop();
    tarpit?.stop();
    await origins?.stop();
  });

  it("keeps the sandbox under its socket cap and gives every descriptor back; the server answers others throughout", async () => {
    await run(hostile, "true");
    const baseline = await openFileCount(pid);
    // Each round: 300 connections (more than the cap allows), held a few seconds, then the guest process exits;
    // the next round starts once the half-closed relays of the last one may have timed out.
    const rounds = Array.from({ length: ROUNDS }, () => openAndExit(tarpitAddress, CONNECTIONS_PER_ROUND, 3)).join(`; sleep ${HALF_CLOSED_TIMEOUT_MS / 1000 + 3}; `);
    const peak = await peakFdsDuring(() => withServerLog(server, () => run(hostile, rounds)));

    const settled = await fdsSettleAtMost(baseline + 16, "after the attack");
    assert.ok(peak <= baseline + MAX_SOCKETS_PER_SANDBOX + SLACK_FDS, `the server's descriptors went from ${baseline} to ${peak}`);
    assert.ok(tarpit.counts().max <= MAX_RELAYS_PER_SANDBOX, `the tarpit saw ${tarpit.counts().max} open connections at once`);

    // Every relay's event is recorded when its last socket has closed, so they are all in by now.
    await sleep(1000);
    const relayed = events.filter((e) => e.type === "network.connection" && e.allowed);
    const refused = events.filter((e) => e.type === "network.connection" && e.rule === "limit:sandbox-sockets");
    assert.ok(maxConcurrentRelays(events) <= MAX_RELAYS_PER_SANDBOX, `${maxConcurrentRelays(events)} relays were open at once`);
    assert.ok(relayed.length > MAX_RELAYS_PER_SANDBOX, `only ${relayed.length} connections were relayed: later rounds found the cap still taken`);
    assert.ok(refused.length > 0, "no connection was refused at the cap");
    assert.match(refused[0]!.type === "network.connection" ? (refused[0]!.error ?? "") : "", new RegExp(`limit is ${MAX_SOCKETS_PER_SANDBOX}`));
    assert.equal(tarpit.counts().open, 0, "connections the guest closed are still open at the tarpit");
    process.stderr.write(
      `egress-fds: descriptors ${baseline} → peak ${peak} → ${settled}; relayed ${relayed.length}, refused at the cap ${refused.length}, ` +
        `tarpit accepted ${tarpit.counts().accepted} (at most ${tarpit.counts().max} at once)\n`,
    );

    await run(bystander, "true");
  });

  it("at its descriptor budget the server refuses new connections with a limit event, stays up and keeps answering", async () => {
    const original = await openFileLimit(pid);
    const before = await openFileCount(pid);
    // A soft limit that leaves room for only ~30 relays (the budget keeps 256 descriptors for everything else).
    const soft = before + 60 + 256;
    await runTool("prlimit", ["--pid", String(pid), `--nofile=${soft}:${original.hard}`]);
    try {
      // The server re-reads its limit every second.
      await sleep(2500);
      const seen = events.length;
      const peak = await peakFdsDuring(() => withServerLog(server, () => run(hostile, openAndExit(tarpitAddress, CONNECTIONS_PER_ROUND, 3))));
      assert.ok(peak < soft, `the server reached ${peak} descriptors of its ${soft}`);
      const refused = events.slice(seen).filter((e) => e.type === "network.connection" && e.rule === "limit:server-fds");
      assert.ok(refused.length > 0, `no connection was refused at the descriptor budget; saw ${JSON.stringify(events.slice(-3))}`);
      const error = refused[0]!.type === "network.connection" ? (refused[0]!.error ?? "") : "";
      assert.match(error, new RegExp(`file descriptors open, its budget for new connections is ${soft - 256} \\(soft limit ${soft}\\)`));
      // Still up, still serving another tenant's VM and the API.
      assert.ok(isAlive(pid), `the server died at its descriptor budget:\n${server.log().slice(-3000)}`);
      await run(bystander, "true");
      assert.equal((await fetch(`${server.url}/health`)).status, 200);
      await fdsSettleAtMost(before + 16, "after the attack at the budget");
    } finally {
      await runTool("prlimit", ["--pid", String(pid), `--nofile=${original.soft}:${original.hard}`]);
    }
  });

  it("survives running out of descriptors altogether (EMFILE) and works again once some are free", async () => {
    const original = await openFileLimit(pid);
    const seen = events.length;
    // The guest connects while the server cannot open a single descriptor more: accept() fails (EMFILE), as do the
    // nft and ip the server spawns (drop counters are polled every second while someone follows the events).
    const attack = hostile
      .runCommand(`sleep 2; ${openAndExit(tarpitAddress, 50, 2)}`, { timeoutMs: 120_000 })
      .then((result) => `exit ${result.exitCode}`, (error: unknown) => `failed: ${String(error)}`);
    await sleep(500);
    await runTool("prlimit", ["--pid", String(pid), `--nofile=${await openFileCount(pid)}:${original.hard}`]);
    try {
      await sleep(6000);
    } finally {
      // Fails only when the server is gone, which the assertion below reports with its log.
      await runTool("prlimit", ["--pid", String(pid), `--nofile=${original.soft}:${original.hard}`]).catch(() => {});
    }
    // Whatever became of that command (its answer may have been lost), the server is up and serves everyone again.
    const attackOutcome = await attack;
    assert.ok(isAlive(pid), `the server died when it ran out of descriptors:\n${server.log().slice(-3000)}`);
    process.stderr.write(`egress-fds: the command run while the server was out of descriptors: ${attackOutcome}\n`);
    await sleep(2000);
    assert.equal((await fetch(`${server.url}/health`)).status, 200);
    await run(bystander, "true");
    await run(hostile, openAndExit(tarpitAddress, 5, 1));
    const deadline = Date.now() + HALF_CLOSED_TIMEOUT_MS + 30_000;
    while (!events.slice(seen).some((e) => e.type === "network.connection" && e.allowed)) {
      if (Date.now() > deadline) assert.fail(`no connection was relayed after the descriptors came back (the attack: ${attackOutcome})`);
      await sleep(250);
    }
  });
});
