import { mkdtemp, rm } from "node:fs/promises";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import {
  chooseAccelerator,
  createIdentityRequest,
  dataDir,
  ensureGuestImage,
  findEngineQemus,
  SandboxEngine,
  type Accelerator,
  type GuestImage,
  type RunningSandbox,
} from "@codecourier/engine";
import type { BenchOptions } from "../main.js";
import { floorRestore, prepareFloorState, type FloorSample } from "../floor-restore.js";
import { cpuSeconds, memAvailableMiB, pssBreakdownKiB, pssKiB } from "../host-proc.js";
import { benchHost, type SuiteResult } from "../report.js";
import { single, summarize, type Metric } from "../stats.js";

const TEMPLATE_MIB = 512;
const BIG_TEMPLATE_MIB = 1024;
const DEFAULT_IDLE_CLONES = 10;
const IDLE_SETTLE_MS = 3_000;
const IDLE_WINDOW_MS = 10_000;
const DEFAULT_DURATION_S = 60;
const SUSTAINED_POOL_SIZE = 4;
const DEFAULT_MAX_CLONES = 200;
const DEFAULT_MIN_AVAILABLE_MIB = 2048;
const DEFAULT_DENSITY_MINUTES = 15;
/** Density also stops once one create → first exec takes longer than this: the host's CPUs are saturated. */
const DENSITY_SLOW_CREATE_MS = 30_000;

/** Guest commands that fill a tmpfs with non-zero data (zero pages would be skipped by migration and not representative). */
const FILL_DIR = "/mnt/cc-bench-fill";
const MOUNT_FILL = `mkdir -p ${FILL_DIR} && mount -t tmpfs -o size=900m,huge=always tmpfs ${FILL_DIR}`;
/** 64 MiB of random bytes (about 30 MB/s under TCG). */
const FILL_64 = `dd if=/dev/urandom of=${FILL_DIR}/0 bs=1M count=64 2>/dev/null`;
/** Seven copies of the first 64 MiB: 512 MiB in all (about 65 MB/s under TCG, twice as fast as /dev/urandom). */
const FILL_TO_512 = `for i in 1 2 3 4 5 6 7; do dd if=${FILL_DIR}/0 of=${FILL_DIR}/$i bs=1M 2>/dev/null || exit 1; done`;
const FILL_SIZE_MIB = `du -sm ${FILL_DIR} | cut -f1`;

const GOALS = [
  "createToFirstExecMs p50 ≤ 50 ms and p95 ≤ 100 ms",
  "resumeToFirstExecMs p95 ≤ 150 ms",
  "snapshotMs_512MiB ≤ 1 s",
  "idle clone PSS ≤ 40 MiB",
  "idle clone CPU ≤ 0.5 %",
  "≥ 200 idle clones held",
  "≥ 20 creates/s sustained",
];

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function sh(sandbox: RunningSandbox, command: string): Promise<string> {
  const result = await sandbox.agent.run({ shell: command, stdin: false });
  if (result.exitCode !== 0) {
    throw new Error(`guest command failed (${result.exitCode}): ${command}\n${result.stderr.toString().slice(0, 1000)}`);
  }
  return result.stdout.toString();
}

async function firstExec(sandbox: RunningSandbox): Promise<void> {
  const result = await sandbox.agent.run({ argv: ["/bin/true"] });
  if (result.exitCode !== 0) throw new Error(`/bin/true exited ${result.exitCode} in ${sandbox.id}`);
}

/** The same first commands a pool clone runs before it is stopped (see the engine's warm pool). */
async function warmLikePool(sandbox: RunningSandbox): Promise<void> {
  for (let i = 0; i < 3; i++) await firstExec(sandbox);
  await sh(sandbox, "true");
}

interface MigrationStats {
  totalMs: number;
  normalMiB: number;
  zeroPages: number;
  mbps: number;
}

