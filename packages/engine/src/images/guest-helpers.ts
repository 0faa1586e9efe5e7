import { createRequire } from "node:module";
import { ToolError, runTool } from "../util/run-tool.js";
import { SYSTEM_MOUNT } from "./guest-scripts.js";

const require = createRequire(import.meta.url);

/**
 * The agent's native helpers (packages/agent/native/*.c), for what Node cannot do or does slowly in the guest:
 * - guest-identity sets the clock and reseeds the kernel CRNG after a snapshot restore;
 * - guest-spawner starts the agent's commands (forking the small helper instead of the ~60 MB agent);
 * - guest-watch reports file changes from inotify (Node's fs.watch tells neither creates from writes nor renames).
 * Compiled static on the host, so they run in any root filesystem, and shipped on the system disk.
 */
export interface GuestHelper {
  /** Source file name under packages/agent/native/, without ".c"; also the binary's name. */
  readonly name: string;
  /** The agent's command-line option that passes the helper's path. */
  readonly agentOption: string;
}

export const GUEST_HELPERS: readonly GuestHelper[] = [
  { name: "guest-identity", agentOption: "--identity-helper" },
  { name: "guest-spawner", agentOption: "--spawner" },
  { name: "guest-watch", agentOption: "--watcher" },
];

/** Part of the system disk's recipe: a change of flags rebuilds the disk like a change of source does. */
export const GUEST_HELPER_COMPILER_ARGS = ["-static", "-Os", "-s", "-Wall", "-Wextra", "-Werror"] as const;

/** Where a helper lands inside the system disk. */
export function guestHelperDiskPath(helper: GuestHelper): string {
  return `bin/${helper.name}`;
}

/** Path of a helper inside the guest, passed to the agent on its command line. */
export function guestHelperGuestPath(helper: GuestHelper): string {
  return `${SYSTEM_MOUNT}/${guestHelperDiskPath(helper)}`;
}

export function guestHelperSource(helper: GuestHelper): string {
  return require.resolve(`@codecourier/agent/native/${helper.name}.c`);
}

export function guestHelper(name: string): GuestHelper {
  const helper = GUEST_HELPERS.find((h) => h.name === name);
  if (helper === undefined) throw new Error(`no guest helper named ${name}`);
  return helper;
}

/** Compiles a helper with the host's gcc and static glibc (Debian packages gcc and libc6-dev). */
export async function compileGuestHelper(helper: GuestHelper, outFile: string): Promise<void> {
  try {
    await runTool("gcc", [...GUEST_HELPER_COMPILER_ARGS, "-o", outFile, guestHelperSource(helper)]);
  } catch (error) {
    if (error instanceof ToolError && error.exitCode === null) {
      throw new Error(`gcc is needed to build the guest's ${helper.name} helper; install it with: apt-get install gcc libc6-dev`);
    }
    if (error instanceof ToolError && /cannot find -lc\b/.test(error.stderr)) {
      throw new Error(`static glibc (libc.a) is needed to build the guest's ${helper.name} helper; install it with: apt-get install libc6-dev`);
    }
    throw error;
  }
}
