import { mkdirSync, readFileSync, rmdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Controller } from "./cgroup-paths.js";
import type { VmResourceLimits } from "./vm-limits.js";

/**
 * The file operations on a cgroup file system, shared by both versions: a cgroup is one directory per hierarchy
 * (v2: one; v1: one per controller's hierarchy), limits are files in it, a process joins by writing its pid to
 * cgroup.procs (which moves all its threads), and an empty cgroup is removed with rmdir. All synchronous: these are
 * kernel calls that never wait for a disk, and a process must join its cgroup in the same tick it was spawned in.
 */

/** A cgroup operation the kernel refused; says which file and why (errno). */
export class CgroupError extends Error {
  constructor(
    message: string,
    readonly code: string | undefined,
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = new.target.name;
  }
}

export type CgroupVersion = 1 | 2;

/** The files (in write order) that set `controller`'s part of `limits`. */
export function limitFiles(version: CgroupVersion, controller: Controller, limits: VmResourceLimits): Array<[file: string, value: string]> {
  switch (controller) {
    case "cpu":
      return version === 2
        ? [["cpu.max", `${limits.cpuQuotaUs} ${limits.cpuPeriodUs}`]]
        : // The period first: the kernel checks the quota against the period in force.
          [
            ["cpu.cfs_period_us", String(limits.cpuPeriodUs)],
            ["cpu.cfs_quota_us", String(limits.cpuQuotaUs)],
          ];
    case "memory":
      return [[version === 2 ? "memory.max" : "memory.limit_in_bytes", String(limits.memoryBytes)]];
    case "pids":
      return [["pids.max", String(limits.pids)]];
  }
}

function errnoOf(error: unknown): string | undefined {
  return (error as NodeJS.ErrnoException).code;
}

export function writeCgroupFile(dir: string, file: string, value: string): void {
  try {
    writeFileSync(join(dir, file), value);
  } catch (error) {
    throw new CgroupError(`cannot write ${value} to ${join(dir, file)}: ${(error as Error).message}`, errnoOf(error), { cause: error });
  }
}

export function makeCgroup(dir: string): void {
  try {
    mkdirSync(dir);
  } catch (error) {
    if (errnoOf(error) === "EEXIST") return;
    throw new CgroupError(`cannot create cgroup ${dir}: ${(error as Error).message}`, errnoOf(error), { cause: error });
  }
}

/** Moves process `pid` (all its threads) into the cgroup at `dir`. */
export function joinCgroup(dir: string, pid: number): void {
  writeCgroupFile(dir, "cgroup.procs", String(pid));
}

/** Pids in the cgroup at `dir` (not its children); empty when it does not exist. */
export function cgroupProcesses(dir: string): number[] {
  try {
    return readFileSync(join(dir, "cgroup.procs"), "utf8").split("\n").filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

/**
 * Removes the cgroup at `dir`. Returns false while it still holds a process (EBUSY: the kernel refuses to remove a
 * populated cgroup); true when it is gone, including when it was gone already.
 */
export function removeCgroup(dir: string): boolean {
  try {
    rmdirSync(dir);
    return true;
  } catch (error) {
    const code = errnoOf(error);
    if (code === "ENOENT") return true;
    if (code === "EBUSY") return false;
    throw new CgroupError(`cannot remove cgroup ${dir}: ${(error as Error).message}`, code, { cause: error });
  }
}
