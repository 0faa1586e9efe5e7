/**
 * The restore floor: plain QEMU started with `-incoming` from a state file that holds the guest's whole RAM (no
 * shared memory file, no disk layer bookkeeping, no identity refresh, no warm pool) — the least a restore can cost
 * with this QEMU, machine layout and accelerator.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { execFile } from "node:child_process";
import { closeSync, existsSync, openSync, statSync } from "node:fs";
import { mkdir, rm } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import {
  AgentClient,
  GUEST_BUSYBOX,
  QEMU_BINARY,
  QmpClient,
  qemuArgs,
  saveMigrationStream,
  waitForMigration,
  Vm,
  type Accelerator,
  type GuestImage,
} from "@codecourier/engine";

const run = promisify(execFile);

export { GUEST_BUSYBOX };

/** Descriptor under which the restoring QEMU inherits the state file. */
const STATE_FD = 3;

export interface FloorState {
  dir: string;
  stateFile: string;
  stateBytes: number;
  /** The booted guest's root disk layer at the moment of the save; every restore writes to its own overlay on it. */
  rootDisk: string;
  memoryMiB: number;
  cpus: number;
  accel: Accelerator;
}

/** QEMU processes spawned here and not yet reaped: killed when the bench process exits, whatever way. */
const live = new Set<ChildProcess>();
let exitHookInstalled = false;
function trackChild(child: ChildProcess): void {
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.once("exit", () => {
      for (const c of live) c.kill("SIGKILL");
    });
  }
  live.add(child);
  child.once("exit", () => live.delete(child));
}

async function qcow2Overlay(backing: string, file: string): Promise<void> {
  await run("qemu-img", ["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", backing, file]);
}

/**
 * Boots a guest with anonymous RAM (same image, memory size and CPUs as a template), prepares it the way
 * createTemplate does (sync, agent session closed), stops it and migrates its full state (x-ignore-shared off: the
 * RAM is in the stream) through a Unix socket into a file.
 */
export async function prepareFloorState(opts: {
  image: GuestImage;
  accel: Accelerator;
  memoryMiB: number;
  cpus: number;
  dir: string;
}): Promise<FloorState> {
  await mkdir(opts.dir, { recursive: true });
  const rootDisk = join(opts.dir, "root.qcow2");
  await qcow2Overlay(opts.image.rootDiskPath, rootDisk);
  const stateFile = join(opts.dir, "full.state");
  const vm = await Vm.boot({ image: opts.image, accel: opts.accel, memoryMiB: opts.memoryMiB, cpus: opts.cpus, rootDisk });
  try {
    await vm.agent.run({ argv: [GUEST_BUSYBOX, "sync"] });
    await vm.agent.close();
    await new Promise((r) => setTimeout(r, 50));
    await vm.stopVcpus();
    await saveMigrationStream(vm.qmp, stateFile, join(opts.dir, "save.sock"), 300_000, { includeSharedRam: true });
  } finally {
    await vm.kill();
  }
  return { dir: opts.dir, stateFile, stateBytes: statSync(stateFile).size, rootDisk, memoryMiB: opts.memoryMiB, cpus: opts.cpus, accel: opts.accel };
}

export interface FloorSample {
  /** `qemu-img create` of the restore's overlay (not part of totalMs; the engine pays it inside create()). */
  overlayMs: number;
  /** QEMU spawn → first `/bin/true` result. */
  totalMs: number;
  /** Spawn → QMP connected. */
  spawnToQmpMs: number;
  /** QMP connected → incoming migration completed (RAM and devices loaded). */
  incomingMs: number;
  /** `cont` → agent answered its first health check. */
  agentConnectMs: number;
  /** First exec round trip. */
  firstExecMs: number;
}

/**
 * One restore: QEMU spawned with the same qemuArgs (anonymous RAM, `-incoming defer`), the state file as an
 * inherited descriptor, `migrate-incoming fd:3`, `cont`, agent connect, `/bin/true`. The overlay over the saved
 * root disk is created before the clock starts. The QEMU is killed before this returns.
 */
export async function floorRestore(image: GuestImage, state: FloorState, sampleName: string): Promise<FloorSample> {
  const runDir = join(state.dir, sampleName);
  await mkdir(runDir, { recursive: true });
  const rootDisk = join(runDir, "root.qcow2");
  const o0 = performance.now();
  await qcow2Overlay(state.rootDisk, rootDisk);
  const overlayMs = performance.now() - o0;
  const qmpSocket = join(runDir, "qmp.sock");
  const agentSocket = join(runDir, "agent.sock");
  const args = qemuArgs({
    accel: state.accel,
    memoryMiB: state.memoryMiB,
    cpus: state.cpus,
    kernelPath: image.kernelPath,
    initramfsPath: image.initramfsPath,
    systemDiskPath: image.systemDiskPath,
    rootDiskPath: rootDisk,
    qmpSocket,
    agentSocket,
    consoleLog: join(runDir, "console.log"),
    incoming: true,
  });
  let child: ChildProcess | undefined;
  let qmp: QmpClient | undefined;
  let agent: AgentClient | undefined;
  let stderr = "";
  try {
    const t0 = performance.now();
    const fd = openSync(state.stateFile, "r");
    try {
      child = spawn(QEMU_BINARY, args, { stdio: ["ignore", "ignore", "pipe", fd], cwd: runDir });
    } finally {
      closeSync(fd);
    }
    trackChild(child);
    child.stderr?.on("data", (chunk: Buffer) => (stderr = (stderr + chunk.toString()).slice(-2000)));
    const deadline = Date.now() + 60_000;
    while (!(existsSync(qmpSocket) && existsSync(agentSocket))) {
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`floor QEMU exited: ${stderr}`);
      if (Date.now() > deadline) throw new Error("floor QEMU did not create its sockets");
      await new Promise((r) => setTimeout(r, 2));
    }
    qmp = await QmpClient.connect(qmpSocket, 10_000);
    const t1 = performance.now();
    await qmp.execute("migrate-set-capabilities", { capabilities: [{ capability: "x-ignore-shared", state: false }] });
    await qmp.execute("migrate-incoming", { uri: `fd:${STATE_FD}` });
    await waitForMigration(qmp, deadline, "floor restore");
    await qmp.execute("cont");
    const t2 = performance.now();
    agent = await AgentClient.connect(agentSocket, { timeoutMs: 30_000 });
    const t3 = performance.now();
    const result = await agent.run({ argv: ["/bin/true"] });
    const t4 = performance.now();
    if (result.exitCode !== 0) throw new Error(`/bin/true exited ${result.exitCode} in the floor restore`);
    return { overlayMs, totalMs: t4 - t0, spawnToQmpMs: t1 - t0, incomingMs: t2 - t1, agentConnectMs: t3 - t2, firstExecMs: t4 - t3 };
  } finally {
    await agent?.close().catch(() => {});
    qmp?.close();
    if (child && child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((r) => child!.once("exit", r));
      child.kill("SIGKILL");
      await exited;
    }
    await rm(runDir, { recursive: true, force: true });
  }
}
