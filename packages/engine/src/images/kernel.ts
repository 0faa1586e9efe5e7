import { readdir, readFile, writeFile } from "node:fs/promises";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { runTool } from "../util/run-tool.js";

export interface HostKernel {
  version: string;
  /** The compressed bzImage as Debian ships it. */
  vmlinuzPath: string;
  modulesDir: string;
}

/**
 * Finds the newest Debian kernel installed on the host (package linux-image-amd64) that also has its modules.
 * The guest boots this kernel; the host never runs it.
 */
export async function findHostKernel(): Promise<HostKernel> {
  const entries = (await readdir("/boot").catch(() => [] as string[])).filter((f) => f.startsWith("vmlinuz-"));
  const versions = entries
    .map((f) => f.slice("vmlinuz-".length))
    .filter((v) => existsSync(join("/lib/modules", v, "modules.dep")))
    .sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
  const version = versions.at(-1);
  if (!version) {
    throw new Error(
      "No guest kernel found: expected /boot/vmlinuz-<version> with /lib/modules/<version>. " +
        "Install it with: apt-get install linux-image-amd64",
    );
  }
  return { version, vmlinuzPath: join("/boot", `vmlinuz-${version}`), modulesDir: join("/lib/modules", version) };
}

const XZ_MAGIC = Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]);
const ELF_MAGIC = Buffer.from([0x7f, 0x45, 0x4c, 0x46]);

/**
 * Extracts the uncompressed ELF vmlinux from an xz-compressed bzImage. QEMU boots the ELF directly through
 * its PVH entry note, which skips the real-mode setup and the in-guest decompression (slow under TCG).
 */
export async function extractVmlinux(vmlinuzPath: string, outPath: string): Promise<void> {
  const image = await readFile(vmlinuzPath);
  const start = image.indexOf(XZ_MAGIC);
  if (start < 0) throw new Error(`${vmlinuzPath} has no xz payload; only xz-compressed Debian kernels are supported`);
  const elf = await runTool("xz", ["-dc", "--single-stream"], { input: image.subarray(start) });
  if (!elf.subarray(0, 4).equals(ELF_MAGIC)) throw new Error(`payload of ${vmlinuzPath} is not an ELF vmlinux`);
  await writeFile(outPath, elf);
}

/** Kernel modules the guest needs, in load order (dependencies first). */
export const GUEST_MODULES = [
  "kernel/drivers/virtio/virtio_ring",
  "kernel/drivers/virtio/virtio",
  "kernel/drivers/virtio/virtio_mmio",
  "kernel/drivers/char/virtio_console",
  "kernel/drivers/block/virtio_blk",
  "kernel/drivers/char/hw_random/virtio-rng",
  "kernel/net/core/failover",
  "kernel/drivers/net/net_failover",
  "kernel/drivers/net/virtio_net",
  "kernel/lib/crc16",
  "kernel/crypto/crc32c_generic",
  "kernel/fs/mbcache",
  "kernel/fs/jbd2/jbd2",
  "kernel/fs/ext4/ext4",
  "kernel/fs/overlayfs/overlay",
] as const;
