import { readFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import {
  CONTROLLERS,
  parseCgroupMounts,
  parseProcCgroup,
  v1ControllerDirectory,
  v2Directory,
  type CgroupMount,
  type Controller,
  type ProcCgroupEntry,
} from "./cgroup-paths.js";
import { CgroupError, cgroupProcesses, limitFiles, makeCgroup, removeCgroup, writeCgroupFile, type CgroupVersion } from "./cgroup-fs.js";
import { vmResourceLimits } from "./vm-limits.js";

/**
 * Which cgroup mechanism this host offers the engine for limiting VMs, found once per process:
 * - cgroup v2, preferred: a unified hierarchy whose cgroup.controllers offers cpu and memory. VM cgroups are
 *   children of our own cgroup, with +cpu +memory (+pids) enabled in its cgroup.subtree_control. A cgroup with
 *   controllers enabled for its children may hold no processes itself, so when ours does, this process first
 *   moves itself into a leaf child, {@link ENGINE_LEAF}.
 * - cgroup v1: cpu and memory hierarchies (pids if there is one) mounted writable; VM cgroups are children of our
 *   own cgroup in each.
 * - neither (no permission, read-only mounts, no controllers): VMs run without limits, and this says why.
 * Usability is proven by creating, limiting and removing a probe cgroup, not assumed from mount flags.
 */

/** Where a v2 engine moves itself when its cgroup must hand its controllers down (no-internal-processes rule). */
export const ENGINE_LEAF = "codecourier-engine";

/** One hierarchy VM cgroups are made in: the controllers it limits and the directory VM cgroups go under. */
export interface CgroupHierarchy {
  controllers: Controller[];
  parent: string;
  mountPoint: string;
}

export type HostCgroups =
  | {
      available: true;
      version: CgroupVersion;
      /** The controllers each VM is limited with (cpu and memory always; pids where the host has it). */
      controllers: Controller[];
      hierarchies: CgroupHierarchy[];
      /** One line for logs and /health. */
      summary: string;
    }
  | { available: false; reason: string; summary: string };

let detected: HostCgroups | undefined;

/** This host's cgroup support, detected on first use and then fixed for the life of the process. */
export function hostCgroups(): HostCgroups {
  return (detected ??= detectHostCgroups());
}

/** Detects afresh (hostCgroups() caches this). `CODECOURIER_CGROUPS=off` turns limits off on purpose. */
export function detectHostCgroups(): HostCgroups {
  if (process.env.CODECOURIER_CGROUPS === "off") return unavailable("turned off by CODECOURIER_CGROUPS=off");
  let own: ProcCgroupEntry[];
  let mounts: CgroupMount[];
  try {
    own = parseProcCgroup(readFileSync("/proc/self/cgroup", "utf8"));
    mounts = parseCgroupMounts(readFileSync("/proc/self/mountinfo", "utf8"));
  } catch (error) {
    return unavailable(`cannot read /proc/self/cgroup or /proc/self/mountinfo: ${(error as Error).message}`);
  }
  const v2 = tryV2(own, mounts);
  if ("hierarchies" in v2) return available(2, v2.hierarchies, v2.notes);
  const v1 = tryV1(own, mounts);
  if ("hierarchies" in v1) return available(1, v1.hierarchies, [...v1.notes, `not v2: ${v2.problem}`]);
  return unavailable(`cgroup v2: ${v2.problem}; cgroup v1: ${v1.problem}`);
}

type Attempt = { hierarchies: CgroupHierarchy[]; notes: string[] } | { problem: string };

function available(version: CgroupVersion, hierarchies: CgroupHierarchy[], notes: string[]): HostCgroups {
  const controllers = CONTROLLERS.filter((c) => hierarchies.some((h) => h.controllers.includes(c)));
  const where = hierarchies.map((h) => `${h.controllers.join("+")} under ${h.parent}`).join(", ");
  const summary = `cgroup v${version}: each VM's QEMU limited in ${controllers.join(", ")} (${where})${notes.length ? `; ${notes.join("; ")}` : ""}`;
  return { available: true, version, controllers, hierarchies, summary };
}

function unavailable(reason: string): HostCgroups {
  return { available: false, reason, summary: `none: VMs run WITHOUT CPU and memory limits (${reason})` };
}

function readControllers(file: string): string[] {
  try {
    return readFileSync(file, "utf8").trim().split(/\s+/).filter(Boolean);
  } catch {
    return [];
  }
}

function tryV2(own: ProcCgroupEntry[], mounts: CgroupMount[]): Attempt {
  const found = v2Directory(own, mounts);
  if ("problem" in found) return found;
  // An engine (this process earlier, or the one that started us) that moved into its leaf keeps using the parent.
  const dir = basename(found.directory) === ENGINE_LEAF ? dirname(found.directory) : found.directory;
  const offered = readControllers(join(dir, "cgroup.controllers"));
  if (!offered.includes("cpu") || !offered.includes("memory")) {
    return {
      problem: `${dir} offers ${offered.length ? offered.join(", ") : "no controllers"}, not cpu and memory (on a hybrid host they are bound to cgroup v1 hierarchies)`,
    };
  }
  const wanted = CONTROLLERS.filter((c) => offered.includes(c));
  const notes: string[] = [];
  const missing = () => wanted.filter((c) => !readControllers(join(dir, "cgroup.subtree_control")).includes(c));
  const enable = () => {
    const toEnable = missing();
    if (toEnable.length > 0) writeCgroupFile(dir, "cgroup.subtree_control", toEnable.map((c) => `+${c}`).join(" "));
  };
  if (missing().length > 0) {
    try {
      enable();
    } catch (error) {
      if (!(error instanceof CgroupError) || error.code !== "EBUSY") return { problem: (error as Error).message };
      // EBUSY: our cgroup holds processes, so it may not hand controllers to children. Move this process out.
      try {
        makeCgroup(join(dir, ENGINE_LEAF));
        writeCgroupFile(join(dir, ENGINE_LEAF), "cgroup.procs", String(process.pid));
        notes.push(`moved the engine process into ${join(dir, ENGINE_LEAF)}`);
        enable();
      } catch (retryError) {
        const others = cgroupProcesses(dir);
        return {
          problem:
            others.length > 0
              ? `${dir} also holds other processes (${others.slice(0, 5).join(", ")}), so it cannot enable controllers for child cgroups; run the engine in a cgroup of its own (e.g. a systemd service with Delegate=yes)`
              : (retryError as Error).message,
        };
      }
    }
  }
  const probed = probe(2, [{ controllers: wanted, parent: dir, mountPoint: found.mount.mountPoint }]);
  if ("problem" in probed) return probed;
  return { hierarchies: probed.hierarchies, notes: [...notes, ...probed.notes] };
}

function tryV1(own: ProcCgroupEntry[], mounts: CgroupMount[]): Attempt {
  const byParent = new Map<string, CgroupHierarchy>();
  const problems: string[] = [];
  for (const controller of CONTROLLERS) {
    const found = v1ControllerDirectory(controller, own, mounts);
    if ("problem" in found) {
      problems.push(found.problem);
      continue;
    }
    // Co-mounted controllers (e.g. cpu,cpuacct) share one directory, so one cgroup there carries both limits.
    const hierarchy = byParent.get(found.directory) ?? { controllers: [], parent: found.directory, mountPoint: found.mount.mountPoint };
    hierarchy.controllers.push(controller);
    byParent.set(found.directory, hierarchy);
  }
  const hierarchies = [...byParent.values()];
  const has = (c: Controller) => hierarchies.some((h) => h.controllers.includes(c));
  if (!has("cpu") || !has("memory")) return { problem: problems.join("; ") };
  const probed = probe(1, hierarchies);
  if ("problem" in probed) return probed;
  return { hierarchies: probed.hierarchies, notes: [...problems.map((p) => `no pids limit: ${p}`), ...probed.notes] };
}

/**
 * Creates a cgroup in every hierarchy, writes a VM's limits into it and removes it again. A controller whose probe
 * fails is dropped (pids) or makes the whole mechanism unusable (cpu, memory).
 */
function probe(version: CgroupVersion, hierarchies: CgroupHierarchy[]): Attempt {
  const limits = vmResourceLimits({ cpus: 1, memoryMiB: 128, accel: "kvm" });
  const name = `codecourier-probe-${process.pid}`;
  const notes: string[] = [];
  const usable: CgroupHierarchy[] = [];
  for (const hierarchy of hierarchies) {
    const dir = join(hierarchy.parent, name);
    const working: Controller[] = [];
    try {
      makeCgroup(dir);
      for (const controller of hierarchy.controllers) {
        try {
          for (const [file, value] of limitFiles(version, controller, limits)) writeCgroupFile(dir, file, value);
          working.push(controller);
        } catch (error) {
          if (controller !== "pids") return { problem: (error as Error).message };
          notes.push(`no pids limit: ${(error as Error).message}`);
        }
      }
    } catch (error) {
      return { problem: (error as Error).message };
    } finally {
      try {
        removeCgroup(dir);
      } catch {
        // Left for the stale-cgroup cleanup; the probe holds no process.
      }
    }
    if (working.length > 0) usable.push({ ...hierarchy, controllers: working });
  }
  return { hierarchies: usable, notes };
}
