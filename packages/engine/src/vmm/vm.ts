import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { EventEmitter } from "node:events";
import { closeSync, existsSync, openSync } from "node:fs";
import { copyFile, mkdir, readdir, rm } from "node:fs/promises";
import { setPriority } from "node:os";
import { join } from "node:path";
import { dataDir } from "../config.js";
import { boundConsoleLog, pruneKeptConsoleLogs, releaseConsoleLog } from "./console-log.js";
import type { GuestImage } from "../images/guest-image.js";
import { AgentClient } from "../agent-client/index.js";
import { runTool } from "../util/run-tool.js";
import { chooseAccelerator } from "./accel.js";
import { createVmCgroup, joinVmCgroup, type VmCgroup } from "./cgroups/vm-cgroup.js";
import { vmResourceLimits, type VmResourceLimits } from "./cgroups/vm-limits.js";
import { VmAgentDownError, VmBootTimeoutError, VmConfigError, VmCrashedError } from "./errors.js";
import { AGENT_PORT_DEVICE_ID, CPU_LIMITS, MEMORY_LIMITS_MIB, QEMU_BINARY, qemuArgs, type Accelerator, type GuestMemory } from "./machine.js";
import { loadDeviceState } from "./migration.js";
import { QmpClient, type QmpEvent } from "./qmp.js";
import { adoptedProcess, spawnedProcess, type QemuProcess } from "./qemu-process.js";
import { trackVm, untrackVm } from "./reaper.js";

export interface VmOptions {
  image: GuestImage;
  memoryMiB?: number;
  cpus?: number;
  /** Default: the probed accelerator (KVM when it really boots, TCG otherwise). */
  accel?: Accelerator;
  /** From QEMU spawn to a ready agent. Default 60 s. */
  bootTimeoutMs?: number;
  /** Guest RAM backing; default anonymous memory. A template boots with a shared memory file. */
  memory?: GuestMemory;
  /**
   * The qcow2 layer the VM writes its root disk to, created by the caller (its owner decides where disk layers
   * live). Default: a fresh overlay over the image's base inside the VM's runtime directory.
   */
  rootDisk?: string;
  /** CPU model under TCG; default TCG_CPU_MODEL. */
  tcgCpuModel?: string;
  /** Scheduling niceness of the QEMU process (e.g. for clones prepared in the background); default 0. */
  niceness?: number;
  /**
   * The network namespace to run QEMU in and the tap device there that backs the guest's network device; without
   * it the device has no backend (no network).
   */
  network?: { netns: string; tap: string };
}

/** What a restore needs: the saved device state and the RAM and disk it was saved with. */
export interface RestoreOptions extends Omit<VmOptions, "memory" | "rootDisk"> {
  memoryMiB: number;
  cpus: number;
  accel: Accelerator;
  /** RAM file of the snapshot: mapped private, so the clone shares its pages copy-on-write. */
  memoryFile: string;
  /** Device state saved with x-ignore-shared (the RAM is in memoryFile). */
  deviceStateFile: string;
  /** Writable qcow2 layer over the snapshot's disk, created by the caller. */
  rootDisk: string;
}

export type VmState = "booting" | "running" | "stopped" | "crashed";

/**
 * QEMU's command line with its wrappers, each of which execs the next (the spawned pid is QEMU's): nsenter(1) to
 * start it in the sandbox's network namespace, where it opens its tap device; nice(1) so that every QEMU thread
 * (vCPUs included) starts at that priority.
 */
function qemuCommand(args: string[], options: VmOptions): [string, string[]] {
  let argv = [QEMU_BINARY, ...args];
  if (options.niceness) argv = ["nice", "-n", String(options.niceness), ...argv];
  if (options.network) argv = ["nsenter", `--net=/run/netns/${options.network.netns}`, "--", ...argv];
  return [argv[0]!, argv.slice(1)];
}

/** Longest Unix socket path the kernel accepts (sun_path) minus the terminating NUL. */
const MAX_SOCKET_PATH = 107;
/** Descriptor number under which a restoring QEMU inherits the device state file. */
const INCOMING_STATE_FD = 3;
/** First pause between agent connection attempts; it doubles up to AGENT_RETRY_MAX_DELAY_MS. */
const AGENT_RETRY_FIRST_DELAY_MS = 200;
const AGENT_RETRY_MAX_DELAY_MS = 5_000;
/**
 * Bound on one attempt to reach an agent that restarts (handshake and first health answer): the hello waits in the
 * socket until the new agent opens its port, which under TCG on a busy host takes several seconds.
 */
