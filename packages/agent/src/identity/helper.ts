import { spawn } from "node:child_process";
import { RequestError } from "../http/respond.js";

/** The helper does three syscalls; anything slower is stuck. */
const helperTimeoutMs = 10_000;
const maxHelperMessageLength = 4_096;

/**
 * Runs the static guest-identity helper (packages/agent/native/guest-identity.c): Node can neither set the clock
 * nor issue the random driver's ioctls. Usage: `guest-identity <epoch-ms>` with the entropy on stdin; it sets
 * CLOCK_REALTIME, adds the entropy to the kernel's pool and forces the CRNG to reseed from it.
 * Any failure is a 500 internal error carrying the helper's message.
 */
export function runIdentityHelper(helperPath: string, epochMs: number, entropy: Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    const fail = (message: string) => reject(new RequestError(500, "internal", `identity helper ${helperPath}: ${message}`));
    const child = spawn(helperPath, [String(epochMs)], { stdio: ["pipe", "ignore", "pipe"], env: {} });
    let message = "";
    child.stderr.on("data", (chunk: Buffer) => {
      message = (message + chunk.toString("utf8")).slice(0, maxHelperMessageLength);
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), helperTimeoutMs);
    child.on("error", (error: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      fail(error.code === "ENOENT" ? "not found" : error.message);
    });
    child.on("close", (exitCode, signal) => {
      clearTimeout(timer);
      if (exitCode === 0) return resolve();
      const how = signal === null ? `exit code ${exitCode}` : `signal ${signal}`;
      fail(`failed (${how})${message.trim() === "" ? "" : `: ${message.trim()}`}`);
    });
    // EPIPE when the helper exits early (e.g. a usage error); its exit code tells what happened.
    child.stdin.on("error", () => {});
    child.stdin.end(entropy);
  });
}
