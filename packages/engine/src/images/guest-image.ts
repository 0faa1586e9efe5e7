import { existsSync } from "node:fs";
import { mkdir, readdir, rename, rm } from "node:fs/promises";
import { createRequire } from "node:module";
import { basename, dirname, join } from "node:path";
import { dataDir } from "../config.js";
import { BASE_ROOTFS_RECIPE, buildBaseRootfs } from "./base-rootfs.js";
import { initramfsInit, stage2Script } from "./guest-scripts.js";
import { buildInitramfs } from "./initramfs.js";
import { extractVmlinux, findHostKernel, GUEST_MODULES } from "./kernel.js";
import { Recipe, sha256File } from "./recipe.js";
import { ensureGuestNode } from "./guest-node.js";
import { buildFloorInitramfs, floorInitScript } from "./floor-initramfs.js";
import { agentCommand, buildSystemDisk } from "./system-disk.js";
import { GUEST_HELPERS, GUEST_HELPER_COMPILER_ARGS, guestHelperSource } from "./guest-helpers.js";

/** Everything needed to boot a guest: built, cached and content-addressed under the data dir. */
export interface GuestImage {
  /** Combined recipe digest of all parts: two VMs with the same id boot identical bits. */
  id: string;
  kernelVersion: string;
  kernelPath: string;
  initramfsPath: string;
  systemDiskPath: string;
  /** Read-only qcow2 base; each VM writes to its own overlay on top of it. */
  rootDiskPath: string;
  /** Busybox-only initramfs for the raw floor and the accelerator probe. */
  floorInitramfsPath: string;
}

export interface BuildLog {
  (line: string): void;
}

const require = createRequire(import.meta.url);

export function agentBundlePath(): string {
  return require.resolve("@codecourier/agent/agent.mjs");
}

function imagesDir(): string {
  return join(dataDir(), "images");
}

/**
 * Builds `name-digest/` unless it exists: into a temporary directory first, renamed into place when complete,
 * so an interrupted build never leaves a half image that looks finished.
 */
async function cached(
  name: string,
  digest: string,
  file: string,
  log: BuildLog,
  build: (stageDir: string, outFile: string) => Promise<void>,
): Promise<string> {
  const dir = join(imagesDir(), `${name}-${digest}`);
  const out = join(dir, file);
  if (existsSync(out)) return out;
  const tmp = join(imagesDir(), `.tmp-${name}-${digest}-${process.pid}`);
  await rm(tmp, { recursive: true, force: true });
  await mkdir(join(tmp, "stage"), { recursive: true });
  const started = Date.now();
  log(`building ${name} (${digest})…`);
  try {
    await build(join(tmp, "stage"), join(tmp, file));
    await rm(join(tmp, "stage"), { recursive: true, force: true });
    await rm(dir, { recursive: true, force: true });
    await rename(tmp, dir);
  } catch (error) {
    await rm(tmp, { recursive: true, force: true });
    throw error;
  }
  log(`built ${name} in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  await pruneOtherBuilds(name, digest, log);
  return out;
}

/**
 * Removes earlier builds of the same part (other recipe digests). VMs still running from one keep working: their
 * QEMU holds the files open, and Linux frees them only when it exits.
 */
async function pruneOtherBuilds(name: string, keepDigest: string, log: BuildLog): Promise<void> {
  for (const entry of await readdir(imagesDir())) {
    if (entry.startsWith(`${name}-`) && entry !== `${name}-${keepDigest}`) {
      await rm(join(imagesDir(), entry), { recursive: true, force: true });
      log(`removed outdated ${entry}`);
    }
  }
}

/** Returns the base guest image, building whatever part of it is missing or whose recipe changed. */
export async function ensureGuestImage(log: BuildLog = () => {}): Promise<GuestImage> {
  const kernel = await findHostKernel();

  const kernelDigest = (await new Recipe().add("version", kernel.version).addFile("vmlinuz", kernel.vmlinuzPath)).digest();
  const kernelPath = await cached("kernel", kernelDigest, "vmlinux", log, (_stage, out) =>
    extractVmlinux(kernel.vmlinuzPath, out),
  );

  const initramfsRecipe = new Recipe()
    .add("kernel", kernelDigest)
    .add("modules", GUEST_MODULES.join(","))
    .add("init", initramfsInit(GUEST_MODULES));
  await initramfsRecipe.addFile("busybox", "/bin/busybox");
  const initramfsPath = await cached("initramfs", initramfsRecipe.digest(), "initramfs.cpio", log, (stage, out) =>
    buildInitramfs({ stageDir: stage, outFile: out, modulesDir: kernel.modulesDir, modules: GUEST_MODULES }),
  );

  const agentBundle = agentBundlePath();
  const nodeBinary = await ensureGuestNode(log);
  const systemRecipe = new Recipe().add("stage2", stage2Script(agentCommand()));
  await systemRecipe.addFile("busybox", "/bin/busybox");
  await systemRecipe.addFile("node", nodeBinary);
  await systemRecipe.addFile("agent", agentBundle);
  systemRecipe.add("helper-flags", GUEST_HELPER_COMPILER_ARGS.join(" "));
  for (const helper of GUEST_HELPERS) await systemRecipe.addFile(helper.name, guestHelperSource(helper));
  const systemDiskPath = await cached("system", systemRecipe.digest(), "system.ext4", log, (stage, out) =>
    buildSystemDisk({ stageDir: stage, outFile: out, nodeBinary, agentBundle }),
  );

  const rootfsDigest = new Recipe().add("recipe", JSON.stringify(BASE_ROOTFS_RECIPE)).add("layout", "v1").digest();
  const rootDiskPath = await cached("rootfs", rootfsDigest, "root.qcow2", log, (stage, out) =>
    buildBaseRootfs({ stageDir: stage, outFile: out, log }),
  );

  const floorDigest = new Recipe().add("init", floorInitScript()).add("busybox", await sha256File("/bin/busybox")).digest();
  const floorInitramfsPath = await cached("floor", floorDigest, "floor.cpio", log, (stage, out) => buildFloorInitramfs(stage, out));

  // Named by the parts' recipe digests (their directory names), so the id is the same in any data dir.
  const part = (path: string) => basename(dirname(path));
  const id = new Recipe()
    .add("kernel", part(kernelPath))
    .add("initramfs", part(initramfsPath))
    .add("system", part(systemDiskPath))
    .add("rootfs", part(rootDiskPath))
    .add("floor", part(floorInitramfsPath))
    .digest();
  return { id, kernelVersion: kernel.version, kernelPath, initramfsPath, systemDiskPath, rootDiskPath, floorInitramfsPath };
}