/** The sandbox QEMU's last outgoing migration (the RAM copy of the snapshot just taken). */
async function lastMigration(sandbox: RunningSandbox): Promise<MigrationStats> {
  const info = await sandbox.vm.qmp.execute<{
    status?: string;
    "total-time"?: number;
    ram?: { "normal-bytes"?: number; duplicate?: number; mbps?: number };
  }>("query-migrate");
  if (info.status !== "completed") throw new Error(`query-migrate after a snapshot: status ${info.status}`);
  return {
    totalMs: info["total-time"] ?? NaN,
    normalMiB: (info.ram?.["normal-bytes"] ?? NaN) / 2 ** 20,
    zeroPages: info.ram?.duplicate ?? NaN,
    mbps: info.ram?.mbps ?? NaN,
  };
}

interface IdleReading {
  pssMiB: number[];
  cpuPct: number[];
  breakdown: string;
}

/** PSS and CPU share of each process over IDLE_WINDOW_MS, after IDLE_SETTLE_MS. */
async function readIdle(pids: number[], ramPathPart: string): Promise<IdleReading> {
  await sleep(IDLE_SETTLE_MS);
  const cpu0 = pids.map(cpuSeconds);
  const t0 = performance.now();
  await sleep(IDLE_WINDOW_MS);
  const cpu1 = pids.map(cpuSeconds);
  const wallS = (performance.now() - t0) / 1000;
  const pss = pids.map((pid) => pssKiB(pid) / 1024);
  const cpuPct = pids.map((_, i) => ((cpu1[i]! - cpu0[i]!) / wallS) * 100);
  // Where the median clone's PSS is: its share of guest RAM (the template's memory file, mapped private: shared
  // clean pages split between the clones, plus the pages it wrote), anonymous memory (QEMU heap, TCG translation
  // cache), other files (QEMU binary and libraries).
  const median = [...pids].sort((a, b) => pssKiB(a) - pssKiB(b))[Math.floor(pids.length / 2)]!;
  const parts = pssBreakdownKiB(median, ramPathPart);
  const mib = (kib: number) => (kib / 1024).toFixed(1);
  return {
    pssMiB: pss,
    cpuPct,
    breakdown:
      `guest RAM ${mib(parts.guestRam)} MiB, TCG code buffer ${mib(parts.tcgCode)} MiB, other anonymous ${mib(parts.otherAnonymous)} MiB, ` +
      `other files ${mib(parts.otherFiles)} MiB (of the anonymous memory ${mib(parts.anonHugePages)} MiB in host transparent huge pages)`,
  };
}

/**
 * The sandbox lifecycle under the engine: create from a warm pool and without one, against the restore floor (plain
 * QEMU -incoming from a full-RAM state file); snapshot, pause and resume of a guest that touched 64 / 512 MiB; idle
 * cost of clones (running and pooled); sustained create rate; optionally how many idle clones the host holds.
 */
