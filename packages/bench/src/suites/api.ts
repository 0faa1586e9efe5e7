import { createHash } from "node:crypto";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chooseAccelerator, ControlStore, ensureGuestImage, numberedPieces, startLocalServer } from "@codecourier/engine";
import { createSandbox, type Sandbox } from "@codecourier/sdk";
import { floorRestore, prepareFloorState } from "../floor-restore.js";
import { benchHost, type SuiteResult } from "../report.js";
import { single, summarize, type Metric } from "../stats.js";

const FILE_MIB = 1024;
const WATCH_EVENTS = 30;
const SYNC_SMALL_FILES = 10_000;
/** The pool refills 1 s after a hand-out and a restore takes a few seconds under TCG. */
const POOL_REFILL_WAIT_MS = 6_000;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** 1 GiB up through the SDK (a stream of distinct 1 MiB pieces) and back down; MB/s each way, sha256 checked. */
async function fileRoundTrip(sandbox: Sandbox): Promise<{ writeMBps: number; readMBps: number }> {
  const body = numberedPieces(FILE_MIB);
  let t0 = performance.now();
  await sandbox.files.write("bench.bin", body.stream);
  const writeS = (performance.now() - t0) / 1000;
  const down = createHash("sha256");
  let received = 0;
  t0 = performance.now();
  for await (const chunk of await sandbox.files.read("bench.bin", { format: "stream" })) {
    down.update(chunk);
    received += chunk.length;
  }
  const readS = (performance.now() - t0) / 1000;
  if (received !== FILE_MIB << 20 || down.digest("hex") !== body.digest()) throw new Error("the file came back different");
  await sandbox.runCommand("rm -f bench.bin", { check: true });
  const mb = (FILE_MIB * 2 ** 20) / 1e6;
  return { writeMBps: mb / writeS, readMBps: mb / readS };
}

/**
 * Milliseconds from just before `files.write` of a new file in a watched directory to the SDK's callback getting
 * that file's event, for `count` files. Nothing is subtracted: the write's own round trip (SDK → server → agent:
 * temp file, fsync, rename) is inside, since the event follows the rename that ends it; the event then goes
 * guest-watch → agent → server → SDK. The event's time is taken when it comes, before or after the write's answer.
 */
export async function watchEventLatencies(sandbox: Sandbox, count: number): Promise<number[]> {
  const dir = "watch-bench";
  await sandbox.runCommand(`rm -rf ${dir} && mkdir ${dir}`, { check: true });
  const arrivals = new Map<string, (at: number) => void>();
  // Atomic writes land as a rename of their temporary file onto the name.
  await using _watch = await sandbox.files.watch(dir, (event) => {
    if (event.type === "rename" || event.type === "create") arrivals.get(event.path)?.(performance.now());
  });
  const latencies: number[] = [];
  for (let i = 0; i < count; i++) {
    const path = `/root/${dir}/file-${i}`;
    const arrived = new Promise<number>((resolve) => arrivals.set(path, resolve));
    const t0 = performance.now();
    await sandbox.files.write(path, `event ${i}\n`);
    let timer: NodeJS.Timeout | undefined;
    const missing = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`no watch event for ${path} within 10 s`)), 10_000)));
    const at = await Promise.race([arrived, missing]).finally(() => clearTimeout(timer));
    arrivals.delete(path);
    latencies.push(at - t0);
  }
  await sandbox.runCommand(`rm -rf ${dir}`, { check: true });
  return latencies;
}

/**
 * `files.sync` up of `count` small files (100 per directory, 10-20 bytes each) from a local directory into a new
 * directory in the sandbox: files per second over the whole call (listing both sides, the archive built and
 * streamed, extracted in the guest). Checked by counting the files that arrived.
 */
export async function syncSmallFilesPerSecond(sandbox: Sandbox, count: number): Promise<{ filesPerSecond: number; seconds: number }> {
  const local = await mkdtemp(join(tmpdir(), "cc-bench-sync-"));
  try {
    for (let dir = 0; dir < count / 100; dir++) {
      await mkdir(join(local, `d${dir}`));
      await Promise.all(Array.from({ length: Math.min(100, count - dir * 100) }, (_, i) => writeFile(join(local, `d${dir}`, `f${i}.txt`), `file ${dir}/${i}\n`)));
    }
    const remote = `sync-bench-${Date.now()}`;
    const t0 = performance.now();
    const result = await sandbox.files.sync(local, remote, { direction: "up" });
    const seconds = (performance.now() - t0) / 1000;
    const arrived = await sandbox.runCommand(["sh", "-c", 'find "$1" -type f | wc -l', "sh", remote], { check: true });
    if (result.uploaded !== count || Number(arrived.stdout.trim()) !== count) {
      throw new Error(`sync sent ${result.uploaded} files and ${arrived.stdout.trim()} arrived, not ${count}`);
    }
    await sandbox.runCommand(["rm", "-rf", "--", remote], { check: true });
    return { filesPerSecond: count / seconds, seconds };
  } finally {
    await rm(local, { recursive: true, force: true });
  }
}

