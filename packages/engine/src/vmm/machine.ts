import { readFileSync } from "node:fs";
import { AGENT_PORT_NAME } from "@codecourier/protocol";

export type Accelerator = "kvm" | "tcg";

/** The device layout and boot parameters of one VM. Everything here is part of what a snapshot must match. */
export interface MachineSpec {
  accel: Accelerator;
  memoryMiB: number;
  cpus: number;
  kernelPath: string;
  initramfsPath: string;
  /** Omitted for the bare boots of the accelerator probe and the benchmark floor. */
  systemDiskPath?: string;
  rootDiskPath?: string;
  qmpSocket?: string;
  agentSocket?: string;
  consoleLog: string;
  extraKernelArgs?: readonly string[];
  /** Where guest RAM lives. Default: anonymous host memory. */
  memory?: GuestMemory;
  /**
   * Start with `-incoming defer`: QEMU waits for a device state to be loaded through QMP (a snapshot restore)
   * instead of booting the kernel.
   */
  incoming?: boolean;
  /**
   * Backend of the network device: a tap device (in the network namespace QEMU is started in), or none (a hub with
   * no other port: frames go nowhere). The device itself is the same either way, so a snapshot restores with either.
   */
  networkTap?: string;
  /** CPU model under TCG (default {@link TCG_CPU_MODEL}); part of the layout a snapshot must match. */
  tcgCpuModel?: string;
  /**
   * Size of TCG's translated-code buffer in MiB (default {@link TCG_CODE_BUFFER_MIB}). Host-side only: not part of
   * the guest-visible layout. QEMU backs the buffer with transparent huge pages, so it grows in 2 MiB steps; a
   * smaller buffer caps what an idle clone holds, at the price of retranslating when it fills.
   */
  tcgCodeBufferMiB?: number;
}

/**
 * Guest RAM backing. Templates and snapshots keep RAM in a file mapped shared (written through to the file);
 * clones map that file private, so every clone shares its pages copy-on-write and loads them lazily.
 */
export type GuestMemory = { kind: "anonymous" } | { kind: "file"; path: string; shared: boolean };

/** RAM backend id; the migration stream names RAM by it, so it must never change. */
export const MEMORY_BACKEND_ID = "mem";

export const MEMORY_LIMITS_MIB = { min: 128, max: 64 * 1024 } as const;
export const CPU_LIMITS = { min: 1, max: 64 } as const;

/**
 * Kernel command line. Each flag trims boot work that a sandbox does not need; see docs/boot-time.md.
 * Under TCG the TSC frequency is passed in because the kernel's PIT calibration is unreliable there
 * (it intermittently fails and the boot then hangs).
 */
export function kernelCommandLine(accel: Accelerator, extra: readonly string[] = []): string {
  const args = [
    "console=ttyS0",
    "quiet",
    "panic=-1",
    "no_timer_check",
    "mitigations=off",
    "cryptomgr.notests",
    "lsm=capability",
    "audit=0",
    "8250.nr_uarts=1",
    "random.trust_cpu=on",
    "nokaslr",
    // Sandboxes have no IPv6: without the stack a guest cannot even try it (the host drops its frames too).
    "ipv6.disable=1",
  ];
  if (accel === "tcg") {
    const khz = hostTscKhz();
    if (khz) args.push(`tsc_early_khz=${khz}`);
    // TCG caches translated code by guest virtual address: with address-space randomisation every new process maps
    // ld.so and libc elsewhere and pays for translating them again (an exec of a dynamically linked /bin/true costs
    // ~32 ms instead of ~8 ms). The isolation boundary is the VM, not ASLR inside it; KVM guests keep ASLR.
    if (process.env.CODECOURIER_TCG_GUEST_ASLR !== "on") args.push("norandmaps");
  }
  return [...args, ...extra].join(" ");
}

let cachedTscKhz: number | undefined | null = null;
/** The host TSC frequency in kHz (TCG's guest TSC ticks at the host's rate), if /proc/cpuinfo says it. */
export function hostTscKhz(): number | undefined {
  if (cachedTscKhz !== null) return cachedTscKhz;
  const match = /cpu MHz\s*:\s*([\d.]+)/.exec(readFileSync("/proc/cpuinfo", "utf8"));
  cachedTscKhz = match?.[1] ? Math.round(Number(match[1]) * 1000) : undefined;
  return cachedTscKhz;
}

/** The qemu-system-x86_64 argument list for a microvm with our device layout. */
/**
 * The agent port's device id: QEMU names it in VSERPORT_CHANGE events, which is how the host learns that the guest
 * closed the port (the agent exited) while the socket to QEMU stays connected.
 */
export const AGENT_PORT_DEVICE_ID = "agent-port";

