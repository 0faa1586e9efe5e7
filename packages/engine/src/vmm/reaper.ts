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