export async function lifecycleSuite(runs: number, log: (line: string) => void, options: BenchOptions): Promise<SuiteResult> {
  const image = await ensureGuestImage(log);
  const { accel, reason } = await chooseAccelerator(image);
  log(`accelerator: ${accel} (${reason}); data dir ${dataDir()}`);
  const notes: string[] = [`accelerator ${accel}: ${reason}`];
  const metrics: Record<string, Metric> = {};
  const templates: string[] = [];
  const sandboxes = new Set<string>();
  const floorDir = await mkdtemp(join(tmpdir(), "cc-bench-floor-"));
  let engine: SandboxEngine | undefined;
  const openEngine = async (poolSize: number, idleSleepAfterMs?: number) => {
    engine = await SandboxEngine.open({ image, accel, poolSize, idleSleepAfterMs });
    return engine;
  };
  const closeEngine = async () => {
    const closing = engine;
    engine = undefined;
    await closing?.close();
  };

  try {
    // ——— create (pool / no pool) against the floor ———
    let e = await openEngine(1);
    log(`templates: 2 × ${TEMPLATE_MIB} MiB (one pooled, one not)`);
    const tplPool = await e.createTemplate({ memoryMiB: TEMPLATE_MIB });
    templates.push(tplPool.id);
    const tplNoPool = await e.createTemplate({ memoryMiB: TEMPLATE_MIB });
    templates.push(tplNoPool.id);
    log(`floor: full-RAM state of a ${TEMPLATE_MIB} MiB guest`);
    const floor = await prepareFloorState({ image, accel, memoryMiB: TEMPLATE_MIB, cpus: 1, dir: floorDir });
    notes.push(`floor state file: ${(floor.stateBytes / 2 ** 20).toFixed(1)} MiB for a ${TEMPLATE_MIB} MiB guest (zero pages are not stored)`);
    e.warmPool(tplPool.id);

    const create = { total: [] as number[], call: [] as number[] };
    const createNoPool = { total: [] as number[], call: [] as number[] };
    const floors: FloorSample[] = [];
    const overlayMs: number[] = [];
    let poolMisses = 0;
    const warmExec: number[] = [];
    const warmIdentity: number[] = [];
    for (let run = 1; run <= runs; run++) {
      await e.poolFilled(tplPool.id);
      const wallBefore = Date.now();
      let t0 = performance.now();
      let sandbox = await e.create(tplPool.id);
      let t1 = performance.now();
      await firstExec(sandbox);
      let t2 = performance.now();
      if (e.sandboxInfo(sandbox.id).createdAt >= wallBefore) poolMisses++;
      create.total.push(t2 - t0);
      create.call.push(t1 - t0);
      // Untimed for the metric above: the same steps again, now that this QEMU has translated them once.
      let w0 = performance.now();
      await firstExec(sandbox);
      warmExec.push(performance.now() - w0);
      w0 = performance.now();
      await sandbox.agent.refreshIdentity(createIdentityRequest({ hostname: sandbox.id }));
      warmIdentity.push(performance.now() - w0);
      await e.kill(sandbox.id);

      await e.poolFilled(tplPool.id);
      t0 = performance.now();
      sandbox = await e.create(tplNoPool.id);
      t1 = performance.now();
      await firstExec(sandbox);
      t2 = performance.now();
      createNoPool.total.push(t2 - t0);
      createNoPool.call.push(t1 - t0);
      await e.kill(sandbox.id);

      await e.poolFilled(tplPool.id);
      floors.push(await floorRestore(image, floor, `r${run}`));
      overlayMs.push(floors.at(-1)!.overlayMs);
      log(
        `create run ${run}/${runs}: pooled ${create.total.at(-1)!.toFixed(0)} ms, no pool ${createNoPool.total.at(-1)!.toFixed(0)} ms, ` +
          `floor ${floors.at(-1)!.totalMs.toFixed(0)} ms`,
      );
    }
    metrics.createToFirstExecMs = summarize(create.total);
    metrics.createNoPoolToFirstExecMs = summarize(createNoPool.total);
    metrics.floorRestoreToFirstExecMs = summarize(floors.map((f) => f.totalMs));
    metrics.createCallMs = summarize(create.call);
    metrics.createNoPoolCallMs = summarize(createNoPool.call);
    metrics.floorSpawnToQmpMs = summarize(floors.map((f) => f.spawnToQmpMs));
    metrics.floorIncomingMs = summarize(floors.map((f) => f.incomingMs));
    metrics.floorAgentConnectMs = summarize(floors.map((f) => f.agentConnectMs));
    metrics.floorFirstExecMs = summarize(floors.map((f) => f.firstExecMs));
    metrics.qemuImgOverlayMs = summarize(overlayMs);
    metrics.pooledSecondExecMs = summarize(warmExec);
    metrics.pooledSecondIdentityRefreshMs = summarize(warmIdentity);
    if (poolMisses > 0) notes.push(`createToFirstExecMs: ${poolMisses} of ${runs} creates did not come from the pool`);

    // ——— snapshot / pause / resume of a guest that touched 64 and 512 MiB ———
    log(`template: ${BIG_TEMPLATE_MIB} MiB`);
    const tplBig = await e.createTemplate({ memoryMiB: BIG_TEMPLATE_MIB });
    templates.push(tplBig.id);
    const snapshot64: number[] = [];
    const snapshot512: number[] = [];
    const pause512: number[] = [];
    const resume512 = { total: [] as number[], call: [] as number[] };
    const transfer64: MigrationStats[] = [];
    const transfer512: MigrationStats[] = [];
    for (let run = 1; run <= runs; run++) {
      const sandbox = await e.create(tplBig.id);
      sandboxes.add(sandbox.id);
      await sh(sandbox, MOUNT_FILL);
      await sh(sandbox, FILL_64);
      let t0 = performance.now();
      const snap64 = await e.snapshot(sandbox.id);
      snapshot64.push(performance.now() - t0);
      transfer64.push(await lastMigration(sandbox));
      await sh(sandbox, FILL_TO_512);
      t0 = performance.now();
      const snap512 = await e.snapshot(sandbox.id);
      snapshot512.push(performance.now() - t0);
      transfer512.push(await lastMigration(sandbox));
      t0 = performance.now();
      await e.pause(sandbox.id);
      pause512.push(performance.now() - t0);
      t0 = performance.now();
      const resumed = await e.resume(sandbox.id);
      const t1 = performance.now();
      await firstExec(resumed);
      const t2 = performance.now();
      resume512.total.push(t2 - t0);
      resume512.call.push(t1 - t0);
      const filled = Number((await sh(resumed, FILL_SIZE_MIB)).trim());
      if (filled < 512) throw new Error(`after resume the guest holds ${filled} MiB in ${FILL_DIR}, expected 512`);
      await e.kill(sandbox.id);
      sandboxes.delete(sandbox.id);
      await e.deleteSnapshot(snap512.id);
      await e.deleteSnapshot(snap64.id);
      await e.collectGarbage();
      log(
        `memory run ${run}/${runs}: snapshot 64 MiB ${snapshot64.at(-1)!.toFixed(0)} ms, 512 MiB ${snapshot512.at(-1)!.toFixed(0)} ms, ` +
          `pause ${pause512.at(-1)!.toFixed(0)} ms, resume → exec ${resume512.total.at(-1)!.toFixed(0)} ms`,
      );
    }
    metrics.resumeToFirstExecMs = summarize(resume512.total);
    metrics.resumeCallMs = summarize(resume512.call);
    metrics.snapshotMs_64MiB = summarize(snapshot64);
    metrics.snapshotMs_512MiB = summarize(snapshot512);
    metrics.pauseMs_512MiB = summarize(pause512);
    metrics.snapshotRamCopyMs_64MiB = summarize(transfer64.map((t) => t.totalMs));
    metrics.snapshotRamCopyMs_512MiB = summarize(transfer512.map((t) => t.totalMs));
    for (const [label, list] of [["64MiB", transfer64], ["512MiB", transfer512]] as const) {
      const last = list.at(-1)!;
      notes.push(
        `snapshotRamCopyMs_${label}: the RAM copy into the receiving QEMU (query-migrate total-time on the sandbox's QEMU); last run: ` +
          `${last.normalMiB.toFixed(0)} MiB of non-zero pages and ${last.zeroPages} zero pages of a ${BIG_TEMPLATE_MIB} MiB guest at ${last.mbps.toFixed(0)} Mbit/s`,
      );
    }
    await e.deleteSnapshot(tplBig.id);
    templates.splice(templates.indexOf(tplBig.id), 1);
    await closeEngine();

    // ——— idle clones: pooled (vCPUs stopped) and running (handed out, nothing running) ———
    const idleCount = options.idleClones ?? DEFAULT_IDLE_CLONES;
    // Idle sleep off first: pooled clones, and running clones kept awake (the cost of an idle guest's own ticks).
    e = await openEngine(idleCount, 0);
    const runRoot = join(dataDir(), "run");
    const enginePids = () => findEngineQemus(runRoot).map((qemu) => qemu.pid);
    const before = new Set(enginePids());
    log(`idle: ${idleCount} pooled clones`);
    e.warmPool(tplPool.id);
    await e.poolFilled(tplPool.id);
    const pooledPids = enginePids().filter((pid) => !before.has(pid));
    if (pooledPids.length !== idleCount) notes.push(`idle pooled clones: found ${pooledPids.length} QEMU processes for a pool of ${idleCount}`);
    const pooled = await readIdle(pooledPids, `/snapshots/${tplPool.id}/`);
    metrics.idlePooledClonePssMiB = summarize(pooled.pssMiB, "MiB");
    metrics.idlePooledCloneCpuPct = summarize(pooled.cpuPct, "%", 2);
    notes.push(`idlePooledClonePssMiB (median clone, ${idleCount} clones of one template): ${pooled.breakdown}`);

    log(`idle: ${idleCount} running clones`);
    const createWarmClones = async (engineNow: SandboxEngine, count: number): Promise<RunningSandbox[]> => {
      const clones: RunningSandbox[] = [];
      for (let i = 0; i < count; i++) {
        const sandbox = await engineNow.create(tplNoPool.id);
        sandboxes.add(sandbox.id);
        clones.push(sandbox);
        await warmLikePool(sandbox);
      }
      return clones;
    };
    const killClones = async (engineNow: SandboxEngine, clones: RunningSandbox[]): Promise<void> => {
      for (const sandbox of clones) {
        await engineNow.kill(sandbox.id);
        sandboxes.delete(sandbox.id);
      }
    };
    const running = await createWarmClones(e, idleCount);
    const runningIdle = await readIdle(
      running.map((s) => s.vm.pid!),
      `/snapshots/${tplNoPool.id}/`,
    );
    metrics.idleAwakeClonePssMiB = summarize(runningIdle.pssMiB, "MiB");
    metrics.idleAwakeCloneCpuPct = summarize(runningIdle.cpuPct, "%", 2);
    notes.push(`idleAwakeClonePssMiB (median clone, ${idleCount} running clones of one template, idle sleep off): ${runningIdle.breakdown}`);
    notes.push(
      "idle PSS splits the pages shared between the clones of one template, so it falls as more clones share them; " +
      `idle readings: PSS from /proc/<pid>/smaps_rollup, CPU from utime+stime in /proc/<pid>/stat over ${IDLE_WINDOW_MS / 1000} s ` +
        `after ${IDLE_SETTLE_MS / 1000} s idle; running clones ran the pool's warm-up commands (3 × /bin/true, sh -c true) first`,
    );
    await killClones(e, running);
    await closeEngine();

    // The engine's default: a running sandbox with nothing running in it has its vCPUs stopped after a quiet spell.
    log(`idle: ${idleCount} running clones with the default idle sleep`);
    e = await openEngine(0);
    const sleeping = await createWarmClones(e, idleCount);
    for (let i = 0; i < 300 && sleeping.some((s) => !s.vm.asleep); i++) await sleep(100);
    const asleepCount = sleeping.filter((s) => s.vm.asleep).length;
    const sleepingIdle = await readIdle(
      sleeping.map((s) => s.vm.pid!),
      `/snapshots/${tplNoPool.id}/`,
    );
    metrics.idleClonePssMiB = summarize(sleepingIdle.pssMiB, "MiB");
    metrics.idleCloneCpuPct = summarize(sleepingIdle.cpuPct, "%", 2);
    notes.push(
      `idleClonePssMiB / idleCloneCpuPct: ${idleCount} running clones, engine defaults (idle sleep after 3 s; ${asleepCount} of them ` +
        `asleep when measured): ${sleepingIdle.breakdown}`,
    );
    let wakeMs = 0;
    for (const sandbox of sleeping) {
      const t = performance.now();
      await sandbox.agent.run({ argv: ["/bin/true"] });
      wakeMs = Math.max(wakeMs, performance.now() - t);
    }
    notes.push(`first command on a sleeping clone (wake + clock refresh + exec), worst of ${idleCount}: ${wakeMs.toFixed(0)} ms`);
    await killClones(e, sleeping);
    await closeEngine();

    // ——— sustained creates ———
    const durationS = options.durationS ?? DEFAULT_DURATION_S;
    e = await openEngine(SUSTAINED_POOL_SIZE);
    e.warmPool(tplPool.id);
    await e.poolFilled(tplPool.id);
    log(`sustained: creates for ${durationS} s (pool ${SUSTAINED_POOL_SIZE})`);
    const kills: Promise<void>[] = [];
    const latencies: number[] = [];
    let fromPool = 0;
    const start = performance.now();
    const end = start + durationS * 1000;
    while (performance.now() < end) {
      const wallBefore = Date.now();
      const t0 = performance.now();
      const sandbox = await e.create(tplPool.id);
      await firstExec(sandbox);
      latencies.push(performance.now() - t0);
      if (e.sandboxInfo(sandbox.id).createdAt < wallBefore) fromPool++;
      kills.push(e.kill(sandbox.id));
    }
    const elapsedS = (performance.now() - start) / 1000;
    await Promise.all(kills);
    metrics.createsPerSecond = single(latencies.length / elapsedS, "1/s", latencies.length, 2);
    metrics.sustainedCreateToFirstExecMs = summarize(latencies);
    notes.push(
      `createsPerSecond: one client, create → first exec of /bin/true → kill (not awaited), for ${elapsedS.toFixed(1)} s with ` +
        `poolSize ${SUSTAINED_POOL_SIZE}; ${fromPool} of ${latencies.length} creates came from the pool`,
    );
    await closeEngine();

    // ——— density ———
    if (options.density) {
      e = await openEngine(0);
      const density = await holdClones(e, tplPool.id, sandboxes, {
        maxClones: options.maxClones ?? DEFAULT_MAX_CLONES,
        minAvailableMiB: options.minAvailableMiB ?? DEFAULT_MIN_AVAILABLE_MIB,
        deadline: Date.now() + (options.densityMinutes ?? DEFAULT_DENSITY_MINUTES) * 60_000,
        log,
      });
      metrics.idleClonesHeld = single(density.held, "clones", density.held, 0);
      notes.push(`idleClonesHeld: ${density.summary}`);
      await closeEngine();
      sandboxes.clear();
    } else {
      notes.push("idleClonesHeld: not measured (run with --density; it takes minutes)");
    }

  } finally {
    await closeEngine().catch((error) => log(`closing the engine failed: ${(error as Error).message}`));
    await cleanUp(image, accel, templates, sandboxes, log);
    await rm(floorDir, { recursive: true, force: true });
  }

  const ratio = (a: Metric | undefined, b: Metric | undefined) => (a && b ? Math.round((a.p50 / b.p50) * 100) / 100 : NaN);
  const ratios = {
    createToFirstExecVsFloor: ratio(metrics.createToFirstExecMs, metrics.floorRestoreToFirstExecMs),
    createNoPoolToFirstExecVsFloor: ratio(metrics.createNoPoolToFirstExecMs, metrics.floorRestoreToFirstExecMs),
  };
  notes.unshift(`goals (issue): ${GOALS.join("; ")}`, ...goalStatus(metrics));
  return {
    suite: "lifecycle",
    accel,
    runs,
    host: await benchHost(),
    metrics,
    ratios,
    notes,
  };
}

