import type { QemuProcess } from "./qemu-process.js";
import { rmSync } from "node:fs";

/**
 * QEMU processes of this host process. When the host exits (normally or on SIGINT/SIGTERM) they are killed
 * synchronously, so a crashed or interrupted engine leaves no VM running.
 */
const live = new Map<string, { child: QemuProcess; runDir: string }>();
let installed = false;

function killAll(): void {
  for (const { child, runDir } of live.values()) {
    try {
      child.kill();
    } catch {
      // Already gone.
    }
    // QEMU holds no lock that stops the removal; its open files vanish with it.
    rmSync(runDir, { recursive: true, force: true });
  }
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

export function trackVm(id: string, child: QemuProcess, runDir: string): void {
  install();
  live.set(id, { child, runDir });
}

export function untrackVm(id: string): void {
  live.delete(id);
}