export function qemuArgs(spec: MachineSpec): string[] {
  const args = [
    "-M",
    `microvm,pit=on,rtc=on,memory-backend=${MEMORY_BACKEND_ID}`,
    "-nodefaults",
    "-no-user-config",
    "-display",
    "none",
    // No host process spawning, no privilege changes, no obsolete syscalls from inside QEMU.
    "-sandbox",
    "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
    "-m",
    `${spec.memoryMiB}M`,
    "-object",
    memoryBackend(spec.memory ?? { kind: "anonymous" }, spec.memoryMiB),
    "-smp",
    String(spec.cpus),
    "-kernel",
    spec.kernelPath,
    "-initrd",
    spec.initramfsPath,
    "-append",
    kernelCommandLine(spec.accel, spec.extraKernelArgs),
    // append=on: the host cuts the file down while QEMU writes to it (vmm/console-log.ts).
    "-chardev",
    `file,id=console,path=${spec.consoleLog},append=on`,
    "-serial",
    "chardev:console",
  ];
  if (spec.accel === "kvm") {
    // -arch-capabilities: on AMD hosts KVM refuses the MSR ("failed to set MSR 0x10a").
    args.push("-accel", "kvm", "-cpu", "host,-arch-capabilities");
  } else {
    const tbSize = spec.tcgCodeBufferMiB ?? TCG_CODE_BUFFER_MIB;
    args.push("-accel", tbSize > 0 ? `tcg,thread=multi,tb-size=${tbSize}` : "tcg,thread=multi", "-cpu", spec.tcgCpuModel ?? TCG_CPU_MODEL);
  }
  if (spec.qmpSocket) args.push("-qmp", `unix:${spec.qmpSocket},server=on,wait=off`);
  if (spec.agentSocket) {
    args.push(
      "-device",
      "virtio-serial-device,max_ports=2",
      "-chardev",
      `socket,id=agent,path=${spec.agentSocket},server=on,wait=off`,
      "-device",
      `virtserialport,chardev=agent,name=${AGENT_PORT_NAME},id=${AGENT_PORT_DEVICE_ID}`,
    );
  }
  if (spec.systemDiskPath) {
    args.push(
      "-drive",
      `id=system,file=${spec.systemDiskPath},format=raw,if=none,readonly=on`,
      "-device",
      "virtio-blk-device,drive=system",
    );
  }
  if (spec.rootDiskPath) {
    args.push(
      "-drive",
      `id=root,file=${spec.rootDiskPath},format=qcow2,if=none,discard=unmap,cache=writeback`,
      "-device",
      "virtio-blk-device,drive=root",
    );
  }
  args.push("-object", "rng-random,id=rng,filename=/dev/urandom", "-device", "virtio-rng-device,rng=rng");
  if (spec.agentSocket) {
    // A network device is part of every sandbox's layout from the start, so a clone of a template (booted without a
    // network) is wired to its own namespace's tap without changing the device layout its snapshot was taken with.
    // vnet_hdr=off: the device then offers the guest the same features as with the hub backend, which a restored
    // device state must match.
    const backend = spec.networkTap
      ? `tap,id=net0,ifname=${spec.networkTap},script=no,downscript=no,vnet_hdr=off`
      : "hubport,id=net0,hubid=0";
    args.push("-netdev", backend, "-device", "virtio-net-device,netdev=net0,mac=02:cc:00:00:00:02");
  }
  if (spec.incoming) args.push("-incoming", "defer");
  return args;
}

function memoryBackend(memory: GuestMemory, memoryMiB: number): string {
  if (memory.kind === "anonymous") return `memory-backend-ram,id=${MEMORY_BACKEND_ID},size=${memoryMiB}M`;
  if (memory.path.includes(",")) throw new Error(`memory file path must not contain a comma: ${memory.path}`);
  return `memory-backend-file,id=${MEMORY_BACKEND_ID},size=${memoryMiB}M,mem-path=${memory.path},share=${memory.shared ? "on" : "off"}`;
}

export const QEMU_BINARY = process.env.CODECOURIER_QEMU ?? "qemu-system-x86_64";

/**
 * TCG code buffer size in MiB; 0 (the default) keeps QEMU 7.2's 1 GiB. Smaller buffers cut an idle clone's PSS (32
 * MiB: ~17 MiB less) but the agent's hot code outgrows them: measured here, a pooled clone's first command then
 * took 520–1050 ms instead of 110–180 ms, because the warm-up's translations had been flushed.
 */
export const TCG_CODE_BUFFER_MIB = Number(process.env.CODECOURIER_TCG_CODE_MIB ?? "0");

/** CPU model emulated under TCG; part of the machine layout (a snapshot must be restored with the same one). */
export const TCG_CPU_MODEL = process.env.CODECOURIER_TCG_CPU ?? "max";