/** One line per goal: measured value and met / missed (informative only; nothing fails the run). */
function goalStatus(m: Record<string, Metric>): string[] {
  const lines: string[] = [];
  const check = (label: string, ok: boolean | undefined, measured: string) => {
    if (ok !== undefined) lines.push(`goal ${label}: ${ok ? "met" : "missed"} (${measured})`);
  };
  const c = m.createToFirstExecMs;
  check("createToFirstExecMs", c && c.p50 <= 50 && c.p95 <= 100, c ? `p50 ${c.p50} ms, p95 ${c.p95} ms` : "");
  const r = m.resumeToFirstExecMs;
  check("resumeToFirstExecMs", r && r.p95 <= 150, r ? `p95 ${r.p95} ms` : "");
  const s = m.snapshotMs_512MiB;
  check("snapshotMs_512MiB", s && s.p95 <= 1000, s ? `p50 ${s.p50} ms, p95 ${s.p95} ms` : "");
  for (const name of ["idleClonePssMiB", "idlePooledClonePssMiB"]) {
    const p = m[name];
    check(name, p && p.p50 <= 40, p ? `p50 ${p.p50} MiB` : "");
  }
  for (const name of ["idleCloneCpuPct", "idlePooledCloneCpuPct"]) {
    const p = m[name];
    check(name, p && p.p50 <= 0.5, p ? `p50 ${p.p50} %` : "");
  }
  const d = m.idleClonesHeld;
  check("idleClonesHeld", d && d.p50 >= 200, d ? `${d.p50}` : "");
  const cps = m.createsPerSecond;
  check("createsPerSecond", cps && cps.p50 >= 20, cps ? `${cps.p50}/s` : "");
  return lines;
}

