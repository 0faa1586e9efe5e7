import { posix } from "node:path";

/**
 * Pure parsing of what the kernel says about cgroups: /proc/<pid>/cgroup (which cgroup a process is in, per
 * hierarchy) and /proc/self/mountinfo (where each hierarchy is mounted, and which part of it the mount shows).
 * No file system access here, so every host layout can be tested with its text.
 */

/** The controllers the engine limits a VM's QEMU with. */
export type Controller = "cpu" | "memory" | "pids";
export const CONTROLLERS: readonly Controller[] = ["cpu", "memory", "pids"];

/** One line of /proc/<pid>/cgroup: `hierarchy-id:controllers:path`; cgroup v2 is `0::path`. */
export interface ProcCgroupEntry {
  hierarchyId: number;
  /** v1 controllers bound to the hierarchy (e.g. ["cpu", "cpuacct"], or ["name=systemd"]); empty for v2. */
  controllers: string[];
  path: string;
}

export function parseProcCgroup(text: string): ProcCgroupEntry[] {
  const entries: ProcCgroupEntry[] = [];
  for (const line of text.split("\n")) {
    // The path may itself contain colons: split off the first two fields only.
    const first = line.indexOf(":");
    const second = line.indexOf(":", first + 1);
    if (first < 0 || second < 0) continue;
    const hierarchyId = Number(line.slice(0, first));
    if (!Number.isInteger(hierarchyId)) continue;
    const controllers = line.slice(first + 1, second);
    entries.push({ hierarchyId, controllers: controllers ? controllers.split(",") : [], path: line.slice(second + 1) });
  }
  return entries;
}

/** A mounted cgroup hierarchy from /proc/self/mountinfo. */
export interface CgroupMount {
  version: 1 | 2;
  /** The cgroup this mount shows at its mount point (not "/" in containers without a cgroup namespace). */
  root: string;
  mountPoint: string;
  /** v1: the controllers (and name=…) of the hierarchy, from the super options; v2: empty. */
  options: string[];
  readOnly: boolean;
}

/** mountinfo escapes space, tab, newline and backslash in paths as octal (`\040`). */
function unescapeMountPath(path: string): string {
  return path.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)));
}

export function parseCgroupMounts(mountinfo: string): CgroupMount[] {
  const mounts: CgroupMount[] = [];
  for (const line of mountinfo.split("\n")) {
    // id parent major:minor root mount-point mount-options [optional fields…] - fstype source super-options
    const separator = line.indexOf(" - ");
    if (separator < 0) continue;
    const before = line.slice(0, separator).split(" ");
    const [fstype, , superOptions = ""] = line.slice(separator + 3).split(" ");
    if (fstype !== "cgroup" && fstype !== "cgroup2") continue;
    const [, , , root, mountPoint, mountOptions = ""] = before;
    if (root === undefined || mountPoint === undefined) continue;
    const readOnly = mountOptions.split(",").includes("ro") || superOptions.split(",").includes("ro");
    mounts.push({
      version: fstype === "cgroup2" ? 2 : 1,
      root: unescapeMountPath(root),
      mountPoint: unescapeMountPath(mountPoint),
      options: fstype === "cgroup" ? superOptions.split(",").filter((o) => o !== "rw" && o !== "ro") : [],
      readOnly,
    });
  }
  return mounts;
}

/**
 * The directory of cgroup `path` under `mount`, or undefined when the mount does not show it (the cgroup lies
 * outside the part of the hierarchy that was mounted).
 */
export function cgroupDirectory(mount: Pick<CgroupMount, "root" | "mountPoint">, path: string): string | undefined {
  const relative = posix.relative(mount.root, path);
  if (relative.startsWith("..") || posix.isAbsolute(relative)) return undefined;
  return posix.join(mount.mountPoint, relative);
}

/** For a v1 controller: our cgroup's directory in the hierarchy that has it, if that hierarchy is mounted. */
export function v1ControllerDirectory(
  controller: Controller,
  ownCgroups: readonly ProcCgroupEntry[],
  mounts: readonly CgroupMount[],
): { directory: string; mount: CgroupMount } | { problem: string } {
  const entry = ownCgroups.find((e) => e.hierarchyId !== 0 && e.controllers.includes(controller));
  if (!entry) return { problem: `no cgroup v1 hierarchy has the ${controller} controller` };
  const mount = mounts.find((m) => m.version === 1 && m.options.includes(controller) && cgroupDirectory(m, entry.path) !== undefined);
  if (!mount) return { problem: `the cgroup v1 ${controller} hierarchy is not mounted where this process can see ${entry.path}` };
  if (mount.readOnly) return { problem: `the cgroup v1 ${controller} hierarchy is mounted read-only at ${mount.mountPoint}` };
  return { directory: cgroupDirectory(mount, entry.path)!, mount };
}

/** Our cgroup's directory in the unified (v2) hierarchy, if one is mounted and shows it. */
export function v2Directory(ownCgroups: readonly ProcCgroupEntry[], mounts: readonly CgroupMount[]): { directory: string; mount: CgroupMount } | { problem: string } {
  const entry = ownCgroups.find((e) => e.hierarchyId === 0);
  if (!entry) return { problem: "this process is in no cgroup v2 hierarchy" };
  const mount = mounts.find((m) => m.version === 2 && cgroupDirectory(m, entry.path) !== undefined);
  if (!mount) return { problem: `no cgroup2 mount shows ${entry.path}` };
  if (mount.readOnly) return { problem: `cgroup2 is mounted read-only at ${mount.mountPoint}` };
  return { directory: cgroupDirectory(mount, entry.path)!, mount };
}
