import { createHash } from "node:crypto";
import { readdirSync } from "node:fs";
import { join, resolve } from "node:path";
import { dataDir } from "../../config.js";
import { CgroupError, cgroupProcesses, joinCgroup, limitFiles, makeCgroup, removeCgroup, writeCgroupFile, type CgroupVersion } from "./cgroup-fs.js";
import { hostCgroups } from "./host-cgroups.js";
import type { VmResourceLimits } from "./vm-limits.js";

/**
 * The cgroup around one VM's QEMU process: created with the VM's limits before QEMU is spawned, joined by QEMU right
 * after, removed once QEMU has exited. Named `codecourier-<data-dir hash>-<vm id>`, so cgroups a crashed engine left
 * behind are recognisable as this data dir's and removed at the next start ({@link removeStaleVmCgroups}).
 */
export class VmCgroup {
  #gone = false;
  #joined = false;

  private constructor(
    readonly name: string,
    readonly version: CgroupVersion,
    /** One directory per hierarchy (cgroup v2: exactly one). */
    readonly directories: readonly string[],
    readonly limits: VmResourceLimits,
  ) {
    for (const dir of directories) owned.add(dir);
  }

  /** Creates the cgroup (one directory per hierarchy) and writes the limits. Throws CgroupError; leaves nothing then. */
  static create(vmId: string, limits: VmResourceLimits): VmCgroup {
    const host = hostCgroups();
    if (!host.available) throw new CgroupError(host.reason, undefined);
    const name = vmCgroupPrefix() + vmId;
    const made: string[] = [];
    try {
      for (const hierarchy of host.hierarchies) {
        const dir = join(hierarchy.parent, name);
        makeCgroup(dir);
        made.push(dir);
        for (const controller of hierarchy.controllers) {
          for (const [file, value] of limitFiles(host.version, controller, limits)) writeCgroupFile(dir, file, value);
        }
      }
    } catch (error) {
      for (const dir of made) {
        try {
          removeCgroup(dir);
        } catch {
          // Empty, so the next start's stale cleanup takes it.
        }
      }
      throw error;
    }
    return new VmCgroup(name, host.version, made, limits);
  }

  /** Moves process `pid` with all its threads into this cgroup (in every hierarchy). Throws CgroupError. */
  join(pid: number): void {
    for (const dir of this.directories) joinCgroup(dir, pid);
    this.#joined = true;
  }

  /** Whether a process joined it in every hierarchy, i.e. its limits apply to the VM. */
  get enforced(): boolean {
    return this.#joined && !this.#gone;
  }

  /** Pids in the cgroup (first hierarchy). */
  processes(): number[] {
    return this.directories[0] ? cgroupProcesses(this.directories[0]) : [];
  }

