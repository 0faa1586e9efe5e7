import { copyFile, mkdir, symlink, writeFile } from "node:fs/promises";
import { basename, join } from "node:path";
import { runTool } from "../util/run-tool.js";
import { writeNewcArchive } from "./cpio.js";
import { initramfsInit } from "./guest-scripts.js";

const BUSYBOX = "/bin/busybox";
/** The applets the initramfs init uses (linked at build time rather than installed at boot). */
const APPLETS = ["sh", "mount", "insmod", "findfs", "mkdir", "switch_root", "poweroff", "echo", "cat", "ls", "sleep"];

/**
 * Builds an uncompressed newc initramfs: static busybox, the guest modules and our /init. Uncompressed, because
 * decompressing under TCG costs more boot time than reading a few more megabytes.
 */
export async function buildInitramfs(opts: {
  stageDir: string;
  outFile: string;
  modulesDir: string;
  modules: readonly string[];
}): Promise<void> {
  const { stageDir } = opts;
  for (const dir of ["bin", "dev", "proc", "sys", "modules", "newroot", "sysdisk"]) {
    await mkdir(join(stageDir, dir), { recursive: true });
  }
  await copyFile(BUSYBOX, join(stageDir, "bin/busybox"));
  for (const applet of APPLETS) await symlink("busybox", join(stageDir, "bin", applet));
  for (const module of opts.modules) {
    await copyFile(join(opts.modulesDir, `${module}.ko`), join(stageDir, "modules", `${basename(module)}.ko`));
  }
  await writeFile(join(stageDir, "init"), initramfsInit(opts.modules.map((m) => basename(m))), { mode: 0o755 });
  const list = (await runTool("find", [".", "-mindepth", "1"], { cwd: stageDir })).toString().split("\n").filter(Boolean).sort();
  await writeNewcArchive(stageDir, list, opts.outFile);
}