/** Creates running clones one after another until the host runs low on memory, a create fails, the cap or the deadline. */
async function holdClones(
  engine: SandboxEngine,
  templateId: string,
  sandboxes: Set<string>,
  limits: { maxClones: number; minAvailableMiB: number; deadline: number; log: (line: string) => void },
): Promise<{ held: number; summary: string }> {
  const availableBefore = memAvailableMiB();
  const started = performance.now();
  const createMs: number[] = [];
  let held = 0;
  let stop = "";
  for (;;) {
    const available = memAvailableMiB();
    if (available < limits.minAvailableMiB) {
      stop = `host MemAvailable ${available.toFixed(0)} MiB < ${limits.minAvailableMiB} MiB`;
      break;
    }
    if (held >= limits.maxClones) {
      stop = `cap of ${limits.maxClones} clones (--max-clones)`;
      break;
    }
    if (Date.now() > limits.deadline) {
      stop = "time cap (--density-minutes)";
      break;
    }
    try {
      const t0 = performance.now();
      const sandbox = await engine.create(templateId);
      sandboxes.add(sandbox.id);
      await firstExec(sandbox);
      createMs.push(performance.now() - t0);
      held++;
    } catch (error) {
      stop = `create ${held + 1} failed: ${(error as Error).message.split("\n")[0]}`;
      break;
    }
    if (createMs.at(-1)! > DENSITY_SLOW_CREATE_MS) {
      stop = `create → first exec took ${(createMs.at(-1)! / 1000).toFixed(1)} s (> ${DENSITY_SLOW_CREATE_MS / 1000} s: host CPUs saturated)`;
      break;
    }
    if (held % 10 === 0) {
      limits.log(`density: ${held} clones, MemAvailable ${memAvailableMiB().toFixed(0)} MiB, last create ${createMs.at(-1)!.toFixed(0)} ms`);
    }
  }
  // Let the last clones settle, then read how much host memory they take together.
  await sleep(IDLE_SETTLE_MS);
  const availableAfter = memAvailableMiB();
  const perClone = held > 0 ? (availableBefore - availableAfter) / held : 0;
  const load = loadavg()[0]!.toFixed(2);
  return {
    held,
    summary:
      `${held} running clones of one ${TEMPLATE_MIB} MiB template (poolSize 0, each ran /bin/true) in ` +
      `${((performance.now() - started) / 1000).toFixed(0)} s; stopped by: ${stop}; host MemAvailable ${availableBefore.toFixed(0)} → ` +
      `${availableAfter.toFixed(0)} MiB (${perClone.toFixed(1)} MiB per clone); create → first exec p50 ` +
      `${createMs.length ? summarize(createMs).p50 : "-"} ms, last ${createMs.at(-1)?.toFixed(0) ?? "-"} ms; load average ${load}`,
  };
}

/** Kills what this run created and still lives, deletes its templates and collects garbage, with a fresh engine. */
async function cleanUp(
  image: GuestImage,
  accel: Accelerator,
  templates: string[],
  sandboxes: Set<string>,
  log: (line: string) => void,
): Promise<void> {
  let engine: SandboxEngine | undefined;
  try {
    engine = await SandboxEngine.open({ image, accel, poolSize: 0 });
    const live = new Set(engine.listSandboxes().map((s) => s.id));
    for (const id of sandboxes) if (live.has(id)) await engine.kill(id).catch(() => {});
    for (const id of templates) await engine.deleteSnapshot(id).catch((error) => log(`deleting template ${id}: ${(error as Error).message}`));
    await engine.collectGarbage();
  } catch (error) {
    log(`clean-up failed: ${(error as Error).message}`);
  } finally {
    await engine?.close().catch(() => {});
  }
}