  /** Removes every directory that is empty now; true once all are gone. */
  removeNow(): boolean {
    if (this.#gone) return true;
    let allGone = true;
    for (const dir of this.directories) {
      try {
        if (!removeCgroup(dir)) allGone = false;
      } catch {
        allGone = false;
      }
    }
    if (allGone) {
      this.#gone = true;
      for (const dir of this.directories) owned.delete(dir);
    }
    return allGone;
  }

  /**
   * Removes the cgroup once its process has left it. Call after QEMU has exited: the kernel counts an exited process
   * out of its cgroup when it dies, so this normally succeeds at once; the retries cover an exit noticed by polling
   * (an adopted QEMU) before the kernel finished it. One still busy after that is left to the stale cleanup.
   */
  async remove(): Promise<void> {
    for (let attempt = 1; !this.removeNow(); attempt++) {
      if (attempt >= REMOVE_ATTEMPTS) {
        process.emitWarning(`cgroup ${this.directories.join(", ")} still busy; left for the next start's cleanup`, { code: WARNING_CODE });
        for (const dir of this.directories) owned.delete(dir);
        return;
      }
      await new Promise((r) => setTimeout(r, REMOVE_RETRY_MS));
    }
  }

  /** For the exit handler (no event loop left): blocks until removed or `deadline` (Date.now() ms); returns whether it is gone. */
  removeBlocking(deadline: number): boolean {
    const pause = new Int32Array(new SharedArrayBuffer(4));
    while (!this.removeNow()) {
      if (Date.now() >= deadline) return false;
      Atomics.wait(pause, 0, 0, 5);
    }
    return true;
  }
}

const REMOVE_ATTEMPTS = 100;
const REMOVE_RETRY_MS = 20;
/** How deep stale cleanup looks below each hierarchy's mount point for this data dir's cgroups. */
const STALE_SCAN_DEPTH = 8;
const WARNING_CODE = "CODECOURIER_VM_LIMITS";

/** Directories of VM cgroups this process created and has not removed: never stale, even while empty. */
const owned = new Set<string>();

/** `codecourier-<first 8 hex of sha256(data dir)>-`: the names of a data dir's VM cgroups start with it. */
export function vmCgroupPrefix(home = dataDir()): string {
  return `codecourier-${createHash("sha256").update(resolve(home)).digest("hex").slice(0, 8)}-`;
}

let warnedUnavailable = false;

/**
 * The cgroup for a VM about to start, or undefined when the host offers none or creating it fails. Never throws: a
 * VM without limits still starts, but it is said once per process (no support) or per VM (a failure) as a process
 * warning, and the VM's `cgroup` is undefined, so nothing reports limits that do not exist.
 */
export function createVmCgroup(vmId: string, limits: VmResourceLimits): VmCgroup | undefined {
  const host = hostCgroups();
  if (!host.available) {
    if (!warnedUnavailable) {
      warnedUnavailable = true;
      process.emitWarning(`VMs run without CPU and memory limits: ${host.reason}`, { code: WARNING_CODE });
    }
    return undefined;
  }
  try {
    return VmCgroup.create(vmId, limits);
  } catch (error) {
    process.emitWarning(`VM ${vmId} runs without CPU and memory limits: ${(error as Error).message}`, { code: WARNING_CODE });
    return undefined;
  }
}

/**
 * Moves `pid` into `cgroup`. When the kernel refuses, the VM runs without limits rather than not at all: that is
 * warned about, and the cgroup stays unenforced (it may hold the process in some hierarchies; it is removed with the
 * VM all the same).
 */
export function joinVmCgroup(cgroup: VmCgroup | undefined, pid: number, vmId: string): void {
  if (!cgroup) return;
  try {
    cgroup.join(pid);
  } catch (error) {
    process.emitWarning(`VM ${vmId} runs without CPU and memory limits: ${(error as Error).message}`, { code: WARNING_CODE });
  }
}

/** This data dir's VM cgroups below the directories new ones are made in (one per hierarchy each), e.g. for tests. */
export function listVmCgroups(): string[] {
  const host = hostCgroups();
  if (!host.available) return [];
  const prefix = vmCgroupPrefix();
  return host.hierarchies.flatMap((h) => {
    try {
      return readdirSync(h.parent)
        .filter((name) => name.startsWith(prefix))
        .map((name) => join(h.parent, name));
    } catch {
      return [];
    }
  });
}

/**
 * Removes this data dir's VM cgroups that hold no process and belong to no VM of this process: what an engine that
 * crashed or was killed left behind. Looks through each whole hierarchy, not only below our own cgroup, because an
 * engine restarted by another session or supervisor may sit elsewhere than the one that made them. A cgroup that
 * still holds a process (a VM another engine process runs on this data dir, or one adopted after a restart) stays.
 * Returns the removed directories.
 */
export function removeStaleVmCgroups(): string[] {
  const host = hostCgroups();
  if (!host.available) return [];
  const prefix = vmCgroupPrefix();
  const removed: string[] = [];
  const visit = (dir: string, depth: number) => {
    let entries;
    try {
      entries = readdirSync(dir, { withFileTypes: true });
    } catch {
      return; // removed meanwhile, or not ours to read
    }
    for (const entry of entries) {
      if (!entry.isDirectory()) continue;
      const child = join(dir, entry.name);
      if (entry.name.startsWith(prefix)) {
        if (owned.has(child) || cgroupProcesses(child).length > 0) continue;
        try {
          if (removeCgroup(child)) removed.push(child);
        } catch {
          // Not removable by us (permissions): nothing better to do than leave it.
        }
      } else if (depth < STALE_SCAN_DEPTH) {
        visit(child, depth + 1);
      }
    }
  };
  for (const mountPoint of new Set(host.hierarchies.map((h) => h.mountPoint))) visit(mountPoint, 0);
  return removed;
}
