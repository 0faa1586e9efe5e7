import { copyFile, mkdir, writeFile, realpath } from "node:fs/promises";
import { basename, join } from "node:path";
import { runTool } from "../util/run-tool.js";
import { SYSTEM_DISK_LABEL, SYSTEM_MOUNT, stage2Script } from "./guest-scripts.js";
import { makeExt4Image } from "./ext4.js";
import { GUEST_HELPERS, compileGuestHelper, guestHelperDiskPath, guestHelperGuestPath } from "./guest-helpers.js";

/** The agent runs from the system disk with its own dynamic loader and libraries, so any root filesystem works. */
export const GUEST_NODE_FLAGS = [
  // Smaller young generation: fewer pages touched at start (each a TCG page-fault) and a smaller clone footprint.
  "--max-semi-space-size=1",
  "--max-old-space-size=128",
  // Stack traces are only for our own logs; fewer frames is cheaper.
  "--stack-trace-limit=20",
];

export function agentCommand(): string {
  const lib = `${SYSTEM_MOUNT}/lib`;
  return [
    `${lib}/ld-linux-x86-64.so.2`,
    "--library-path",
    lib,
    `${SYSTEM_MOUNT}/bin/node`,
    ...GUEST_NODE_FLAGS,
    `${SYSTEM_MOUNT}/agent/agent.mjs`,
    ...GUEST_HELPERS.flatMap((helper) => [helper.agentOption, guestHelperGuestPath(helper)]),
  ].join(" ");
}

/** Shared libraries of an ELF binary as ldd resolves them on the host (the loader included). */
async function sharedLibraries(binary: string): Promise<string[]> {
  const out = (await runTool("ldd", [binary])).toString();
  const paths: string[] = [];
  for (const line of out.split("\n")) {
    const match = /=>\s*(\/\S+)/.exec(line) ?? /^\s*(\/\S+)\s+\(/.exec(line);
    if (match?.[1]) paths.push(match[1]);
  }
  return paths;
}

/**
 * Builds the read-only system disk: static busybox, the Node runtime with its loader and libraries, the
 * bundled agent, its static helpers and the stage-2 init script.
 */
export async function buildSystemDisk(opts: {
  stageDir: string;
  outFile: string;
  nodeBinary: string;
  agentBundle: string;
}): Promise<void> {
  const { stageDir } = opts;
  for (const dir of ["bin", "lib", "agent"]) await mkdir(join(stageDir, dir), { recursive: true });
  await copyFile("/bin/busybox", join(stageDir, "bin/busybox"));
  await copyFile(opts.nodeBinary, join(stageDir, "bin/node"));
  for (const lib of await sharedLibraries(opts.nodeBinary)) {
    // Copy the file the symlink points at, under the name the binary asks for.
    await copyFile(await realpath(lib), join(stageDir, "lib", basename(lib)));
  }
  await copyFile(opts.agentBundle, join(stageDir, "agent/agent.mjs"));
  for (const helper of GUEST_HELPERS) await compileGuestHelper(helper, join(stageDir, guestHelperDiskPath(helper)));
  await writeFile(join(stageDir, "stage2"), stage2Script(agentCommand()), { mode: 0o755 });
  await makeExt4Image({ sourceDir: stageDir, outFile: opts.outFile, label: SYSTEM_DISK_LABEL, journal: false });
}