const AGENT_RECOVERY_ATTEMPT_MS = 20_000;
/**
 * How long a VM whose agent session was lost keeps trying to reach a new agent before it is given up as crashed.
 * The guest's keeper restarts the agent within seconds; a guest whose agent stays away this long is not coming back.
 */
const AGENT_RECOVERY_WINDOW_MS = 3 * 60_000;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function logsDir(): string {
  return join(dataDir(), "logs");
}

/**
 * One QEMU microVM and its agent connection. Owns its QEMU process and its runtime directory (sockets, disk
 * overlay, console log): whatever way it ends — stop, kill, crash, boot timeout — both are gone afterwards,
 * except the console log, which is kept under logs/ when the VM failed.
 *
 * Events: "crashed" (VmCrashedError) when QEMU exits without being asked to, or when its agent stayed unreachable
 * for AGENT_RECOVERY_WINDOW_MS; "agent-down" (reason: string) when the agent session ended without the host asking
 * (the agent exited: its port closed; or the guest broke the session); "agent-up" once a new session is open.
 */
export class Vm extends EventEmitter {
  state: VmState = "booting";
  #agent: AgentClient | undefined;
  /** Set while the agent session is lost and a new one is being opened; why it was lost. */
  #agentDown: string | undefined;
  /** Set during an agent connection attempt: gives it up when the guest opens the agent's port. */
  #onPortOpened: (() => void) | undefined;
  #qmp: QmpClient | undefined;
  #exit: Promise<void>;
  #stopping = false;
  #qemuStderr = "";
  /** The qcow2 layer the guest writes its root disk to. */
  rootDisk = "";
  #asleep = false;
  #vcpuCommands: Promise<unknown> = Promise.resolve();
  /** The cgroup limiting this VM's QEMU; undefined when the host offers none (see cgroups/host-cgroups.ts). */
  #cgroup: VmCgroup | undefined;
  /**
   * Runs synchronously when a request wakes a sleeping VM, before that request is sent: a request it sends (e.g.
   * setting the guest clock, which stood still) reaches the guest first.
   */
  onWake: (() => void) | undefined;

  /**
   * Runs once QEMU has exited, whichever way (stop, kill, crash), before stop()/kill() resolve or "crashed" is
   * emitted: what the VM's owner made for it (its network) goes with it. Failures are reported, not thrown.
   */
  afterExit: (() => Promise<void>) | undefined;

