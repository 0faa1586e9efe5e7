import { mkdir, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { runTool } from "../util/run-tool.js";
import { ROOT_DISK_LABEL, SYSTEM_MOUNT } from "./guest-scripts.js";
import { makeExt4Image } from "./ext4.js";

/** The base template's root filesystem: Debian bookworm, minbase plus what agents reach for first. */
export const BASE_ROOTFS_RECIPE = {
  suite: "bookworm",
  variant: "minbase",
  packages: ["ca-certificates", "git", "curl", "procps", "iproute2", "less", "xz-utils"],
  /** Free space of the root disk as the guest sees it (the qcow2 file only grows with what is written). */
  diskBytes: 4 * 1024 * 1024 * 1024,
} as const;

/**
 * mmdebstrap → directory → ext4 (`mkfs.ext4 -d`, no loop mount) → qcow2. The qcow2 is used read-only as the
 * backing file of every VM's own overlay.
 */
export async function buildBaseRootfs(opts: { stageDir: string; outFile: string; log: (line: string) => void }): Promise<void> {
  const rootDir = join(opts.stageDir, "root");
  const rawFile = join(opts.stageDir, "root.ext4");
  const recipe = BASE_ROOTFS_RECIPE;
  opts.log(`mmdebstrap ${recipe.suite} (${recipe.variant} + ${recipe.packages.join(", ")})`);
  await runTool("mmdebstrap", [
    "--quiet",
    `--variant=${recipe.variant}`,
    `--include=${recipe.packages.join(",")}`,
    // Documentation and caches only make the template larger.
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--customize-hook=rm -rf \"$1\"/var/cache/apt/* \"$1\"/var/lib/apt/lists/*",
    recipe.suite,
    rootDir,
  ]);
  await mkdir(join(rootDir, SYSTEM_MOUNT.slice(1)), { recursive: true });
  await writeFile(join(rootDir, "etc/hostname"), "sandbox\n");
  await writeFile(join(rootDir, "etc/hosts"), "127.0.0.1 localhost\n127.0.1.1 sandbox\n::1 localhost\n");
  opts.log("ext4 image of the root filesystem");
  await makeExt4Image({ sourceDir: rootDir, outFile: rawFile, label: ROOT_DISK_LABEL, journal: true, minBytes: recipe.diskBytes });
  await rm(rootDir, { recursive: true, force: true });
  opts.log("qcow2 conversion");
  await runTool("qemu-img", ["convert", "-q", "-f", "raw", "-O", "qcow2", rawFile, opts.outFile]);
  await rm(rawFile, { force: true });
}
