import type { ChildProcess } from "node:child_process";
import { readFileSync } from "node:fs";

/**
 * A QEMU process the engine controls: one it spawned, or one a previous engine process spawned and this one
 * re-attached to after a restart (then it is not our child, so its exit is noticed by polling).
 */
export interface QemuProcess {
  readonly pid: number | undefined;
  /** Resolves when the process has exited. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  isAlive(): boolean;
  kill(): void;
}

export function spawnedProcess(child: ChildProcess): QemuProcess {
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once("exit", (code, signal) => resolve({ code, signal }));
    // A spawn that failed (EMFILE when the server is out of descriptors) emits 'error' and never 'exit': without
    // this listener the 'error' would end the server; with it the VM's start fails as if QEMU had exited.
    child.on("error", () => resolve({ code: null, signal: null }));
  });
  return {
    pid: child.pid,
    exited,
    isAlive: () => child.exitCode === null && child.signalCode === null,
    kill: () => {
      child.kill("SIGKILL");
    },
  };
}

const ADOPTED_POLL_MS = 250;

/** A QEMU process found running at start-up, identified by pid and the runtime directory on its command line. */
export function adoptedProcess(pid: number, runDir: string): QemuProcess {
  // Out of descriptors (EMFILE) /proc cannot be read: that says nothing about the process, which counts as alive
  // until a read succeeds; taken for an exit, the VM would be torn down while its QEMU ran on, tracked by nobody.
  const isAlive = () => qemuOfState(pid, runDir) !== "gone";
  let timer: NodeJS.Timeout | undefined;
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    timer = setInterval(() => {
      if (!isAlive()) {
        clearInterval(timer);
        resolve({ code: null, signal: null });
      }
    }, ADOPTED_POLL_MS);
    // A running VM alone does not keep the host process alive (as a child process would not either)…
    timer.unref();
  });
  return {
    pid,
    exited,
    isAlive,
    kill: () => {
      // …but once it is being killed, someone waits for its exit, which only this poll can notice: without a
      // reference the event loop could run empty first and the wait would never end.
      timer?.ref();
      // Re-checked right before the signal: the pid may have been reused by an unrelated process.
      if (isAlive()) process.kill(pid, "SIGKILL");
    },
  };
}

/** Whether `pid` is a live QEMU whose command line names `runDir` (guards against pid reuse). */
export function isQemuOf(pid: number, runDir: string): boolean {
  return qemuOfState(pid, runDir) === "alive";
}

/** isQemuOf with a third answer: "unknown" when /proc could not be read for lack of descriptors. */
function qemuOfState(pid: number, runDir: string): "alive" | "gone" | "unknown" {
  try {
    const cmdline = readFileSync(`/proc/${pid}/cmdline`, "utf8");
    return cmdline.includes("qemu-system") && cmdline.includes(`${runDir}/`) ? "alive" : "gone";
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    return code === "EMFILE" || code === "ENFILE" ? "unknown" : "gone";
  }
}
