import { constants } from "node:fs";
import { access, mkdir, mkdtemp, readFile, rm } from "node:fs/promises";
import { spawn } from "node:child_process";
import { basename, dirname, join } from "node:path";
import { release } from "node:os";
import { dataDir } from "../config.js";
import type { GuestImage } from "../images/guest-image.js";
import { FLOOR_READY_MARKER } from "../images/floor-initramfs.js";
import { readIfExists, writeAtomic } from "../util/fs.js";
import { QEMU_BINARY, qemuArgs, type Accelerator } from "./machine.js";
import { runTool } from "../util/run-tool.js";
import { onHostExit } from "./reaper.js";

export interface AcceleratorChoice {
  accel: Accelerator;
  /** Why this accelerator: the probe's outcome, a cached result, or an override. */
  reason: string;
}

const PROBE_TIMEOUT_MS = 20_000;

/** Boots the guest kernel with the busybox-only initramfs and waits for its marker on the serial console. */
export async function bootToMarker(
  image: Pick<GuestImage, "kernelPath" | "floorInitramfsPath">,
  accel: Accelerator,
  timeoutMs: number,
): Promise<{ ok: boolean; ms: number; console: string }> {
  const dir = await mkdtemp(join(dataDir(), "run", "floor-"));
  const consoleLog = join(dir, "console.log");
  const args = qemuArgs({
    accel,
    memoryMiB: 256,
    cpus: 1,
    kernelPath: image.kernelPath,
    initramfsPath: image.floorInitramfsPath,
    consoleLog,
  });
  const started = performance.now();
  const child = spawn(QEMU_BINARY, args, { stdio: ["ignore", "ignore", "pipe"] });
  // A host interrupted during the probe must not leave it running (under a PVM host's KVM it may never finish).
  const forget = onHostExit(() => child.kill("SIGKILL"));
  let stderr = "";
  let exited = false;
  // A failed spawn (EMFILE, ENOENT) emits 'error', never 'exit', and leaves no pipes.
  child.on("error", (error) => {
    stderr += error.message;
    exited = true;
  });
  child.stderr?.on("data", (chunk: Buffer) => (stderr = (stderr + chunk.toString()).slice(-4096)));
  child.on("exit", () => (exited = true));
  try {
    // The console is a file QEMU appends to; polling it every few ms is as fast as a pipe and has no
    // buffering surprises. The marker is the first line userspace prints.
    while (performance.now() - started < timeoutMs && !exited) {
      const text = await readFile(consoleLog, "utf8").catch(() => "");
      if (text.includes(FLOOR_READY_MARKER)) return { ok: true, ms: performance.now() - started, console: text };
      await new Promise((r) => setTimeout(r, 2));
    }
    const text = await readFile(consoleLog, "utf8").catch(() => "");
    return { ok: false, ms: performance.now() - started, console: text + stderr };
  } finally {
    child.kill("SIGKILL");
    if (!exited) await new Promise((r) => child.once("exit", r));
    forget();
    await rm(dir, { recursive: true, force: true });
  }
}

/** First line of `qemu-system-x86_64 --version` for the QEMU the engine runs (CODECOURIER_QEMU). */
export async function qemuVersion(): Promise<string> {
  return (await runTool(QEMU_BINARY, ["--version"])).toString().split("\n")[0] ?? "";
}

async function kvmUsable(): Promise<boolean> {
  try {
    await access("/dev/kvm", constants.R_OK | constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * Chooses KVM when a real boot under it works, TCG otherwise. A PVM host exposes /dev/kvm but a stock guest
 * kernel crawls or dies under it, so the device's presence proves nothing: only a boot does. The answer is
 * cached per (host kernel, QEMU version, guest kernel). CODECOURIER_ACCEL=kvm|tcg overrides the probe.
 */
export function chooseAccelerator(
  image: Pick<GuestImage, "kernelPath" | "floorInitramfsPath" | "id">,
): Promise<AcceleratorChoice> {
  // Memoized per process: every boot asks, and the answer only changes with the host, QEMU or kernel.
  const memoKey = `${process.env.CODECOURIER_ACCEL ?? ""}\0${image.kernelPath}`;
  let choice = memo.get(memoKey);
  if (!choice) {
    choice = probeOrCached(image);
    memo.set(memoKey, choice);
    choice.catch(() => memo.delete(memoKey));
  }
  return choice;
}

const memo = new Map<string, Promise<AcceleratorChoice>>();

async function probeOrCached(image: Pick<GuestImage, "kernelPath" | "floorInitramfsPath" | "id">): Promise<AcceleratorChoice> {
  const override = process.env.CODECOURIER_ACCEL;
  if (override === "kvm" || override === "tcg") return { accel: override, reason: `CODECOURIER_ACCEL=${override}` };
  if (override && override !== "auto") throw new Error(`CODECOURIER_ACCEL must be kvm, tcg or auto, got "${override}"`);

  // The kernel by its content-addressed build (kernel-<digest>), not its path: data dirs that share the images
  // (each test server's, by a symlink) share the answer too, instead of each probing for 20 s.
  const key = JSON.stringify({ host: release(), qemuVersion: await qemuVersion(), kernel: basename(dirname(image.kernelPath)) });
  const cacheFile = join(dataDir(), "accel.json");
  const cached = await readIfExists(cacheFile);
  if (cached) {
    try {
      const parsed = JSON.parse(cached) as { key: string; choice: AcceleratorChoice };
      if (parsed.key === key) return parsed.choice;
    } catch {
      // Unreadable cache: probe again.
    }
  }
  let choice: AcceleratorChoice;
  if (!(await kvmUsable())) {
    choice = { accel: "tcg", reason: "/dev/kvm is missing or not accessible" };
  } else {
    await mkdir(join(dataDir(), "run"), { recursive: true });
    const probe = await bootToMarker(image, "kvm", PROBE_TIMEOUT_MS);
    choice = probe.ok
      ? { accel: "kvm", reason: `probe boot under KVM reached userspace in ${Math.round(probe.ms)} ms` }
      : { accel: "tcg", reason: `probe boot under KVM did not reach userspace within ${PROBE_TIMEOUT_MS} ms` };
  }
  await writeAtomic(cacheFile, JSON.stringify({ key, choice }, null, 2));
  return choice;
}
