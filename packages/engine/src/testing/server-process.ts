/**
 * What the hostile tests look at from outside a server process: whether it is alive, its descriptors squeezed with
 * prlimit (Node cannot lower its own limit, but prlimit(2) works on any process its caller may signal), and the
 * QEMUs and cgroups its data dir still has.
 */
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { openFileCount, openFileLimit } from "../network/fd-usage.js";
import { runTool } from "../util/run-tool.js";
import { vmCgroupPrefix } from "../vmm/cgroups/vm-cgroup.js";

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** How often the limit follows the count down while squeezed. */
const RATCHET_EVERY_MS = 200;

/**
 * Lowers `pid`'s soft descriptor limit to the number it has open (so every open, accept, pipe and spawn fails with
 * EMFILE) and keeps it there for `holdMs`, following the count down as descriptors close (what an attacker who
 * holds the rest would take at once), while `during` runs; then restores the limit, also when `during` throws, and
 * waits for `during`. Restoring fails only when the process is gone, which the caller's isAlive check then reports.
 */
export async function withDescriptorsExhausted<T>(pid: number, holdMs: number, during: () => Promise<T>): Promise<T> {
  const original = await openFileLimit(pid);
  const squeeze = async () => runTool("prlimit", ["--pid", String(pid), `--nofile=${await openFileCount(pid)}:${original.hard}`]);
  await squeeze();
  let outcome: Promise<T>;
  try {
    outcome = during();
    outcome.catch(() => {}); // awaited below, after the limit is back
    for (const end = Date.now() + holdMs; Date.now() < end; ) {
      await sleep(RATCHET_EVERY_MS);
      await squeeze().catch(() => {});
    }
  } finally {
    await runTool("prlimit", ["--pid", String(pid), `--nofile=${original.soft}:${original.hard}`]).catch(() => {});
  }
  return outcome;
}

/** Pids of the QEMU processes whose command line names a run dir of data dir `home`. */
export async function qemuProcessesOf(home: string): Promise<number[]> {
  const found: number[] = [];
  for (const entry of await readdir("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    const cmdline = await readFile(`/proc/${entry}/cmdline`, "utf8").catch(() => "");
    if (cmdline.includes("qemu-system") && cmdline.includes(join(home, "run"))) found.push(Number(entry));
  }
  return found;
}

/** The VM cgroups of data dir `home`, wherever in the cgroup hierarchies its server made them. */
export async function vmCgroupsOf(home: string): Promise<string[]> {
  const prefix = vmCgroupPrefix(home);
  const found: string[] = [];
  const visit = async (dir: string, depth: number): Promise<void> => {
    const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
    for (const entry of entries) {
      if (!entry.isDirectory()) continue;
      if (entry.name.startsWith(prefix)) found.push(join(dir, entry.name));
      else if (depth < 8) await visit(join(dir, entry.name), depth + 1);
    }
  };
  await visit("/sys/fs/cgroup", 0);
  return found;
}
