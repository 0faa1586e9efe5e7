import { createHash } from "node:crypto";
import { basename, dirname } from "node:path";
import type { GuestImage } from "../images/guest-image.js";
import { qemuArgs, type Accelerator } from "../vmm/machine.js";

/**
 * What a saved VM state depends on. Restoring into anything else does not fail cleanly: QEMU may load the state
 * and the guest then hangs or corrupts memory (other kernel, other device layout). So each snapshot records this
 * and a restore compares it first.
 */
export interface SnapshotCompat {
  /** Content-addressed build of the guest kernel (its directory name carries the recipe digest). */
  kernel: string;
  initramfs: string;
  /** The system disk (agent + runtime) the guest has mounted. */
  systemDisk: string;
  qemu: string;
  /** KVM or TCG: a guest saved under one does not run under the other. */
  accel: Accelerator;
  /** Digest of the QEMU command line with host paths left out: devices, memory, CPUs, accelerator, kernel args. */
  layout: string;
}

function buildId(path: string): string {
  return basename(dirname(path));
}

export function snapshotCompat(options: {
  image: GuestImage;
  qemuVersion: string;
  accel: Accelerator;
  memoryMiB: number;
  cpus: number;
  tcgCpuModel?: string;
}): SnapshotCompat {
  const args = qemuArgs({
    accel: options.accel,
    memoryMiB: options.memoryMiB,
    cpus: options.cpus,
    kernelPath: "KERNEL",
    initramfsPath: "INITRAMFS",
    systemDiskPath: "SYSTEM",
    rootDiskPath: "ROOT",
    qmpSocket: "QMP",
    agentSocket: "AGENT",
    consoleLog: "CONSOLE",
    memory: { kind: "file", path: "MEMORY", shared: false },
    incoming: true,
    tcgCpuModel: options.tcgCpuModel,
    // Host-side only; a restore may use another buffer size.
    tcgCodeBufferMiB: 0,
  });
  return {
    kernel: buildId(options.image.kernelPath),
    initramfs: buildId(options.image.initramfsPath),
    systemDisk: buildId(options.image.systemDiskPath),
    qemu: options.qemuVersion,
    accel: options.accel,
    layout: createHash("sha256").update(JSON.stringify(args)).digest("hex").slice(0, 16),
  };
}

/** Names of the fields in which `saved` differs from `current`. */
export function compatDifferences(saved: SnapshotCompat, current: SnapshotCompat): Array<keyof SnapshotCompat> {
  return (Object.keys(current) as Array<keyof SnapshotCompat>).filter((key) => saved[key] !== current[key]);
}