  private constructor(
    readonly id: string,
    readonly runDir: string,
    readonly accel: Accelerator,
    readonly memoryMiB: number,
    readonly cpus: number,
    readonly image: GuestImage,
    private readonly process: QemuProcess,
  ) {
    super();
    boundConsoleLog(this.consoleLog);
    this.#exit = process.exited.then(() => undefined);
    // Nobody awaits this: a clean-up step that fails (rm or readdir with EMFILE) must be reported, not end the server.
    void process.exited
      .then(({ code, signal }) => this.#onExit(code, signal))
      .catch((error: unknown) => globalThis.process.emitWarning(`VM ${this.id}: handling its exit failed: ${String(error)}`));
  }

  get pid(): number | undefined {
    return this.process.pid;
  }

  /** The cgroup around this VM's QEMU process, if one was made (check `limits` for whether it is in force). */
  get cgroup(): VmCgroup | undefined {
    return this.#cgroup;
  }

  /** The CPU, memory and thread limits on this VM's QEMU process; undefined when it runs without (host support). */
  get limits(): VmResourceLimits | undefined {
    return this.#cgroup?.enforced ? this.#cgroup.limits : undefined;
  }

  get agent(): AgentClient {
    if (!this.#agent || this.state !== "running") throw new VmCrashedError(`VM ${this.id} is ${this.state}`, this.id);
    if (this.#agentDown !== undefined) throw new VmAgentDownError(`VM ${this.id}: its agent is restarting (${this.#agentDown})`, this.id);
    return this.#agent;
  }

  /** Why the agent session is lost while the VM reconnects, or undefined while it is up. */
  get agentDown(): string | undefined {
    return this.#agentDown;
  }

  get qmp(): QmpClient {
    if (!this.#qmp) throw new VmCrashedError(`VM ${this.id} has no QMP connection`, this.id);
    return this.#qmp;
  }

  get consoleLog(): string {
    return join(this.runDir, "console.log");
  }

  /** Boots a VM from the image and resolves once its agent answers. On any failure nothing is left running. */
  static async boot(options: VmOptions): Promise<Vm> {
    const vm = await Vm.#launch(options, { incoming: false });
    const timeoutMs = options.bootTimeoutMs ?? 60_000;
    const deadline = Date.now() + timeoutMs;
    await vm.#startOrTearDown(deadline, timeoutMs, (qmpSocket, agentSocket) =>
      vm.#connect(qmpSocket, deadline, async () => {
        // Bytes the host sends wait in the socket until the agent opens its port, so connecting now and waiting
        // for the first health answer is exactly "wait until the agent is ready".
        vm.#useAgent(await AgentClient.connect(agentSocket, { timeoutMs: Math.max(1, deadline - Date.now()) }));
      }),
    );
    return vm;
  }

  /**
   * Restores a VM from a saved device state and RAM file (a template clone, a resume, a fork): QEMU starts with the
   * identical device layout and `-incoming defer`, loads the device state, the vCPUs continue where they were
   * stopped, and a new agent session is opened. On any failure nothing is left running.
   */
  static async restore(options: RestoreOptions): Promise<Vm> {
    const vm = await Vm.#launch(
      { ...options, memory: { kind: "file", path: options.memoryFile, shared: false } },
      { incoming: true, stateFile: options.deviceStateFile },
    );
    const timeoutMs = options.bootTimeoutMs ?? 30_000;
    const deadline = Date.now() + timeoutMs;
    await vm.#startOrTearDown(deadline, timeoutMs, (qmpSocket) =>
      vm.#connect(qmpSocket, deadline, async () => {
        await loadDeviceState(vm.qmp, INCOMING_STATE_FD, Math.max(1, deadline - Date.now()));
        await vm.qmp.execute("cont");
        vm.#useAgent(await vm.#connectAgentWithRetry(deadline));
      }),
    );
    return vm;
  }

  /**
   * A QEMU that only receives a migrated VM into a shared memory file and is never run: the way a clone's private
   * RAM becomes a snapshot's memory file. Its root disk is a throwaway overlay; the real one is frozen by the source.
   */
  static async startReceiver(options: Omit<VmOptions, "memory" | "rootDisk"> & { memoryFile: string }): Promise<Vm> {
    const vm = await Vm.#launch({ ...options, memory: { kind: "file", path: options.memoryFile, shared: true } }, { incoming: true });
    const timeoutMs = options.bootTimeoutMs ?? 30_000;
    const deadline = Date.now() + timeoutMs;
    await vm.#startOrTearDown(deadline, timeoutMs, (qmpSocket) => vm.#connect(qmpSocket, deadline, async () => {}));
    return vm;
  }

  /**
   * Re-attaches to a VM a previous engine process started (after a crash or restart of the engine): QMP and a new
   * agent session. Throws (and kills the process) when the VM does not answer.
   */
  static async adopt(options: {
    id: string;
    runDir: string;
    pid: number;
    image: GuestImage;
    accel: Accelerator;
    memoryMiB: number;
    cpus: number;
    rootDisk: string;
    timeoutMs?: number;
  }): Promise<Vm> {
    const vm = new Vm(options.id, options.runDir, options.accel, options.memoryMiB, options.cpus, options.image, adoptedProcess(options.pid, options.runDir));
    vm.rootDisk = options.rootDisk;
    // Into a cgroup of its own shape under this engine's cgroup: the same one when the previous engine process made
    // it there (creating it again is a no-op), otherwise a new one, leaving the old, now empty, to stale cleanup.
    // Memory it was charged before the move stays with the old cgroup (the kernel does not move charges).
    vm.#cgroup = createVmCgroup(vm.id, vmResourceLimits({ cpus: options.cpus, memoryMiB: options.memoryMiB, accel: options.accel }));
    joinVmCgroup(vm.#cgroup, options.pid, vm.id);
    trackVm(vm.id, vm.process, options.runDir, vm.#cgroup);
    const timeoutMs = options.timeoutMs ?? 10_000;
    const deadline = Date.now() + timeoutMs;
    await vm.#startOrTearDown(deadline, timeoutMs, (qmpSocket) =>
      vm.#connect(qmpSocket, deadline, async () => {
        const status = await vm.qmp.execute<{ status: string }>("query-status");
        // Stopped by the previous engine (idle or pooled): the new owner starts from a running VM.
        if (status.status !== "running") await vm.qmp.execute("cont");
        vm.#useAgent(await vm.#connectAgentWithRetry(deadline));
      }),
    );
    return vm;
  }

  static #validate(memoryMiB: number, cpus: number, id: string): void {
    if (!Number.isInteger(memoryMiB) || memoryMiB < MEMORY_LIMITS_MIB.min || memoryMiB > MEMORY_LIMITS_MIB.max) {
      throw new VmConfigError(`memory must be an integer from ${MEMORY_LIMITS_MIB.min} to ${MEMORY_LIMITS_MIB.max} MiB, got ${memoryMiB}`, id);
    }
    if (!Number.isInteger(cpus) || cpus < CPU_LIMITS.min || cpus > CPU_LIMITS.max) {
      throw new VmConfigError(`cpus must be an integer from ${CPU_LIMITS.min} to ${CPU_LIMITS.max}, got ${cpus}`, id);
    }
  }

  /** Creates the runtime directory and spawns QEMU; the caller connects. */
  static async #launch(options: VmOptions, mode: { incoming: boolean; stateFile?: string }): Promise<Vm> {
    const memoryMiB = options.memoryMiB ?? 512;
    const cpus = options.cpus ?? 1;
    const id = `vm-${randomBytes(6).toString("hex")}`;
    Vm.#validate(memoryMiB, cpus, id);
    const runDir = join(dataDir(), "run", id);
    const agentSocket = join(runDir, "agent.sock");
    if (agentSocket.length > MAX_SOCKET_PATH) {
      throw new VmConfigError(`data dir path too long for Unix sockets (${agentSocket}); set CODECOURIER_HOME to a shorter path`, id);
    }
    const accel = options.accel ?? (await chooseAccelerator(options.image)).accel;
    await mkdir(runDir, { recursive: true });
    let rootDisk = options.rootDisk;
    if (rootDisk === undefined) {
      rootDisk = join(runDir, "root.qcow2");
      try {
        await runTool("qemu-img", ["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", options.image.rootDiskPath, rootDisk]);
      } catch (error) {
        await rm(runDir, { recursive: true, force: true });
        throw error;
      }
    }
    const args = qemuArgs({
      accel,
      memoryMiB,
      cpus,
      kernelPath: options.image.kernelPath,
      initramfsPath: options.image.initramfsPath,
      systemDiskPath: options.image.systemDiskPath,
      rootDiskPath: rootDisk,
      qmpSocket: join(runDir, "qmp.sock"),
      agentSocket,
      consoleLog: join(runDir, "console.log"),
      memory: options.memory,
      incoming: mode.incoming,
      tcgCpuModel: options.tcgCpuModel,
      networkTap: options.network?.tap,
    });
    // Made before the spawn, joined right after it (below); see ADR 0008 for why no wrapper joins it before exec.
    const cgroup = createVmCgroup(id, vmResourceLimits({ cpus, memoryMiB, accel }));
    // The saved device state reaches QEMU as an inherited descriptor: spawn=deny rules out `exec:` migration
    // URIs, and Node cannot pass descriptors over the QMP socket.
    let stateFd: number | undefined;
    let child: ChildProcess;
    try {
      if (mode.stateFile !== undefined) stateFd = openSync(mode.stateFile, "r");
      const [command, commandArgs] = qemuCommand(args, options);
      child = spawn(command, commandArgs, { stdio: ["ignore", "ignore", "pipe", stateFd ?? "ignore"], cwd: runDir });
      // In the same tick as the spawn: QEMU has just been exec'd and is still being loaded, long before it maps
      // guest RAM or runs a vCPU. A restoring QEMU does nothing at all until told to load the device state.
      if (child.pid !== undefined) joinVmCgroup(cgroup, child.pid, id);
    } catch (error) {
      cgroup?.removeNow();
      await rm(runDir, { recursive: true, force: true });
      throw error;
    } finally {
      if (stateFd !== undefined) closeSync(stateFd);
    }
    const vm = new Vm(id, runDir, accel, memoryMiB, cpus, options.image, spawnedProcess(child));
    vm.rootDisk = rootDisk;
    vm.#cgroup = cgroup;
    trackVm(vm.id, vm.process, runDir, cgroup);
    child.stderr?.on("data", (chunk: Buffer) => (vm.#qemuStderr = (vm.#qemuStderr + chunk.toString()).slice(-4096)));
    return vm;
  }

  /** Runs the start-up steps; on failure tears everything down and throws a typed error. */
  async #startOrTearDown(
    deadline: number,
    timeoutMs: number,
    steps: (qmpSocket: string, agentSocket: string) => Promise<void>,
  ): Promise<void> {
    try {
      await steps(join(this.runDir, "qmp.sock"), join(this.runDir, "agent.sock"));
    } catch (error) {
      const kept = await this.#teardown(true);
      if (error instanceof VmCrashedError) throw new VmCrashedError(error.message, this.id, kept);
      if (Date.now() >= deadline) {
        throw new VmBootTimeoutError(`VM ${this.id} did not become ready within ${timeoutMs} ms`, this.id, kept, { cause: error });
      }
      throw new VmCrashedError(`VM ${this.id} failed to start: ${(error as Error).message}`, this.id, kept, { cause: error });
    }
    this.state = "running";
  }

  /** Waits for QEMU's QMP socket, connects to it, then runs `then`, failing early if QEMU exits. */
  async #connect(qmpSocket: string, deadline: number, then: () => Promise<void>): Promise<void> {
    const exited = this.#exit.then(() => {
      throw new VmCrashedError(`QEMU exited during start: ${this.#qemuStderr.trim() || "no message"}`, this.id);
    });
    exited.catch(() => {});
    const connectAll = async () => {
      // QEMU creates its listening sockets right after start; before that there is nothing to connect to.
      const agentSocket = join(this.runDir, "agent.sock");
      while (!(existsSync(qmpSocket) && existsSync(agentSocket))) {
        if (Date.now() > deadline) throw new Error("QEMU did not create its sockets");
        await new Promise((r) => setTimeout(r, 2));
      }
      this.#qmp = await QmpClient.connect(qmpSocket, Math.max(1, deadline - Date.now()));
      this.#qmp.on("event", (event: QmpEvent) => this.#onQmpEvent(event));
      await then();
    };
    await Promise.race([connectAll(), exited]);
  }

  /**
   * Opens a new agent session on the same running agent (the old one is closed first). Whatever stale bytes the
   * port still holds (output the guest was writing when the previous connection closed) are skipped by the
   * handshake every connection starts with, so a retry is only needed for a transient failure.
   */
  async reconnectAgent(timeoutMs = 10_000): Promise<AgentClient> {
    await this.#agent?.close();
    return this.#useAgent(await this.#connectAgentWithRetry(Date.now() + timeoutMs));
  }

  /**
   * Connects to the agent, retrying with a doubling pause until `deadline`; throws the last failure. While
   * recovering a lost agent, an attempt is given up early when the guest opens the agent's port meanwhile: whoever
   * opened it (a restarted agent, or a guest process in its place) may never see a hello sent before, so a fresh
   * one is due. (Not otherwise: a restored VM reports its port opening again after the load, with nothing lost.)
   */
  async #connectAgentWithRetry(
    deadline: number,
    { attemptTimeoutMs = Number.POSITIVE_INFINITY, restartOnPortOpen = false }: { attemptTimeoutMs?: number; restartOnPortOpen?: boolean } = {},
  ): Promise<AgentClient> {
    const socketPath = join(this.runDir, "agent.sock");
    let delay = AGENT_RETRY_FIRST_DELAY_MS;
    for (;;) {
      if (this.state === "stopped" || this.state === "crashed") throw new VmCrashedError(`VM ${this.id} is ${this.state}`, this.id);
      const portOpened = new AbortController();
      if (restartOnPortOpen) this.#onPortOpened = () => portOpened.abort();
      try {
        const timeoutMs = Math.max(1, Math.min(attemptTimeoutMs, deadline - Date.now()));
        return await AgentClient.connect(socketPath, { timeoutMs, signal: portOpened.signal });
      } catch (error) {
        if (portOpened.signal.aborted && Date.now() + AGENT_RETRY_FIRST_DELAY_MS < deadline) {
          // A short pause all the same: a guest that opens and closes its port in a loop sets the pace otherwise.
          await sleep(AGENT_RETRY_FIRST_DELAY_MS);
          continue;
        }
        if (Date.now() + delay >= deadline) throw error;
        await sleep(delay);
        delay = Math.min(delay * 2, AGENT_RETRY_MAX_DELAY_MS);
      } finally {
        this.#onPortOpened = undefined;
      }
    }
  }

  /**
   * The agent closed its port (it exited, or was killed): the session over it is dead, though the socket is not.
   * The port opened: a connection attempt in progress starts over (see #connectAgentWithRetry).
   */
  #onQmpEvent(event: QmpEvent): void {
    if (event.event !== "VSERPORT_CHANGE") return;
    const data = event.data as { id?: unknown; open?: unknown } | undefined;
    if (data?.id !== AGENT_PORT_DEVICE_ID) return;
    if (data.open === true) return this.#onPortOpened?.();
    if (this.#agent !== undefined && !this.#agent.closed) this.#agentLost("the agent closed its port (it exited)", { agentExited: true });
  }

  /**
   * The session ended without the host asking, or the agent went away under it: fail what is in flight (the
   * session is closed, so its requests end with AgentDisconnectedError), tell the owner, and open a new session
   * with back-off until one answers or AGENT_RECOVERY_WINDOW_MS has passed (then the VM is given up as crashed).
   */
  #agentLost(reason: string, { agentExited = false } = {}): void {
    if (this.#agentDown !== undefined || this.state !== "running" || this.#stopping) return;
    this.#agentDown = reason;
    // Hanging up also throws away what the old connection still had queued in the socket.
    void this.#agent?.close(reason, { agentExited });
    this.emit("agent-down", reason);
    void this.#recoverAgent();
  }

  async #recoverAgent(): Promise<void> {
    const deadline = Date.now() + AGENT_RECOVERY_WINDOW_MS;
    let client: AgentClient;
    try {
      // A guest put to sleep while idle runs nothing, its agent keeper included.
      if (this.#asleep) await this.continue();
      client = await this.#connectAgentWithRetry(deadline, { attemptTimeoutMs: AGENT_RECOVERY_ATTEMPT_MS, restartOnPortOpen: true });
    } catch (error) {
      if (this.state !== "running" || this.#stopping) return;
      const kept = await this.#teardown(true);
      const message = `VM ${this.id}: its agent did not come back within ${AGENT_RECOVERY_WINDOW_MS / 1000} s (${this.#agentDown}): ${(error as Error).message}`;
      this.emit("crashed", new VmCrashedError(message, this.id, kept, { cause: error }));
      return;
    }
    if (this.state !== "running" || this.#stopping) {
      await client.close();
      return;
    }
    this.#agentDown = undefined;
    this.#useAgent(client);
    this.emit("agent-up");
  }

  /** Sets the scheduling niceness of every QEMU thread (Linux schedules threads, not processes). */
  async setNiceness(niceness: number): Promise<void> {
    const pid = this.pid;
    if (pid === undefined) return;
    for (const tid of await readdir(`/proc/${pid}/task`).catch(() => [] as string[])) {
      try {
        setPriority(Number(tid), niceness);
      } catch {
        // The thread exited meanwhile.
      }
    }
  }

  #useAgent(client: AgentClient): AgentClient {
    this.#agent = client;
    client.activity.onRequestStarting = () => this.#wakeForRequest();
    void client.ended.then(({ failure, byHost }) => {
      // The host's own close (a reconnect, a template being saved, the VM stopping) is not a loss.
      if (!byHost && this.#agent === client) this.#agentLost(failure.message);
    });
    return client;
  }

  /** Stops the vCPUs (QMP stop). The guest's clock and processes stand still until {@link continue}. */
  stopVcpus(): Promise<void> {
    return this.#vcpuCommand("stop");
  }

  /** Lets stopped vCPUs run again. */
  continue(): Promise<void> {
    this.#asleep = false;
    return this.#vcpuCommand("cont");
  }

  /** Whether the VM is idle with its vCPUs stopped (see {@link sleepIfIdle}). */
  get asleep(): boolean {
    return this.#asleep;
  }

  /**
   * Stops the vCPUs when nothing runs in the guest (no command, no process besides its plumbing) and the host has
   * sent no request for `idleForMs`: an idle guest then costs no host CPU. The next request starts them again
   * before it is sent, and {@link onWake} runs first. Returns whether the VM went to sleep.
   */
  async sleepIfIdle(idleForMs: number): Promise<boolean> {
    if (this.#asleep || this.state !== "running" || !this.#agent || this.#agentDown !== undefined) return false;
    const { activity } = this.#agent;
    if (activity.inFlight > 0 || activity.idleMs < idleForMs) return false;
    const guest = await this.#agent.guestActivity();
    // Nothing can start a request between the answer and the flag below: no await in between.
    if (guest.runningCommands > 0 || guest.otherProcesses > 0 || activity.inFlight > 0) return false;
    this.#asleep = true;
    await this.#vcpuCommand("stop");
    return true;
  }

  #wakeForRequest(): void {
    if (!this.#asleep) return;
    this.#asleep = false;
    void this.#vcpuCommand("cont").catch(() => {});
    this.onWake?.();
  }

  /** vCPU stop/cont in the order they were asked for, so a wake-up can never overtake the stop it undoes. */
  #vcpuCommand(command: "stop" | "cont"): Promise<void> {
    const next = this.#vcpuCommands.then(() => this.qmp.execute(command));
    this.#vcpuCommands = next.catch(() => {});
    return next.then(() => undefined);
  }

  /**
   * Makes the current root disk layer read-only and continues on `nextLayer` (an existing qcow2 whose backing file is
   * the current layer). The vCPUs must be stopped, so the frozen layer matches the RAM saved with it.
   */
  async switchRootDisk(nextLayer: string): Promise<void> {
    await this.qmp.execute("blockdev-snapshot-sync", {
      device: "root",
      "snapshot-file": nextLayer,
      format: "qcow2",
      mode: "existing",
    });
    this.rootDisk = nextLayer;
  }

  /** Stops the VM (QMP quit, SIGKILL if QEMU does not exit promptly) and removes its runtime directory. */
  async stop(): Promise<void> {
    if (this.state === "stopped" || this.state === "crashed") return;
    this.#stopping = true;
    await this.#agent?.close().catch(() => {});
    try {
      await this.#qmp?.execute("quit", undefined, 2000);
    } catch {
      // QEMU may close the monitor before answering; the exit below is what counts.
    }
    const exited = await Promise.race([this.#exit.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 3000))]);
    if (!exited) this.process.kill();
    await this.#teardown(false);
  }

  /** Kills QEMU at once (SIGKILL) and cleans up. */
  async kill(): Promise<void> {
    if (this.state === "stopped" || this.state === "crashed") return;
    this.#stopping = true;
    await this.#teardown(false);
  }

  async #onExit(code: number | null, signal: NodeJS.Signals | null): Promise<void> {
    if (this.#stopping || this.state === "booting") return;
    const kept = await this.#teardown(true);
    const error = new VmCrashedError(`VM ${this.id} crashed: QEMU exited (${signal ?? `code ${code}`})`, this.id, kept);
    this.emit("crashed", error);
  }

  /** Kills QEMU if still alive, closes connections and removes the runtime dir. Returns the kept console log. */
  async #teardown(failed: boolean): Promise<string | undefined> {
    const wasStopped = this.state === "stopped" || this.state === "crashed";
    this.state = failed ? "crashed" : "stopped";
    if (wasStopped) return undefined;
    this.#stopping = true;
    // Also when it looks dead already: kill() is a no-op then, and an adopted QEMU's exit is only seen while waited for.
    this.process.kill();
    await this.#exit;
    await this.afterExit?.().catch((error: unknown) => process.emitWarning(`VM ${this.id}: clean-up after exit failed: ${String(error)}`));
    await this.#cgroup?.remove();
    untrackVm(this.id);
    await this.#agent?.close().catch(() => {});
    this.#qmp?.close();
    releaseConsoleLog(this.consoleLog);
    let kept: string | undefined;
    if (failed && existsSync(this.consoleLog)) {
      await mkdir(logsDir(), { recursive: true });
      kept = join(logsDir(), `${this.id}-console.log`);
      await copyFile(this.consoleLog, kept).catch(() => (kept = undefined));
      await pruneKeptConsoleLogs(logsDir());
    }
    // Out of descriptors (EMFILE) a recursive rm fails: the VM is gone all the same, and the engine's garbage
    // collection at its next start removes the dir. Thrown, it would fail a kill whose work is done.
    await rm(this.runDir, { recursive: true, force: true }).catch((error: unknown) =>
      process.emitWarning(`VM ${this.id}: removing its run dir failed (left for the next start): ${String(error)}`),
    );
    return kept;
  }
}
