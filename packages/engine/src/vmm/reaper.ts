import type { QemuProcess } from "./qemu-process.js";
import type { VmCgroup } from "./cgroups/vm-cgroup.js";
import { rmSync } from "node:fs";

/**
 * QEMU processes of this host process. When the host exits (normally or on SIGINT/SIGTERM) they are killed
 * synchronously, so a crashed or interrupted engine leaves no VM running, and their cgroups are removed.
 */
const live = new Map<string, { child: QemuProcess; runDir: string; cgroup: VmCgroup | undefined }>();
/** How long the exit handler waits, for all VMs together, for killed QEMUs to leave their cgroups. */
const CGROUP_REMOVAL_WAIT_MS = 1000;
let installed = false;
/** Synchronous clean-ups of what the VMs used besides their processes (their network), run after the kills. */
const exitCleanups = new Set<() => void>();

function killAll(): void {
  const entries = [...live.values()];
  for (const { child, runDir } of entries) {
    try {
      child.kill();
    } catch {
      // Already gone.
    }
    // QEMU holds no lock that stops the removal; its open files vanish with it.
    rmSync(runDir, { recursive: true, force: true });
  }
  // A SIGKILLed process leaves its cgroup when the kernel has finished it, a moment after the signal; one that takes
  // longer than the wait is removed by the next engine start's stale-cgroup cleanup.
  const deadline = Date.now() + CGROUP_REMOVAL_WAIT_MS;
  for (const { cgroup } of entries) cgroup?.removeBlocking(deadline);
  live.clear();
  for (const cleanup of exitCleanups) {
    try {
      cleanup();
    } catch {
      // The process is exiting: what a clean-up could not remove, the next start's sweep does.
    }
  }
}

/**
 * Runs `cleanup` (synchronous) when the host process exits or is interrupted, after every VM is killed. Returns the
 * function that unregisters it (after an orderly shutdown has cleaned up itself).
 */
export function onHostExit(cleanup: () => void): () => void {
  install();
  exitCleanups.add(cleanup);
  return () => exitCleanups.delete(cleanup);
}

function install(): void {
  if (installed) return;
  installed = true;
  process.once("exit", killAll);
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    process.once(signal, () => {
      killAll();
      process.exit(128 + (signal === "SIGINT" ? 2 : signal === "SIGTERM" ? 15 : 1));
    });
  }
}

export function trackVm(id: string, child: QemuProcess, runDir: string, cgroup?: VmCgroup): void {
  install();
  live.set(id, { child, runDir, cgroup });
}

export function untrackVm(id: string): void {
  live.delete(id);
}
