import { copyFile, mkdir, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { writeNewcArchive } from "./cpio.js";

/** Printed on the serial console by the floor initramfs as its first act in userspace. */
export const FLOOR_READY_MARKER = "CC-FLOOR-READY";

const FLOOR_INIT = `#!/bin/sh
echo ${FLOOR_READY_MARKER}
exec /bin/sh -c 'while :; do sleep 3600; done'
`;

/**
 * A busybox-only initramfs whose init prints a marker on the serial console. Booting the guest kernel with it
 * is the raw floor (how fast bare QEMU + this kernel reach userspace) and the accelerator probe's test boot.
 */
export async function buildFloorInitramfs(stageDir: string, outFile: string): Promise<void> {
  await mkdir(join(stageDir, "bin"), { recursive: true });
  await mkdir(join(stageDir, "dev"), { recursive: true });
  await copyFile("/bin/busybox", join(stageDir, "bin/busybox"));
  for (const applet of ["sh", "sleep", "echo"]) await symlink("busybox", join(stageDir, "bin", applet));
  await writeFile(join(stageDir, "init"), FLOOR_INIT, { mode: 0o755 });
  const list = ["bin", "bin/busybox", "bin/sh", "bin/sleep", "bin/echo", "dev", "init"];
  await writeNewcArchive(stageDir, list, outFile);
}

export function floorInitScript(): string {
  return FLOOR_INIT;
}
