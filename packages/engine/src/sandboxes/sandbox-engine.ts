import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, readdir, rm, stat } from "node:fs/promises";
import { basename, join } from "node:path";
import type { AgentClient } from "../agent-client/index.js";
import type { IdentityRequest } from "@codecourier/protocol";
import { dataDir } from "../config.js";
import type { GuestImage } from "../images/guest-image.js";
import { GUEST_BUSYBOX } from "../images/guest-scripts.js";
import { compatDifferences, snapshotCompat, type SnapshotCompat } from "../snapshots/compat.js";
import { DataDirLock } from "../state/data-dir-lock.js";
import { EngineDatabase, LIVE_SANDBOX_STATES, type SandboxRow, type SnapshotKind, type SnapshotRow } from "../state/database.js";
import { DiskLayers, virtualDiskBytes } from "../storage/disk-layers.js";
import { chooseAccelerator, qemuVersion } from "../vmm/accel.js";
import { removeStaleVmCgroups } from "../vmm/cgroups/vm-cgroup.js";
import type { Accelerator } from "../vmm/machine.js";
import { saveDeviceState, transferToReceiver } from "../vmm/migration.js";
import { Vm } from "../vmm/vm.js";
import {
  InvalidRequestError,
  SandboxNotFoundError,
  SandboxStateError,
  SandboxUnhealthyError,
  SnapshotIncompatibleError,
  SnapshotInUseError,
  SnapshotNotFoundError,
} from "./errors.js";
import { findEngineQemus } from "./host-qemu-scan.js";
import { KeyedLock, OperationGate } from "./operation-gate.js";
import { WarmPool } from "./warm-pool.js";
import { growRootDisk } from "./root-disk-growth.js";

export interface SandboxEngineOptions {
  image: GuestImage;
  /** Default: the probed accelerator. */
  accel?: Accelerator;
  tcgCpuModel?: string;
  /** Restored, warmed clones kept ready per template. Default 0. */
  poolSize?: number;
  /** How long a pool waits after handing a clone out before it restores the next one. Default 1000 ms. */
  poolRefillDelayMs?: number;
  /** A snapshot layer deeper than this is flattened onto the image base. Default 8. */
  maxChainDepth?: number;
  /**
   * A running sandbox in which nothing runs (no command, no process besides the guest's plumbing) and that has had
   * no request for this long has its vCPUs stopped until the next request. Default 3000 ms; 0 disables.
   */
  idleSleepAfterMs?: number;
  /** Gives every sandbox its own network (network/network-service.ts); without it sandboxes have none. */
  network?: SandboxNetworkHooks;
}

/** The host network as the engine uses it: made before a sandbox's QEMU starts, removed after it exits. */
export interface SandboxNetworkHooks {
  /** Makes the sandbox's network namespace and tap; what QEMU needs to use them. */
  attach(sandboxId: string): Promise<{ netns: string; tap: string }>;
  /** The network of a sandbox still running from before an engine restart, if it is still there. */
  adopt(sandboxId: string): Promise<{ netns: string; tap: string } | undefined>;
  /** Removes the sandbox's network namespace (idempotent). Its policy stays until the sandbox ends for good. */
  detach(sandboxId: string): Promise<void>;
  /** Removes every network namespace of this engine whose sandbox is not in `live`. */
  sweep(live: ReadonlySet<string>): Promise<void>;
  /** The sandbox ended for good (killed, lost, a pool clone discarded): its network settings can go. */
  ended(sandboxId: string): Promise<void>;
}

export interface TemplateDefinition {
  memoryMiB?: number;
  cpus?: number;
  /** Shell command started in the background before the template is saved; it keeps running in every clone. */
  startCommand?: string;
  /** Shell command retried until it exits 0 before the template is saved (e.g. a server answering). */
  readyCheck?: string;
  readyTimeoutMs?: number;
}

export interface SnapshotInfo {
  id: string;
  kind: SnapshotKind;
  createdAt: number;
  memoryMiB: number;
  cpus: number;
  sourceSandboxId: string | null;
}

export interface SandboxInfo {
  id: string;
  /** The stored state, except "unhealthy" for a running sandbox whose agent session is being re-opened. */
  state: SandboxRow["state"] | "unhealthy";
  fromSnapshotId: string;
  memoryMiB: number;
  cpus: number;
  createdAt: number;
}

/** A running sandbox: its VM and agent. */
export interface RunningSandbox {
  readonly id: string;
  readonly vm: Vm;
  readonly agent: AgentClient;
}

const DEFAULT_POOL_REFILL_DELAY_MS = 1000;
const DEFAULT_MAX_CHAIN_DEPTH = 8;
const DEFAULT_IDLE_SLEEP_AFTER_MS = 3000;
/** Niceness of QEMUs restoring and warming pool clones; reset to 0 when a clone is handed out. */
const POOL_NICENESS = 10;
/** How often running sandboxes are checked for idleness. */
const IDLE_CHECK_INTERVAL_MS = 1000;
/** After a failed network detach: how long until the namespaces no live sandbox uses are swept, and how often. */
const NETWORK_SWEEP_DELAY_MS = 5000;
const NETWORK_SWEEP_ATTEMPTS = 12;
const MAX_FORK = 64;

function newId(prefix: string): string {
  return `${prefix}-${randomBytes(6).toString("hex")}`;
}

function positiveInt(value: number | undefined, fallback: number, name: string, max: number): number {
  const n = value ?? fallback;
  if (!Number.isInteger(n) || n < 1 || n > max) throw new InvalidRequestError(`${name} must be an integer from 1 to ${max}, got ${value}`);
  return n;
}

