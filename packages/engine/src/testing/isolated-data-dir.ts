import { existsSync } from "node:fs";
import { copyFile, mkdir, mkdtemp, symlink } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { dataDir } from "../config.js";
import { ensureGuestImage } from "../images/guest-image.js";
import { chooseAccelerator } from "../vmm/accel.js";

/**
 * For tests: a fresh data dir that shares the built guest images, downloads and accelerator probe of the default
 * one, so that an engine's recovery (which kills QEMUs it does not own under its run/) never touches other VMs.
 */
export async function isolatedDataDir(prefix = "cctest-"): Promise<string> {
  const shared = dataDir();
  // The accelerator is probed once, in the shared data dir (a 20 s boot under KVM on a host where it does not
  // work), and every isolated dir gets the answer.
  await chooseAccelerator(await ensureGuestImage());
  const home = await mkdtemp(join(tmpdir(), prefix));
  await mkdir(join(shared, "images"), { recursive: true });
  await symlink(join(shared, "images"), join(home, "images"));
  if (existsSync(join(shared, "downloads"))) await symlink(join(shared, "downloads"), join(home, "downloads"));
  if (existsSync(join(shared, "accel.json"))) await copyFile(join(shared, "accel.json"), join(home, "accel.json"));
  return home;
}
