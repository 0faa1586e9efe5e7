import { createRequire } from "node:module";
import { ToolError, runTool } from "../util/run-tool.js";
import { SYSTEM_MOUNT } from "./guest-scripts.js";

const require = createRequire(import.meta.url);

/**
 * The agent's identity helper (packages/agent/native/guest-identity.c): sets the clock and reseeds the kernel
 * CRNG after a snapshot restore, which Node cannot. Compiled static on the host, so it runs in any root
 * filesystem, and shipped on the system disk.
 */
export const GUEST_IDENTITY_HELPER = {
  /** Where it lands inside the system disk. */
  diskPath: "bin/guest-identity",
  /** Part of the system disk's recipe: a change of flags rebuilds the disk like a change of source does. */
  compilerArgs: ["-static", "-Os", "-s", "-Wall", "-Wextra", "-Werror"],
} as const;

/** Path of the helper inside the guest, passed to the agent on its command line. */
export const guestIdentityHelperPath = `${SYSTEM_MOUNT}/${GUEST_IDENTITY_HELPER.diskPath}`;

export function guestIdentityHelperSource(): string {
  return require.resolve("@codecourier/agent/native/guest-identity.c");
}

/** Compiles the helper with the host's gcc and static glibc (Debian packages gcc and libc6-dev). */
export async function compileGuestIdentityHelper(outFile: string): Promise<void> {
  try {
    await runTool("gcc", [...GUEST_IDENTITY_HELPER.compilerArgs, "-o", outFile, guestIdentityHelperSource()]);
  } catch (error) {
    if (error instanceof ToolError && error.exitCode === null) {
      throw new Error("gcc is needed to build the guest's identity helper; install it with: apt-get install gcc libc6-dev");
    }
    if (error instanceof ToolError && /cannot find -lc\b/.test(error.stderr)) {
      throw new Error("static glibc (libc.a) is needed to build the guest's identity helper; install it with: apt-get install libc6-dev");
    }
    throw error;
  }
}