/**
 * Sandboxes as clones of snapshots: templates (a booted, saved guest), snapshots of running sandboxes, pause and
 * resume, fork, and garbage collection of what nothing uses any more. State lives in SQLite, files under the data
 * dir (snapshots/, disks/, run/); a restarted engine re-attaches to the sandboxes still running.
 * See docs/snapshots.md.
 */
export class SandboxEngine {
  readonly #running = new Map<string, Vm>();
  readonly #locks = new KeyedLock();
  readonly #gate = new OperationGate();
  readonly #pool: WarmPool;
  readonly #layers: DiskLayers;
  readonly #maxChainDepth: number;
  #idleTimer: NodeJS.Timeout | undefined;
  #networkSweep: NodeJS.Timeout | undefined;
  #closed = false;
  readonly #endedListeners = new Set<(sandboxId: string) => void>();

  private constructor(
    readonly image: GuestImage,
    readonly accel: Accelerator,
    private readonly qemu: string,
    private readonly db: EngineDatabase,
    private readonly lock: DataDirLock,
    private readonly options: SandboxEngineOptions,
  ) {
    this.#layers = new DiskLayers(join(dataDir(), "disks"), db);
    this.#maxChainDepth = options.maxChainDepth ?? DEFAULT_MAX_CHAIN_DEPTH;
    this.#pool = new WarmPool(options.poolSize ?? 0, options.poolRefillDelayMs ?? DEFAULT_POOL_REFILL_DELAY_MS, {
      produce: (snapshotId) => this.#gate.run(() => this.#producePooled(snapshotId)),
      discard: (sandboxId) => this.#gate.run(() => this.#discardPooled(sandboxId)),
    });
  }

  /** Opens the state database, reconciles it with the QEMU processes and files it finds, and collects garbage. */
  static async open(options: SandboxEngineOptions): Promise<SandboxEngine> {
    const accel = options.accel ?? (await chooseAccelerator(options.image)).accel;
    const version = await qemuVersion();
    await mkdir(dataDir(), { recursive: true });
    const lock = DataDirLock.acquire(join(dataDir(), "engine.lock"));
    let db: EngineDatabase | undefined;
    try {
      db = new EngineDatabase(join(dataDir(), "state.db"));
      const engine = new SandboxEngine(options.image, accel, version, db, lock, options);
      await engine.#recover();
      engine.#startIdleMonitor();
      return engine;
    } catch (error) {
      db?.close();
      lock.release();
      throw error;
    }
  }

  // ——— templates and snapshots ———

  /** Boots the image, runs the start command and ready check, and saves the result as a template. */
  async createTemplate(definition: TemplateDefinition = {}): Promise<SnapshotInfo> {
    const memoryMiB = positiveInt(definition.memoryMiB, 512, "memoryMiB", 64 * 1024);
    const cpus = positiveInt(definition.cpus, 1, "cpus", 64);
    const readyTimeoutMs = positiveInt(definition.readyTimeoutMs, 60_000, "readyTimeoutMs", 3_600_000);
    return this.#gate.run(async () => {
      const id = newId("tpl");
      const dir = this.#snapshotDir(id);
      await mkdir(dir, { recursive: true });
      const layer = await this.#layers.createOver({ basePath: this.image.rootDiskPath });
      this.db.insertSnapshot({
        id,
        kind: "template",
        state: "saving",
        layer_id: layer.id,
        memory_mib: memoryMiB,
        cpus,
        accel: this.accel,
        compat: JSON.stringify(this.#compat(memoryMiB, cpus)),
        source_sandbox_id: null,
        definition: JSON.stringify(definition),
        created_at: Date.now(),
      });
      let vm: Vm | undefined;
      try {
        vm = await Vm.boot({
          image: this.image,
          accel: this.accel,
          memoryMiB,
          cpus,
          memory: { kind: "file", path: join(dir, "memory"), shared: true },
          rootDisk: this.#layers.path(layer.id),
          tcgCpuModel: this.options.tcgCpuModel,
        });
        if (definition.startCommand !== undefined) {
          const started = vm.agent.exec({ shell: definition.startCommand, background: true, stdin: false });
          started.stdout.resume();
          started.stderr.resume();
          await started.id;
        }
        if (definition.readyCheck !== undefined) await waitUntilReady(vm.agent, definition.readyCheck, readyTimeoutMs);
        // Run the commands clones will run first, so the pages the guest allocates for them are already in the
        // template's memory file (clones then share them instead of each faulting fresh ones in).
        await warmUp(vm.agent, 10);
        await vm.agent.run({ argv: [GUEST_BUSYBOX, "sync"] });
        // Clones start with no host session: close ours and give the agent a moment to see the hang-up.
        await vm.agent.close();
        await new Promise((r) => setTimeout(r, 50));
        await vm.stopVcpus();
        await saveDeviceState(vm.qmp, join(dir, "device.state"), join(vm.runDir, "state.sock"), 30_000);
        await vm.kill();
        this.db.transaction(() => {
          this.db.freezeLayer(layer.id);
          this.db.setSnapshotState(id, "ready");
        });
      } catch (error) {
        await vm?.kill();
        await this.#forgetSnapshot(id);
        throw error;
      }
      return this.snapshotInfo(id);
    });
  }

  /** Saves memory, devices and disk of a running sandbox; the sandbox keeps running. */
  async snapshot(sandboxId: string): Promise<SnapshotInfo> {
    return this.#locks.run(sandboxId, () =>
      this.#gate.run(async () => {
        const { vm, row } = this.#requireRunning(sandboxId);
        const snapshotId = await this.#capture(vm, row, "snapshot");
        return this.snapshotInfo(snapshotId);
      }),
    );
  }

  /** Snapshot, then stop the VM and free its memory. The sandbox id stays; resume() continues it. */
  async pause(sandboxId: string): Promise<void> {
    await this.#locks.run(sandboxId, () =>
      this.#gate.run(async () => {
        const { vm, row } = this.#requireRunning(sandboxId);
        const snapshotId = await this.#capture(vm, row, "pause");
        this.#running.delete(sandboxId);
        this.db.updateSandbox(sandboxId, { state: "paused", paused_snapshot_id: snapshotId, run_dir: null, pid: null });
      }),
    );
  }

  /** Continues a paused sandbox: same id, same processes, same files. */
  async resume(sandboxId: string): Promise<RunningSandbox> {
    return this.#locks.run(sandboxId, () =>
      this.#gate.run(async () => {
        const row = this.db.sandbox(sandboxId);
        if (!row || !LIVE_SANDBOX_STATES.includes(row.state)) throw new SandboxNotFoundError(sandboxId);
        if (row.state !== "paused" || !row.paused_snapshot_id) throw new SandboxStateError(`sandbox ${sandboxId} is ${row.state}, not paused`);
        const pauseSnapshot = this.#requireSnapshot(row.paused_snapshot_id, ["pause"]);
        const vm = await this.#restore(row, pauseSnapshot);
        this.db.updateSandbox(sandboxId, { state: "running", paused_snapshot_id: null });
        // The pause snapshot served its purpose: its memory file stays mapped by the VM until it exits (unlinking is
        // safe), and its disk layer stays as the parent of the sandbox's new layer.
        await this.#forgetSnapshot(pauseSnapshot.id);
        return { id: sandboxId, vm, agent: vm.agent };
      }),
    );
  }

  /** A new sandbox from a template or snapshot; from the warm pool when it has one ready. */
  async create(snapshotId: string): Promise<RunningSandbox> {
    const snapshot = this.#requireSnapshot(snapshotId, ["template", "snapshot"]);
    this.#checkCompatible(snapshot);
    const pooled = this.#pool.take(snapshotId);
    if (pooled !== undefined) {
      const handed = await this.#gate.run(() => this.#handOut(pooled)).catch(() => undefined);
      if (handed) return handed;
    }
    return this.#gate.run(() => this.#createFresh(snapshot, "running"));
  }

  /** `count` new, independent sandboxes from one snapshot. */
  async fork(snapshotId: string, count: number): Promise<RunningSandbox[]> {
    const n = positiveInt(count, 1, "count", MAX_FORK);
    this.#requireSnapshot(snapshotId, ["template", "snapshot"]);
    const created: RunningSandbox[] = [];
    try {
      for (let i = 0; i < n; i++) created.push(await this.create(snapshotId));
    } catch (error) {
      await Promise.all(created.map((sandbox) => this.kill(sandbox.id).catch(() => {})));
      throw error;
    }
    return created;
  }

  /** Stops a sandbox (running or paused) for good and frees what only it used. */
  async kill(sandboxId: string): Promise<void> {
    await this.#locks.run(sandboxId, () =>
      this.#gate.run(async () => {
        const row = this.db.sandbox(sandboxId);
        if (!row || !LIVE_SANDBOX_STATES.includes(row.state)) throw new SandboxNotFoundError(sandboxId);
        const vm = this.#running.get(sandboxId);
        this.#running.delete(sandboxId);
        await vm?.kill();
        this.db.updateSandbox(sandboxId, { state: "stopped", run_dir: null, pid: null });
        await this.#ended(sandboxId);
        if (row.paused_snapshot_id) await this.#forgetSnapshot(row.paused_snapshot_id);
      }),
    );
  }

  /**
   * Deletes a template or snapshot; refused while a sandbox or another snapshot still builds on it, unless
   * `whileInUse` (snapshots only): then the snapshot is gone at once (its memory file is unlinked — clones that map
   * it keep their mapping — and it can no longer be restored), and its disk layer stays for as long as a sandbox's
   * disk chain needs it (garbage collection frees it after).
   */
  async deleteSnapshot(snapshotId: string, options: { whileInUse?: boolean } = {}): Promise<void> {
    const snapshot = this.#requireSnapshot(snapshotId, ["template", "snapshot"]);
    if (options.whileInUse && snapshot.kind === "snapshot") {
      await this.#pool.drain(snapshotId);
      await this.#gate.exclusive(() => this.#forgetSnapshot(snapshotId));
      return;
    }
    const inUse = () => {
      // Pool clones do not count: they are discarded with the snapshot.
      const users = this.#usersOfLayer(snapshot.layer_id, snapshotId, { ignorePooled: true });
      if (users.length > 0) throw new SnapshotInUseError(snapshotId, users);
    };
    inUse(); // a refused delete must not even drain the pool
    await this.#pool.drain(snapshotId);
    await this.#gate.exclusive(async () => {
      inUse();
      await this.#forgetSnapshot(snapshotId);
    });
  }

  /**
   * Frees every disk layer, snapshot directory and runtime directory that no live sandbox or snapshot can reach.
   * Returns the removed paths.
   */
  async collectGarbage(): Promise<string[]> {
    return this.#gate.exclusive(() => this.#collectGarbage());
  }

  /** Keeps `poolSize` warm clones of this template (refilled in the background). */
  warmPool(snapshotId: string): void {
    this.#requireSnapshot(snapshotId, ["template", "snapshot"]);
    this.#pool.ensure(snapshotId);
  }

  /** Grows a running sandbox's root disk (and its filesystem) to `bytes`; its snapshots and forks keep the size. */
  async growRootDisk(sandboxId: string, bytes: number): Promise<void> {
    await this.#locks.run(sandboxId, () =>
      this.#gate.run(async () => {
        const { vm } = this.#requireRunning(sandboxId);
        await growRootDisk(vm, bytes);
      }),
    );
  }

  /** The virtual size of the image's root disk: every sandbox's disk unless it was grown. */
  imageDiskBytes(): Promise<number> {
    return virtualDiskBytes(this.image.rootDiskPath);
  }

  /** Stops keeping warm clones of this template and discards the ready ones. */
  async stopWarmPool(snapshotId: string): Promise<void> {
    await this.#pool.drain(snapshotId);
  }

  /** Whether a warm pool is kept for this template. */
  hasWarmPool(snapshotId: string): boolean {
    return this.#pool.keeps(snapshotId);
  }

  /** Calls `listener` with the id of every sandbox that ends for good (killed, crashed, lost, a pool clone discarded). */
  onSandboxEnded(listener: (sandboxId: string) => void): void {
    this.#endedListeners.add(listener);
  }

  /** Bytes a snapshot takes on the host disk (allocated blocks of its memory and device files and its disk layer). */
  async snapshotBytes(snapshotId: string): Promise<number> {
    const files = this.snapshotFiles(snapshotId);
    let bytes = 0;
    for (const path of [files.memory, files.deviceState, files.disk]) {
      const info = await stat(path).catch(() => undefined);
      if (info) bytes += info.blocks * 512;
    }
    return bytes;
  }

  /** Resolves when every pool has its target number of clones (for benchmarks and tests). */
  poolFilled(snapshotId: string): Promise<void> {
    return this.#pool.filled(snapshotId);
  }

  // ——— queries ———

  sandbox(id: string): RunningSandbox {
    const vm = this.#running.get(id);
    if (!vm) {
      const row = this.db.sandbox(id);
      if (row && row.state === "paused") throw new SandboxStateError(`sandbox ${id} is paused; resume it first`);
      throw new SandboxNotFoundError(id);
    }
    if (vm.agentDown !== undefined) throw new SandboxUnhealthyError(id, vm.agentDown);
    return { id, vm, agent: vm.agent };
  }

  sandboxInfo(id: string): SandboxInfo {
    const row = this.db.sandbox(id);
    if (!row || row.state === "pooled") throw new SandboxNotFoundError(id);
    return this.#info(row);
  }

  listSandboxes(): SandboxInfo[] {
    return this.db.sandboxes(["creating", "running", "paused"]).map((row) => this.#info(row));
  }

  /** A sandbox's info; "unhealthy" is not stored: it is a running VM whose agent session is being re-opened. */
  #info(row: SandboxRow): SandboxInfo {
    const info = toSandboxInfo(row);
    if (row.state === "running" && this.#running.get(row.id)?.agentDown !== undefined) info.state = "unhealthy";
    return info;
  }

  snapshotInfo(id: string): SnapshotInfo {
    const row = this.db.snapshot(id);
    if (!row || row.state !== "ready") throw new SnapshotNotFoundError(id);
    return toSnapshotInfo(row);
  }

  /** Whether a template or snapshot with this id exists and is ready to restore. */
  hasSnapshot(id: string): boolean {
    return this.db.snapshot(id)?.state === "ready";
  }

  /** Whether the snapshot exists and this engine can restore it (same image builds, QEMU, layout). */
  canRestore(id: string): boolean {
    const row = this.db.snapshot(id);
    if (row?.state !== "ready") return false;
    try {
      this.#checkCompatible(row);
      return true;
    } catch {
      return false;
    }
  }

  listSnapshots(): SnapshotInfo[] {
    return this.db.snapshots(["ready"]).filter((row) => row.kind !== "pause").map(toSnapshotInfo);
  }

  /** Files of a snapshot (for diagnostics, tests and the benchmark). */
  snapshotFiles(id: string): { dir: string; memory: string; deviceState: string; disk: string } {
    const row = this.db.snapshot(id);
    if (!row) throw new SnapshotNotFoundError(id);
    const dir = this.#snapshotDir(id);
    return { dir, memory: join(dir, "memory"), deviceState: join(dir, "device.state"), disk: this.#layers.path(row.layer_id) };
  }

  /** Drains the pools and stops every running sandbox (marked stopped); paused sandboxes stay paused. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#idleTimer);
    clearTimeout(this.#networkSweep);
    await this.#pool.close();
    for (const [id, vm] of this.#running) {
      await vm.kill();
      this.db.updateSandbox(id, { state: "stopped", run_dir: null, pid: null });
    }
    this.#running.clear();
    this.db.close();
    this.lock.release();
  }

  // ——— internals ———

  #snapshotDir(id: string): string {
    return join(dataDir(), "snapshots", id);
  }

  #compat(memoryMiB: number, cpus: number): SnapshotCompat {
    return snapshotCompat({ image: this.image, qemuVersion: this.qemu, accel: this.accel, memoryMiB, cpus, tcgCpuModel: this.options.tcgCpuModel });
  }

  #checkCompatible(snapshot: SnapshotRow): void {
    const saved = JSON.parse(snapshot.compat) as SnapshotCompat;
    const current = this.#compat(snapshot.memory_mib, snapshot.cpus);
    const differences = compatDifferences(saved, current);
    if (differences.length > 0) {
      throw new SnapshotIncompatibleError(
        snapshot.id,
        differences.map((field) => ({ field, saved: String(saved[field]), current: String(current[field]) })),
      );
    }
  }

  #requireSnapshot(id: string, kinds: SnapshotKind[]): SnapshotRow {
    const row = this.db.snapshot(id);
    if (!row || row.state !== "ready" || !kinds.includes(row.kind)) throw new SnapshotNotFoundError(id);
    return row;
  }

  #requireRunning(id: string): { vm: Vm; row: SandboxRow } {
    const row = this.db.sandbox(id);
    if (!row || !LIVE_SANDBOX_STATES.includes(row.state) || row.state === "pooled") throw new SandboxNotFoundError(id);
    const vm = this.#running.get(id);
    if (row.state !== "running" || !vm) throw new SandboxStateError(`sandbox ${id} is ${row.state}, not running`);
    // Refused rather than waited for: a snapshot needs the agent (to sync the guest's disks), and a caller that
    // retries after the error decides itself how long a pause may wait.
    if (vm.agentDown !== undefined) throw new SandboxUnhealthyError(id, vm.agentDown);
    return { vm, row };
  }

  /** Restores `snapshot` into a new VM for the sandbox `row` (on a new writable layer) and refreshes its identity. */
  async #restore(row: SandboxRow, snapshot: SnapshotRow, niceness = 0): Promise<Vm> {
    this.#checkCompatible(snapshot);
    const layer = await this.#layers.createOver({ layerId: snapshot.layer_id });
    this.db.updateSandbox(row.id, { layer_id: layer.id });
    const files = this.snapshotFiles(snapshot.id);
    const networking = this.options.network;
    const network = await networking?.attach(row.id);
    let vm: Vm;
    try {
      vm = await Vm.restore({
        image: this.image,
        accel: this.accel,
        memoryMiB: snapshot.memory_mib,
        cpus: snapshot.cpus,
        memoryFile: files.memory,
        deviceStateFile: files.deviceState,
        rootDisk: this.#layers.path(layer.id),
        tcgCpuModel: this.options.tcgCpuModel,
        niceness,
        network,
      });
    } catch (error) {
      await this.#detachNetwork(row.id).catch((detachError: unknown) => process.emitWarning(`sandbox ${row.id}: network clean-up failed: ${String(detachError)}`));
      throw error;
    }
    if (networking) vm.afterExit = () => this.#detachNetwork(row.id);
    try {
      this.db.updateSandbox(row.id, { run_dir: vm.runDir, pid: vm.pid ?? null });
      this.#refreshIdentity(vm, row);
    } catch (error) {
      await vm.kill();
      throw error;
    }
    this.#track(row.id, vm);
    return vm;
  }

  /**
   * Sends the restored guest its fresh identity without waiting for the answer: the agent runs every request that
   * arrives after it only once it is applied (and refuses them if it failed), so the caller's first command can
   * follow at once instead of one round trip later. A failed refresh ends the sandbox.
   */
  #refreshIdentity(vm: Vm, row: SandboxRow): void {
    // A restarting agent has nothing to refresh: the guest kernel kept its clock and names, and it was not asleep.
    if (vm.agentDown !== undefined) return;
    vm.agent
      .refreshIdentity(identityRequest(row))
      .catch(async (error: unknown) => {
        if (vm.state !== "running") return;
        process.emitWarning(`sandbox ${row.id}: identity refresh failed, stopping it: ${String(error)}`);
        if (this.#running.get(row.id) === vm) {
          this.#running.delete(row.id);
          if (!this.#closed) this.db.updateSandbox(row.id, { state: "lost", run_dir: null, pid: null });
        }
        await vm.kill();
        await this.#ended(row.id);
      })
      // The clean-up above can fail too (the database or the kill, e.g. out of descriptors): nobody awaits this.
      .catch((error: unknown) => process.emitWarning(`sandbox ${row.id}: stopping it after a failed identity refresh failed: ${String(error)}`));
  }

  #track(id: string, vm: Vm): void {
    this.#running.set(id, vm);
    // The guest clock stood still while the vCPUs were stopped.
    vm.onWake = () => {
      const row = this.db.sandbox(id);
      if (row) this.#refreshIdentity(vm, row);
    };
    vm.on("agent-down", (reason: string) => {
      if (this.#running.get(id) === vm) process.emitWarning(`sandbox ${id}: agent session lost (${reason}); reconnecting`);
    });
    vm.on("agent-up", () => {
      if (this.#running.get(id) === vm) process.emitWarning(`sandbox ${id}: agent session open again`);
    });
    vm.once("crashed", () => {
      if (this.#running.get(id) !== vm) return;
      this.#running.delete(id);
      try {
        if (!this.#closed) this.db.updateSandbox(id, { state: "lost", run_dir: null, pid: null });
      } catch (error) {
        // Thrown here it would reject the VM's exit handling, which nobody awaits; the next start finds it gone.
        process.emitWarning(`sandbox ${id}: recording its crash failed: ${String(error)}`);
      }
      void this.#ended(id);
    });
  }

  async #createFresh(snapshot: SnapshotRow, state: "running" | "pooled"): Promise<RunningSandbox> {
    if (this.#closed) throw new SandboxStateError("the engine is shutting down");
    const row: SandboxRow = {
      id: newId("sbx"),
      state: "creating",
      from_snapshot_id: snapshot.id,
      layer_id: null,
      paused_snapshot_id: null,
      machine_id: randomBytes(16).toString("hex"),
      memory_mib: snapshot.memory_mib,
      cpus: snapshot.cpus,
      run_dir: null,
      pid: null,
      created_at: Date.now(),
      updated_at: Date.now(),
    };
    this.db.insertSandbox(row);
    try {
      // Pool clones are prepared in the background: they must not take CPU from sandboxes in use.
      const vm = await this.#restore(row, snapshot, state === "pooled" ? POOL_NICENESS : 0);
      this.db.updateSandbox(row.id, { state });
      return { id: row.id, vm, agent: vm.agent };
    } catch (error) {
      this.db.updateSandbox(row.id, { state: "lost", run_dir: null, pid: null });
      await this.#ended(row.id);
      throw error;
    }
  }

  #startIdleMonitor(): void {
    const idleAfterMs = this.options.idleSleepAfterMs ?? DEFAULT_IDLE_SLEEP_AFTER_MS;
    if (idleAfterMs <= 0) return;
    let checking = false;
    this.#idleTimer = setInterval(() => {
      if (checking || this.#closed) return;
      checking = true;
      void this.#sleepIdleSandboxes(idleAfterMs)
        .catch((error: unknown) => process.emitWarning(`idle check: ${String(error)}`))
        .finally(() => (checking = false));
    }, IDLE_CHECK_INTERVAL_MS);
    this.#idleTimer.unref();
  }

  async #sleepIdleSandboxes(idleAfterMs: number): Promise<void> {
    for (const [id, vm] of this.#running) {
      // Pool clones are stopped already; a sandbox in the middle of an operation is not idle.
      if (vm.asleep || this.#locks.isBusy(id) || this.db.sandbox(id)?.state !== "running") continue;
      await this.#locks.run(id, () => vm.sleepIfIdle(idleAfterMs)).catch(() => false);
    }
  }

  /** A pool clone: restored, its first commands run (TCG has translated the hot paths), then its vCPUs stopped. */
  async #producePooled(snapshotId: string): Promise<string> {
    const snapshot = this.#requireSnapshot(snapshotId, ["template", "snapshot"]);
    const sandbox = await this.#createFresh(snapshot, "pooled");
    try {
      await warmUp(sandbox.agent, 3);
      // Rehearse the hand-out once: under TCG the first commands after a clone's first stop/cont were measured at
      // twice the time of later ones (~65 against ~30 ms for /bin/true), so that cost is paid here, not by a caller.
      await sandbox.vm.stopVcpus();
      await sandbox.vm.continue();
      const row = this.db.sandbox(sandbox.id);
      if (row) await sandbox.agent.refreshIdentity(identityRequest(row));
      await warmUp(sandbox.agent, 2);
      await sandbox.vm.stopVcpus();
    } catch (error) {
      await this.#discardPooled(sandbox.id);
      throw error;
    }
    return sandbox.id;
  }

  async #discardPooled(sandboxId: string): Promise<void> {
    const vm = this.#running.get(sandboxId);
    this.#running.delete(sandboxId);
    await vm?.kill();
    this.db.updateSandbox(sandboxId, { state: "stopped", run_dir: null, pid: null });
    await this.#ended(sandboxId);
  }

  /** Tells the network a sandbox ended for good; a failure there is reported, not the caller's problem. */
  async #ended(sandboxId: string): Promise<void> {
    for (const listener of this.#endedListeners) {
      try {
        listener(sandboxId);
      } catch (error) {
        process.emitWarning(`sandbox ${sandboxId}: an end listener failed: ${String(error)}`);
      }
    }
    await this.options.network?.ended(sandboxId).catch((error: unknown) => process.emitWarning(`sandbox ${sandboxId}: network clean-up failed: ${String(error)}`));
  }

  async #handOut(sandboxId: string): Promise<RunningSandbox | undefined> {
    const vm = this.#running.get(sandboxId);
    const row = this.db.sandbox(sandboxId);
    if (!vm || !row || row.state !== "pooled") return undefined;
    try {
      await vm.continue();
      this.#refreshIdentity(vm, row);
      await vm.setNiceness(0);
    } catch {
      await this.#discardPooled(sandboxId);
      return undefined;
    }
    this.db.updateSandbox(sandboxId, { state: "running" });
    return { id: sandboxId, vm, agent: vm.agent };
  }

  /**
   * Saves a running sandbox as a snapshot: its guest filesystems synced, vCPUs stopped, its disk layer frozen (the
   * sandbox goes on with a new layer over it), its private RAM copied into a receiving QEMU whose RAM is the
   * snapshot's memory file, and that receiver's device state saved. For a pause the sandbox's QEMU then exits;
   * otherwise it continues.
   */
  async #capture(vm: Vm, row: SandboxRow, kind: "snapshot" | "pause"): Promise<string> {
    if (!row.layer_id) throw new SandboxStateError(`sandbox ${row.id} has no disk layer`);
    const snapshotId = newId(kind === "pause" ? "pause" : "snap");
    const dir = this.#snapshotDir(snapshotId);
    await mkdir(dir, { recursive: true });
    const frozenLayerId = row.layer_id;
    this.db.insertSnapshot({
      id: snapshotId,
      kind,
      state: "saving",
      layer_id: frozenLayerId,
      memory_mib: row.memory_mib,
      cpus: row.cpus,
      accel: this.accel,
      compat: JSON.stringify(this.#compat(row.memory_mib, row.cpus)),
      source_sandbox_id: row.id,
      definition: null,
      created_at: Date.now(),
    });
    // The receiving QEMU starts while the guest syncs.
    const receiving = Vm.startReceiver({
      image: this.image,
      accel: this.accel,
      memoryMiB: row.memory_mib,
      cpus: row.cpus,
      memoryFile: join(dir, "memory"),
      tcgCpuModel: this.options.tcgCpuModel,
    });
    receiving.catch(() => {});
    let receiver: Vm | undefined;
    let stopped = false;
    try {
      await vm.agent.run({ argv: [GUEST_BUSYBOX, "sync"] });
      await vm.stopVcpus();
      stopped = true;
      if (kind === "snapshot") {
        const next = await this.#layers.createOver({ layerId: frozenLayerId });
        await vm.switchRootDisk(this.#layers.path(next.id));
        this.db.updateSandbox(row.id, { layer_id: next.id });
      }
      this.db.freezeLayer(frozenLayerId);
      receiver = await receiving;
      await transferToReceiver(vm.qmp, receiver.qmp, join(receiver.runDir, "ram.sock"), 300_000);
      if (kind === "snapshot") {
        await vm.continue();
        stopped = false;
      } else {
        await vm.kill();
      }
      await receiver.stopVcpus().catch(() => {}); // already stopped after an incoming migration of a stopped VM
      await saveDeviceState(receiver.qmp, join(dir, "device.state"), join(receiver.runDir, "state.sock"), 30_000);
      this.db.setSnapshotState(snapshotId, "ready");
    } catch (error) {
      // A capture that failed (EMFILE on a spawn or a socket, a receiver that did not start) leaves the sandbox
      // running as it was, a failed pause too: left stopped, its guest would never answer again. Its layer stays
      // marked frozen; nothing builds on it (the snapshot is forgotten) and the next capture freezes it anyway.
      if (stopped && vm.state === "running") await vm.continue().catch(() => {});
      else if (stopped) this.#lostInCapture(row.id, vm);
      await this.#forgetSnapshot(snapshotId);
      throw error;
    } finally {
      await (receiver ?? (await receiving.catch(() => undefined)))?.kill();
    }
    const layer = this.db.layer(frozenLayerId);
    if (layer && layer.depth > this.#maxChainDepth) await this.#layers.flatten(frozenLayerId);
    return snapshotId;
  }

  /**
   * Removes an exited VM's network namespace. One whose removal failed (its `ip` could not be spawned: EMFILE) would
   * stay until the next start, and the network forgets it at once, so a sweep of the namespaces no live sandbox
   * uses follows a little later (again a few times while it fails). The failure still reaches the VM, which reports it.
   */
  async #detachNetwork(sandboxId: string): Promise<void> {
    try {
      await this.options.network?.detach(sandboxId);
    } catch (error) {
      this.#sweepNetworkLater();
      throw error;
    }
  }

  #sweepNetworkLater(attempt = 1): void {
    const network = this.options.network;
    if (network === undefined || this.#networkSweep !== undefined || this.#closed) return;
    this.#networkSweep = setTimeout(() => {
      this.#networkSweep = undefined;
      if (this.#closed) return;
      // Exclusive: no create is between making its sandbox's row and its namespace, which the sweep would remove.
      const live = () => new Set([...this.#running.keys(), ...this.db.sandboxes(LIVE_SANDBOX_STATES).map((row) => row.id)]);
      void this.#gate.exclusive(() => network.sweep(live())).catch((error: unknown) => {
        process.emitWarning(`network namespace sweep (attempt ${attempt} of ${NETWORK_SWEEP_ATTEMPTS}) failed: ${String(error)}`);
        if (attempt < NETWORK_SWEEP_ATTEMPTS) this.#sweepNetworkLater(attempt + 1);
      });
    }, NETWORK_SWEEP_DELAY_MS);
    this.#networkSweep.unref();
  }

  /** A pause that failed after its QEMU was killed: the sandbox's RAM went with it. */
  #lostInCapture(sandboxId: string, vm: Vm): void {
    if (this.#running.get(sandboxId) !== vm) return;
    this.#running.delete(sandboxId);
    this.db.updateSandbox(sandboxId, { state: "lost", run_dir: null, pid: null });
    void this.#ended(sandboxId);
  }

  /** Removes a snapshot's record and its memory and device files (its disk layer is collected when unreachable). */
  async #forgetSnapshot(id: string): Promise<void> {
    this.db.setSnapshotState(id, "deleted");
    await rm(this.#snapshotDir(id), { recursive: true, force: true });
  }

  /** Live sandboxes and ready snapshots (other than `except`) whose disk chain includes `layerId`. */
  #usersOfLayer(layerId: string, except: string, options: { ignorePooled?: boolean } = {}): string[] {
    const users: string[] = [];
    for (const sandbox of this.db.sandboxes(LIVE_SANDBOX_STATES)) {
      if (options.ignorePooled && sandbox.state === "pooled") continue;
      const top = sandbox.paused_snapshot_id ? this.db.snapshot(sandbox.paused_snapshot_id)?.layer_id : sandbox.layer_id;
      if (top && this.#layers.chain(top).includes(layerId)) users.push(`sandbox ${sandbox.id}`);
    }
    for (const snapshot of this.db.snapshots(["ready", "saving"])) {
      if (snapshot.id !== except && this.#layers.chain(snapshot.layer_id).includes(layerId)) users.push(`snapshot ${snapshot.id}`);
    }
    return users;
  }

  async #collectGarbage(): Promise<string[]> {
    const removed: string[] = [];
    const reachable = new Set<string>();
    const live = this.db.sandboxes(LIVE_SANDBOX_STATES);
    const snapshots = this.db.snapshots(["ready", "saving"]);
    for (const top of [...live.map((s) => s.layer_id), ...snapshots.map((s) => s.layer_id)]) {
      if (top) for (const id of this.#layers.chain(top)) reachable.add(id);
    }
    for (const layer of this.db.layers()) {
      if (reachable.has(layer.id)) continue;
      await this.#layers.remove(layer.id);
      removed.push(this.#layers.path(layer.id));
    }
    const known = new Set(this.db.layers().map((layer) => `${layer.id}.qcow2`));
    for (const name of await readdir(this.#layers.dir).catch(() => [] as string[])) {
      if (known.has(name)) continue;
      await rm(join(this.#layers.dir, name), { force: true });
      removed.push(join(this.#layers.dir, name));
    }
    for (const row of this.db.snapshots(["deleted"])) this.db.deleteSnapshotRow(row.id);
    const snapshotIds = new Set(snapshots.map((s) => s.id));
    const snapshotsDir = join(dataDir(), "snapshots");
    for (const name of await readdir(snapshotsDir).catch(() => [] as string[])) {
      if (snapshotIds.has(name)) continue;
      await rm(join(snapshotsDir, name), { recursive: true, force: true });
      removed.push(join(snapshotsDir, name));
    }
    const liveRunDirs = new Set([...this.#running.values()].map((vm) => basename(vm.runDir)));
    const runRoot = join(dataDir(), "run");
    const runningQemuDirs = new Set(findEngineQemus(runRoot).map((q) => basename(q.runDir)));
    for (const name of await readdir(runRoot).catch(() => [] as string[])) {
      // A directory a QEMU still uses belongs to a VM being started or stopped right now (e.g. `vm run`).
      if (liveRunDirs.has(name) || runningQemuDirs.has(name)) continue;
      await rm(join(runRoot, name), { recursive: true, force: true });
      removed.push(join(runRoot, name));
    }
    return removed;
  }

  /** Start-up reconciliation: adopt what still runs, kill what nobody owns, mark the rest lost, collect garbage. */
  async #recover(): Promise<void> {
    const runRoot = join(dataDir(), "run");
    const qemus = findEngineQemus(runRoot);
    const adopted = new Set<number>();
    for (const row of this.db.sandboxes(LIVE_SANDBOX_STATES)) {
      if (row.state === "paused") {
        const snapshot = row.paused_snapshot_id ? this.db.snapshot(row.paused_snapshot_id) : undefined;
        if (!snapshot || snapshot.state !== "ready") this.db.updateSandbox(row.id, { state: "lost" });
        continue;
      }
      const qemu = qemus.find((q) => q.pid === row.pid && q.runDir === row.run_dir);
      if (row.state === "running" && qemu && row.layer_id && existsSync(join(qemu.runDir, "qmp.sock"))) {
        try {
          const vm = await Vm.adopt({
            id: basename(qemu.runDir),
            runDir: qemu.runDir,
            pid: qemu.pid,
            image: this.image,
            accel: this.accel,
            memoryMiB: row.memory_mib,
            cpus: row.cpus,
            rootDisk: this.#layers.path(row.layer_id),
          });
          const networking = this.options.network;
          if (networking) {
            // A sandbox whose network is gone cannot reach anything any more; it goes on without one.
            if (!(await networking.adopt(row.id))) process.emitWarning(`sandbox ${row.id}: its network namespace is gone`);
            vm.afterExit = () => this.#detachNetwork(row.id);
          }
          this.#track(row.id, vm);
          this.#refreshIdentity(vm, row); // its clock may have stood still (stopped while idle)
          adopted.add(qemu.pid);
          continue;
        } catch {
          // Not answering: treated like any other process nobody owns.
        }
      }
      this.db.updateSandbox(row.id, { state: "lost", run_dir: null, pid: null });
    }
    const killed: number[] = [];
    for (const qemu of qemus) {
      if (adopted.has(qemu.pid)) continue;
      try {
        process.kill(qemu.pid, "SIGKILL");
        killed.push(qemu.pid);
      } catch {
        // Gone already.
      }
    }
    // A killed process may take a moment to release its files and its cgroup: wait until it is gone from /proc
    // altogether (reaped), not only until its command line is (that empties as soon as it starts exiting).
    const reaped = () => !killed.some((pid) => existsSync(`/proc/${pid}`)) && !findEngineQemus(runRoot).some((q) => !adopted.has(q.pid));
    for (let i = 0; i < 300 && !reaped(); i++) await new Promise((r) => setTimeout(r, 10));
    for (const row of this.db.snapshots(["saving"])) await this.#forgetSnapshot(row.id);
    await this.#collectGarbage();
    await this.options.network?.sweep(new Set([...this.#running.keys()]));
    // After the kills above: the cgroups of QEMUs a crashed engine left are empty now; adopted VMs keep theirs.
    removeStaleVmCgroups();
  }
}

function toSandboxInfo(row: SandboxRow): SandboxInfo {
  return { id: row.id, state: row.state, fromSnapshotId: row.from_snapshot_id, memoryMiB: row.memory_mib, cpus: row.cpus, createdAt: row.created_at };
}

function toSnapshotInfo(row: SnapshotRow): SnapshotInfo {
  return { id: row.id, kind: row.kind, createdAt: row.created_at, memoryMiB: row.memory_mib, cpus: row.cpus, sourceSandboxId: row.source_sandbox_id };
}

/** Runs typical first commands (argv and shell forms) so their code is translated and their pages touched. */
/** A fresh clock and fresh entropy, with the sandbox's own names. */
function identityRequest(row: SandboxRow): IdentityRequest {
  return { epochMs: Date.now(), entropy: randomBytes(64).toString("base64"), hostname: row.id, machineId: row.machine_id };
}

async function warmUp(agent: AgentClient, rounds: number): Promise<void> {
  for (let i = 0; i < rounds; i++) {
    await agent.run({ argv: ["/bin/true"], stdin: false });
    await agent.run({ shell: "true", stdin: false });
  }
}

async function waitUntilReady(agent: AgentClient, readyCheck: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const result = await agent.run({ shell: readyCheck, stdin: false, timeoutMs: Math.max(1000, deadline - Date.now()) });
    if (result.exitCode === 0) return;
    if (Date.now() > deadline) {
      throw new InvalidRequestError(`ready check did not succeed within ${timeoutMs} ms (last exit ${result.exitCode}): ${result.stderr.toString().slice(0, 500)}`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}