/**
 * The API as a user meets it: SDK create → first exec over HTTP against the server (pool warm), beside the raw
 * floor (plain QEMU -incoming from a full-RAM state file) measured in the same run; file throughput for 1 GiB.
 */
export async function apiSuite(runs: number, log: (line: string) => void): Promise<SuiteResult> {
  const image = await ensureGuestImage(log);
  const { accel, reason } = await chooseAccelerator(image);
  const notes = [`accelerator ${accel}: ${reason}`];
  const metrics: Record<string, Metric> = {};
  const floorDir = await mkdtemp(join(tmpdir(), "cc-bench-floor-"));
  const server = await startLocalServer({ prefix: "ccbench-api-" });
  const { url } = server;
  log(`server ready at ${url}`);
  try {
    const store = await ControlStore.openSqlite(join(server.home, "control.db"));
    const { apiKey } = await store.createKey("bench");
    await store.close();
    const connection = { url, apiKey };

    const createToExec: number[] = [];
    const createCall: number[] = [];
    for (let run = 1; run <= runs; run++) {
      await sleep(POOL_REFILL_WAIT_MS);
      const t0 = performance.now();
      const sandbox = await createSandbox(connection);
      const t1 = performance.now();
      await sandbox.runCommand(["/bin/true"], { check: true });
      createToExec.push(performance.now() - t0);
      createCall.push(t1 - t0);
      await sandbox.kill();
      log(`create run ${run}/${runs}: ${createToExec.at(-1)!.toFixed(0)} ms`);
    }
    metrics.sdkCreateToFirstExecMs = summarize(createToExec);
    metrics.sdkCreateCallMs = summarize(createCall);

    const floor = await prepareFloorState({ image, accel, memoryMiB: 512, cpus: 1, dir: floorDir });
    const floors: number[] = [];
    for (let run = 1; run <= Math.min(runs, 5); run++) floors.push((await floorRestore(image, floor, `api${run}`)).totalMs);
    metrics.floorRestoreToFirstExecMs = summarize(floors);

    await sleep(POOL_REFILL_WAIT_MS);
    const sandbox = await createSandbox(connection);
    metrics.watchEventLatencyMs = summarize(await watchEventLatencies(sandbox, WATCH_EVENTS));
    log(`watch event latency: p50 ${metrics.watchEventLatencyMs.p50} ms, p95 ${metrics.watchEventLatencyMs.p95} ms`);
    const synced = await syncSmallFilesPerSecond(sandbox, SYNC_SMALL_FILES);
    metrics.syncSmallFilesPerSecond = single(synced.filesPerSecond, "files/s", SYNC_SMALL_FILES, 0);
    log(`sync of ${SYNC_SMALL_FILES} small files: ${synced.seconds.toFixed(1)} s, ${synced.filesPerSecond.toFixed(0)} files/s`);
    const writes: number[] = [];
    const reads: number[] = [];
    const fileRuns = 1; // a 1 GiB round trip takes minutes under TCG here
    for (let run = 1; run <= fileRuns; run++) {
      const { writeMBps, readMBps } = await fileRoundTrip(sandbox);
      writes.push(writeMBps);
      reads.push(readMBps);
      log(`file run ${run}/${fileRuns}: write ${writeMBps.toFixed(0)} MB/s, read ${readMBps.toFixed(0)} MB/s`);
    }
    await sandbox.kill();
    metrics.fileWriteMBps = summarize(writes, "MB/s");
    metrics.fileReadMBps = summarize(reads, "MB/s");
    notes.push(
      `file throughput: a ${FILE_MIB} MiB file through the SDK → server → agent (HTTP/2 over virtio-serial) into the guest's ` +
        "qcow2 disk (write: temp file + fsync + rename) and back; sha256 compared",
      `watchEventLatencyMs: ${WATCH_EVENTS} new files, each from just before the SDK's files.write to its event in the SDK's ` +
        "watch callback (the write's round trip with its fsync included, nothing subtracted)",
      `syncSmallFilesPerSecond: files.sync up of ${SYNC_SMALL_FILES} files of 10-20 bytes (100 per directory) into a new ` +
        "directory: both listings, one tar streamed to the guest and extracted there; one run",
    );
    const ratio = metrics.sdkCreateToFirstExecMs.p50 / metrics.floorRestoreToFirstExecMs.p50;
    const goal = metrics.sdkCreateToFirstExecMs;
    notes.push(`goal sdkCreateToFirstExecMs p50 ≤ 60 ms and p95 ≤ 120 ms: ${goal.p50 <= 60 && goal.p95 <= 120 ? "met" : "missed"} (p50 ${goal.p50}, p95 ${goal.p95})`);
    for (const [name, metric] of [["fileWriteMBps", metrics.fileWriteMBps], ["fileReadMBps", metrics.fileReadMBps]] as const) {
      notes.push(`goal ${name} ≥ 200: ${metric.p50 >= 200 ? "met" : "missed"} (p50 ${metric.p50} MB/s)`);
    }
    return { suite: "api", accel, runs, host: await benchHost(), metrics, ratios: { sdkCreateToFirstExecVsFloor: ratio }, notes };
  } finally {
    await server.stop();
    await rm(floorDir, { recursive: true, force: true });
  }
}
