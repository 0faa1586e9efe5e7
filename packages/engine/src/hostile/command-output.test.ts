// Hostile suite: command output that would blow up the server's memory. A tenant floods run-to-completion commands
// with tens of MB of NUL bytes each, produces binary output, and keeps output in many background processes; the
// server must answer with capped, flagged, exactly counted output, hold a bounded amount of memory, and keep
// serving another tenant. Real server, real VMs. The server's event-loop delay (measured inside it by
// event-loop-probe.ts) and RSS are recorded and printed, never asserted on beyond a generous memory bound.
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { pathToFileURL } from "node:url";
import { API_LIMITS, type ApiCommandResult } from "@codecourier/protocol/api";
import { createSandbox, type ConnectionOptions, type Sandbox } from "@codecourier/sdk";
import { startLocalServer, withServerLog, type LocalServer } from "../testing/local-server.js";
import type { EventLoopWindow } from "./event-loop-probe.js";

const MiB = 1024 * 1024;
const FLOOD_BYTES = 63_000_000;
/** The bound on the server's RSS growth during the floods: generous, but far below what uncapped output takes (~4 GB). */
const MAX_RSS_GROWTH_BYTES = 600 * MiB;
const probeUrl = pathToFileURL(join(import.meta.dirname, "event-loop-probe.js")).href;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** The server's resident set size, from /proc/<pid>/status. */
async function rssBytes(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  const match = /^VmRSS:\s+(\d+) kB$/m.exec(status);
  assert.ok(match, "VmRSS in /proc/<pid>/status");
  return Number(match[1]) * 1024;
}

/** Samples the server's RSS every 100 ms until stopped; resolves with the largest value seen. */
function sampleRss(pid: number): { stop(): Promise<number> } {
  let max = 0;
  let running = true;
  const loop = (async () => {
    for (let samples = 0; running && samples < 100_000; samples++) {
      max = Math.max(max, await rssBytes(pid));
      await sleep(100);
    }
  })();
  return {
    async stop() {
      running = false;
      await loop;
      return max;
    },
  };
}

