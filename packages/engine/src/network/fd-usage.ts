/**
 * How many file descriptors this process has open and may open (Linux /proc), and raising the soft limit to the
 * hard one. Node cannot call setrlimit on itself, but prlimit(2) works on any process its caller may signal, so
 * util-linux `prlimit --pid` raises our own limit from outside.
 */
import { readFile, readdir } from "node:fs/promises";
import { runTool } from "../util/run-tool.js";

export interface OpenFileLimit {
  soft: number;
  hard: number;
}

/** RLIMIT_NOFILE of a process ("self" or a pid), from the "Max open files" line of /proc/<pid>/limits. */
export async function openFileLimit(pid: number | "self" = "self"): Promise<OpenFileLimit> {
  const text = await readFile(`/proc/${pid}/limits`, "utf8");
  const match = /^Max open files\s+(\d+|unlimited)\s+(\d+|unlimited)/m.exec(text);
  if (!match) throw new Error(`/proc/${pid}/limits has no "Max open files" line`);
  // "unlimited" cannot happen for RLIMIT_NOFILE on Linux (fs.nr_open caps it); read it as "very many" anyway.
  const value = (field: string) => (field === "unlimited" ? Number.MAX_SAFE_INTEGER : Number(field));
  return { soft: value(match[1]!), hard: value(match[2]!) };
}

/** How many descriptors the process has open right now (one readdir of /proc/<pid>/fd; it briefly uses one itself). */
export async function openFileCount(pid: number | "self" = "self"): Promise<number> {
  return (await readdir(`/proc/${pid}/fd`)).length;
}

/**
 * Raises this process's soft open-file limit to its hard limit (the default soft limit, 1024 on most systems, is
 * far below what a server relaying many connections needs). Best effort: without prlimit or the right to use it,
 * the limit stays as it was and the fd budget is derived from that. Returns the limit in force afterwards.
 */
export async function raiseOpenFileLimit(): Promise<OpenFileLimit> {
  const before = await openFileLimit();
  if (before.soft >= before.hard) return before;
  await runTool("prlimit", ["--pid", String(process.pid), `--nofile=${before.hard}:${before.hard}`]).catch(() => undefined);
  return openFileLimit().catch(() => before);
}
