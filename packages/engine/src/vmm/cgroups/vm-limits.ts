import { TCG_CODE_BUFFER_MIB, type Accelerator } from "../machine.js";

/**
 * What the cgroup around one VM's QEMU allows: `cpus` CPUs of time, the guest's RAM plus QEMU's own memory, and a
 * bounded number of threads. Pure arithmetic; cgroup-v1.ts and cgroup-v2.ts turn it into their files.
 */
export interface VmResourceLimits {
  cpus: number;
  /** CPU time per period: cpus × period, so QEMU (all its threads together) gets at most `cpus` CPUs. */
  cpuQuotaUs: number;
  cpuPeriodUs: number;
  guestMemoryMiB: number;
  /** QEMU's own memory on top of the guest's RAM: see {@link qemuMemoryOverheadMiB}. */
  overheadMiB: number;
  memoryBytes: number;
  /** Tasks (threads: QEMU cannot fork, `-sandbox spawn=deny`). */
  pids: number;
}

/** The kernel's default CFS period; one tenth of a second keeps throttling pauses short. */
export const CPU_PERIOD_US = 100_000;

/**
 * QEMU's memory besides guest RAM and TCG's code buffer, measured on a 256 MiB, 1-vCPU TCG VM (docs ADR 0008):
 * ~40 MiB anonymous (heap, thread stacks, device and I/O buffers) idle after boot and ~47 MiB after busy workloads
 * (file hashing, compression, git, perl); plus ~90 MiB of file pages (the QEMU binary and libraries, and the 63 MiB
 * kernel image QEMU maps to load it), which count against a memory cgroup but are reclaimable. 128 MiB covers the
 * anonymous part more than twice and most of the file pages, so the kernel never has to reclaim QEMU's own code.
 */
export const QEMU_BASE_OVERHEAD_MIB = 128;

/**
 * QEMU 7.2's TCG code buffer when tb-size is not set: 1 GiB, backed lazily. It only grows until it is full (then it
 * is flushed), so a long-lived VM that runs varied code eventually holds all of it: measured 110 MiB after boot and
 * 212 MiB after six workloads, still growing. A memory limit below it would let QEMU be OOM-killed for its own cache.
 */
export const QEMU_DEFAULT_TCG_CODE_BUFFER_MIB = 1024;

/**
 * Threads QEMU may have: main loop, RCU, one per vCPU, up to 64 block I/O workers (its thread pool's maximum),
 * migration and a few more; measured 10 on a busy 1-vCPU VM. The limit only stops a runaway, so it is generous:
 * a QEMU that cannot create a thread aborts.
 */
export const QEMU_PIDS_BASE = 128;

/** What QEMU needs besides guest RAM under `accel`; under TCG that includes the whole code buffer (see above). */
export function qemuMemoryOverheadMiB(accel: Accelerator, tcgCodeBufferMiB = TCG_CODE_BUFFER_MIB): number {
  if (accel === "kvm") return QEMU_BASE_OVERHEAD_MIB;
  return QEMU_BASE_OVERHEAD_MIB + (tcgCodeBufferMiB > 0 ? tcgCodeBufferMiB : QEMU_DEFAULT_TCG_CODE_BUFFER_MIB);
}

export function vmResourceLimits(shape: { cpus: number; memoryMiB: number; accel: Accelerator; tcgCodeBufferMiB?: number }): VmResourceLimits {
  const overheadMiB = qemuMemoryOverheadMiB(shape.accel, shape.tcgCodeBufferMiB);
  return {
    cpus: shape.cpus,
    cpuQuotaUs: shape.cpus * CPU_PERIOD_US,
    cpuPeriodUs: CPU_PERIOD_US,
    guestMemoryMiB: shape.memoryMiB,
    overheadMiB,
    memoryBytes: (shape.memoryMiB + overheadMiB) * 1024 * 1024,
    pids: QEMU_PIDS_BASE + shape.cpus,
  };
}