describe("hostile: command output (real server, real VMs)", () => {
  let server: LocalServer;
  let eventLoopFile: string;
  let hostileKey: string;
  let hostile: ConnectionOptions;
  let neighbour: ConnectionOptions;
  let hostileSandbox: Sandbox;
  let neighbourSandbox: Sandbox;
  let serverPid: number;

  /** The server's event-loop windows recorded so far. */
  async function eventLoopWindows(): Promise<EventLoopWindow[]> {
    const text = await readFile(eventLoopFile, "utf8").catch(() => "");
    return text
      .split("\n")
      .filter((line) => line !== "")
      .map((line) => JSON.parse(line) as EventLoopWindow);
  }

  /** POST …/commands as it is on the wire: the answer's status, its JSON, and its size. */
  async function runRaw(sandboxId: string, body: Record<string, unknown>): Promise<{ status: number; answer: ApiCommandResult; wireBytes: number }> {
    const response = await fetch(`${server.url}/v1/sandboxes/${sandboxId}/commands`, {
      method: "POST",
      headers: { authorization: `Bearer ${hostileKey}`, "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    const text = await response.text();
    return { status: response.status, answer: JSON.parse(text) as ApiCommandResult, wireBytes: Buffer.byteLength(text) };
  }

  before(async () => {
    eventLoopFile = join(tmpdir(), `cc-event-loop-${process.pid}-${Date.now()}.ndjson`);
    server = await startLocalServer({
      prefix: "cchostile-output-",
      env: { NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ""} --import=${probeUrl}`.trim(), CODECOURIER_TEST_EVENT_LOOP_FILE: eventLoopFile },
    });
    hostileKey = await server.createKey("hostile");
    hostile = { url: server.url, apiKey: hostileKey };
    neighbour = { url: server.url, apiKey: await server.createKey("neighbour") };
    hostileSandbox = await withServerLog(server, () => createSandbox(hostile));
    neighbourSandbox = await withServerLog(server, () => createSandbox(neighbour));
    for (let tries = 0; tries < 50 && serverPid === undefined; tries++) {
      const window = (await eventLoopWindows()).at(-1);
      if (window !== undefined) serverPid = window.pid;
      else await sleep(200);
    }
    assert.ok(serverPid !== undefined, "the event-loop probe runs in the server and says its pid");
  });

  after(async () => {
    await hostileSandbox?.kill().catch(() => undefined);
    await neighbourSandbox?.kill().catch(() => undefined);
    await server?.stop();
  });

  it("five parallel 63 MB floods answer with 1 MiB each, flagged and counted; RSS stays bounded; a neighbour is served", async () => {
    await withServerLog(server, async () => {
      // A few quiet seconds first: the event-loop delay of this busy 2-core host without the flood, to compare.
      const quietStarted = Date.now();
      await sleep(4000);
      const rssBefore = await rssBytes(serverPid);
      const rss = sampleRss(serverPid);
      const floodStarted = Date.now();
      const floods = Array.from({ length: 5 }, async () => {
        const started = Date.now();
        const result = await runRaw(hostileSandbox.sandboxId, { cmd: `head -c ${FLOOD_BYTES} /dev/zero` });
        return { ...result, seconds: (Date.now() - started) / 1000 };
      });
      let floodsDone = false;
      const allFloods = Promise.all(floods).finally(() => (floodsDone = true));
      // Meanwhile the other tenant runs `true` over and over: each must complete (their times are recorded).
      const neighbourTimes: number[] = [];
      for (let runs = 0; runs < 200 && (!floodsDone || runs === 0); runs++) {
        const started = Date.now();
        const result = await neighbourSandbox.runCommand("true");
        assert.equal(result.exitCode, 0, "the neighbour's command completes");
        neighbourTimes.push(Date.now() - started);
      }
      const results = await allFloods;
      const floodSeconds = (Date.now() - floodStarted) / 1000;
      const maxRss = await rss.stop();
      for (const { status, answer, wireBytes } of results) {
        assert.equal(status, 200);
        assert.equal(answer.exitCode, 0, "the command ran to its end");
        assert.equal(answer.stdoutTruncated, true);
        assert.equal(answer.stdoutTotalBytes, FLOOD_BYTES, "every byte counted, kept or not");
        assert.equal(answer.stdoutEncoding, "base64", "NUL bytes travel as base64, not as \\u0000");
        assert.equal(Buffer.from(answer.stdout, "base64").length, API_LIMITS.defaultCommandOutputBytes, "the default cap kept");
        assert.ok(Buffer.from(answer.stdout, "base64").every((byte) => byte === 0));
        assert.deepEqual([answer.stderr, answer.stderrTruncated, answer.stderrTotalBytes], ["", false, 0]);
        assert.ok(wireBytes < 1.4 * MiB, `the answer is ~4/3 of the 1 MiB kept: ${wireBytes} bytes`);
      }
      const growth = maxRss - rssBefore;
      const recorded = await eventLoopWindows();
      const quiet = recorded.filter((window) => window.at > quietStarted + 1000 && window.at <= floodStarted).map((window) => window.maxMs);
      const windows = recorded.filter((window) => window.at > floodStarted + 1000);
      const delays = windows.map((window) => window.maxMs);
      console.log(
        `floods: ${results.map((r) => r.seconds.toFixed(1)).join(", ")} s (all ${floodSeconds.toFixed(1)} s); ` +
          `server RSS ${(rssBefore / MiB).toFixed(0)} MB before, ${(maxRss / MiB).toFixed(0)} MB at most (+${(growth / MiB).toFixed(0)} MB); ` +
          `neighbour runCommand("true") ×${neighbourTimes.length}: first ${neighbourTimes[0]} ms, median ${median(neighbourTimes)} ms, ` +
          `p90 ${percentile(neighbourTimes, 0.9)} ms, max ${Math.max(...neighbourTimes)} ms; ` +
          `server event-loop delay, per-second max: quiet before ${Math.max(0, ...quiet).toFixed(1)} ms at most (median ${median(quiet).toFixed(1)}), ` +
          `during the floods ${Math.max(0, ...delays).toFixed(1)} ms at most (median ${median(delays).toFixed(1)}, p90 ${percentile(delays, 0.9).toFixed(1)}); ` +
          `per-second p99 at most ${Math.max(0, ...windows.map((w) => w.p99Ms)).toFixed(1)} ms`,
      );
      assert.ok(growth < MAX_RSS_GROWTH_BYTES, `server RSS grew by ${(growth / MiB).toFixed(0)} MB`);
    });
  });

  it("binary output round-trips exactly as base64; text stays text; control characters never cost 6×", async () => {
    await withServerLog(server, async () => {
      const binary = await runRaw(hostileSandbox.sandboxId, { argv: ["printf", "\\0\\377\\376"] });
      assert.deepEqual([binary.answer.stdoutEncoding, binary.answer.stdout], ["base64", "AP/+"]);
      assert.deepEqual([...(await hostileSandbox.runCommand(["printf", "\\0\\377\\376"])).stdoutBytes], [0, 0xff, 0xfe], "the SDK's stdoutBytes");

      const text = await runRaw(hostileSandbox.sandboxId, { cmd: "printf 'h\\303\\251llo \"quoted\"\\n'; printf 'warn\\n' >&2" });
      assert.deepEqual(
        [text.answer.stdoutEncoding, text.answer.stdout, text.answer.stderrEncoding, text.answer.stderr],
        ["utf8", 'héllo "quoted"\n', "utf8", "warn\n"],
      );

      // \x01 is valid UTF-8, but JSON spells it \u0001: such output goes as base64 too.
      const controls = await runRaw(hostileSandbox.sandboxId, { cmd: "head -c 300000 /dev/zero | tr '\\0' '\\1'" });
      assert.equal(controls.answer.stdoutEncoding, "base64");
      assert.ok(Buffer.from(controls.answer.stdout, "base64").every((byte) => byte === 1));
      assert.ok(controls.wireBytes < 1.4 * 300_000, `${controls.wireBytes} bytes on the wire for 300000 bytes of output`);

      // Cut inside a character: the partial character is dropped, so the text is still text.
      const cut = await runRaw(hostileSandbox.sandboxId, { cmd: "printf 'aé%.0s' $(seq 1000)", maxOutputBytes: 2000 });
      assert.deepEqual([cut.answer.stdoutEncoding, cut.answer.stdoutTruncated, cut.answer.stdoutTotalBytes], ["utf8", true, 3000]);
      assert.equal(cut.answer.stdout, "aé".repeat(666) + "a", "1999 bytes: the last é did not fit whole");

      const tooBig = await runRaw(hostileSandbox.sandboxId, { cmd: "true", maxOutputBytes: API_LIMITS.maxCommandOutputBytes + 1 });
      assert.equal(tooBig.status, 400, "a cap over the documented maximum is refused");
    });
  });

  it("a tenant's output budget bounds kept process output (oldest dropped first, and replay says so) and concurrent commands", async () => {
    await withServerLog(server, async () => {
      const budget = API_LIMITS.tenantOutputBudgetBytes;
      // 24 processes × 4 MiB kept each would be 96 MiB: more than the tenant's 64 MiB. One after the other, so
      // that "oldest first" means whole processes.
      const processes = [];
      for (let i = 0; i < 24; i++) {
        const process = await hostileSandbox.runCommand(`head -c ${5 * MiB} /dev/zero`, { background: true });
        const deadline = Date.now() + 120_000;
        while ((await process.info()).running && Date.now() < deadline) await sleep(100);
        assert.equal((await process.info()).running, false, `process ${process.pid} finished`);
        processes.push(process);
      }
      const kept: number[] = [];
      const replayTruncated: boolean[] = [];
      for (const process of processes) {
        let bytes = 0;
        let truncated = false;
        for await (const chunk of process.output({ follow: false, onTruncated: () => (truncated = true) })) bytes += chunk.data.length;
        kept.push(bytes);
        replayTruncated.push(truncated);
      }
      const keptTotal = kept.reduce((sum, bytes) => sum + bytes, 0);
      console.log(`kept per process (MiB): ${kept.map((bytes) => (bytes / MiB).toFixed(1)).join(" ")}; total ${(keptTotal / MiB).toFixed(1)} MiB`);
      assert.ok(keptTotal <= budget, `the tenant's processes keep ${keptTotal} bytes, over its budget of ${budget}`);
      assert.ok(keptTotal > budget / 2, "the budget is used, not just left empty");
      assert.equal(kept[0], 0, "the oldest output went first");
      assert.equal(replayTruncated[0], true, "and a replay of it says output was dropped");
      // Its window is 4 MiB with each chunk's bookkeeping (KEPT_CHUNK_OVERHEAD_BYTES) counted in.
      assert.ok(kept.at(-1)! > 0.9 * API_LIMITS.maxProcessOutputBytes, "the newest process keeps its whole window");
      assert.ok(replayTruncated.every(Boolean), "every replay starts later than the output's start, and says so");
      const waited = await processes.at(-1)!.wait();
      assert.deepEqual([waited.stdoutTruncated, waited.stdoutTotalBytes], [true, 5 * MiB], "wait() on a process knows what it missed");

      // Five commands that each keep up to 16 MiB at once (80 MiB): together they get at most the budget, and
      // they take it from the kept process output first. The sleep holds every reservation until all five ran.
      const cap = API_LIMITS.maxCommandOutputBytes;
      const results = await Promise.all(
        Array.from({ length: 5 }, () => runRaw(hostileSandbox.sandboxId, { cmd: `head -c ${cap + MiB} /dev/zero; sleep 8`, maxOutputBytes: cap })),
      );
      const lengths = results.map(({ answer }) => Buffer.from(answer.stdout, "base64").length);
      console.log(`five 16 MiB-capped commands at once kept (MiB): ${lengths.map((bytes) => (bytes / MiB).toFixed(1)).join(" ")}`);
      for (const { answer } of results) assert.deepEqual([answer.exitCode, answer.stdoutTruncated, answer.stdoutTotalBytes], [0, true, cap + MiB]);
      const together = lengths.reduce((sum, bytes) => sum + bytes, 0);
      assert.ok(together <= budget, `the commands' output together (${together} bytes) is within the budget`);
      // The budget was full of kept process output: what they got, they got by evicting it.
      assert.ok(together > budget / 2, "the kept process output made room for them");
      assert.ok(lengths.some((bytes) => bytes < cap), "some found the budget full and were cut short");
      let afterwards = 0;
      for (const process of processes) for await (const chunk of process.output({ follow: false })) afterwards += chunk.data.length;
      assert.ok(afterwards < keptTotal, "kept process output was evicted for the commands");
    });
  });
});

function median(values: number[]): number {
  return percentile(values, 0.5);
}

function percentile(values: number[], fraction: number): number {
  if (values.length === 0) return 0;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * fraction))]!;
}
