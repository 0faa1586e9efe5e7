// A VM's cpus and memoryMiB as limits on its QEMU process (cgroups), with real QEMU: the limits the kernel reads
// back, a CPU-bound guest held to its CPUs, a guest over its memory limit killed, and the cgroup gone after every
// way a VM ends. Three VMs: two booted together at the start, one for the memory test.
import assert from "node:assert/strict";
import { existsSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { rm } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { ensureGuestImage, type GuestImage } from "../images/guest-image.js";
import { isolatedDataDir } from "../testing/isolated-data-dir.js";
import { parseProcCgroup } from "./cgroups/cgroup-paths.js";
import { hostCgroups } from "./cgroups/host-cgroups.js";
import { listVmCgroups } from "./cgroups/vm-cgroup.js";
import { qemuMemoryOverheadMiB } from "./cgroups/vm-limits.js";
import { VmBootTimeoutError, VmCrashedError } from "./errors.js";
import { Vm } from "./vm.js";

const MiB = 1024 * 1024;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const CLOCK_TICKS_PER_SECOND = 100; // USER_HZ on Linux x86-64

/** CPU seconds (user + system, all threads) a process has used, from /proc/<pid>/stat. */
function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS_PER_SECOND; // utime, stime (fields 14, 15)
}

/** CPUs a process used on average over `ms`. */
async function cpusUsed(pid: number, ms: number): Promise<number> {
  const [cpu0, t0] = [cpuSeconds(pid), performance.now()];
  await sleep(ms);
  return (cpuSeconds(pid) - cpu0) / ((performance.now() - t0) / 1000);
}

/** The directory of `vm`'s cgroup that holds `file`. */
function cgroupFile(vm: Vm, file: string): string {
  const dir = vm.cgroup?.directories.find((d) => existsSync(join(d, file)));
  assert.ok(dir, `no ${file} in ${vm.cgroup?.directories.join(", ")}`);
  return join(dir, file);
}

const readNumber = (path: string) => Number(readFileSync(path, "utf8").trim().split(/\s+/)[0]);


/** Asserts that the kernel lists `pid`, every thread of it, in `vm`'s cgroup for each of cpu and memory. */
function assertInCgroup(vm: Vm, pid: number): void {
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    const entries = parseProcCgroup(readFileSync(`/proc/${pid}/task/${tid}/cgroup`, "utf8"));
    for (const controller of ["cpu", "memory"]) {
      const entry = entries.find((e) => e.controllers.includes(controller)) ?? entries.find((e) => e.hierarchyId === 0);
      assert.ok(entry?.path.endsWith(`/${vm.cgroup!.name}`), `thread ${tid}: ${controller} cgroup is ${entry?.path}`);
    }
  }
}

const host = hostCgroups();

describe("VM limits with real QEMU", { skip: host.available ? false : `no usable cgroups: ${host.summary}` }, () => {
  const previousHome = process.env.CODECOURIER_HOME;
  let home: string;
  let image: GuestImage;
  let oneCpu: Vm;
  let twoCpus: Vm;

  before(async () => {
    image = await ensureGuestImage(() => {});
    home = await isolatedDataDir("cclimits-");
    process.env.CODECOURIER_HOME = home;
    [oneCpu, twoCpus] = await Promise.all([Vm.boot({ image, cpus: 1, memoryMiB: 256 }), Vm.boot({ image, cpus: 2, memoryMiB: 256 })]);
  });

  after(async () => {
    await Promise.all([oneCpu?.stop(), twoCpus?.stop()]);
    if (previousHome === undefined) delete process.env.CODECOURIER_HOME;
    else process.env.CODECOURIER_HOME = previousHome;
    await rm(home, { recursive: true, force: true });
  });

  it("puts each QEMU, all threads, into its own cgroup whose limits read back as the VM's shape", () => {
    assert.ok(host.available);
    for (const [vm, cpus] of [
      [oneCpu, 1],
      [twoCpus, 2],
    ] as const) {
      assert.ok(vm.limits, `${vm.id} runs without limits`);
      assertInCgroup(vm, vm.pid!);
      const memoryLimit = (256 + qemuMemoryOverheadMiB(vm.accel)) * MiB;
      if (host.version === 2) {
        assert.equal(readFileSync(cgroupFile(vm, "cpu.max"), "utf8").trim(), `${cpus * 100_000} 100000`);
        assert.equal(readNumber(cgroupFile(vm, "memory.max")), memoryLimit);
      } else {
        assert.equal(readNumber(cgroupFile(vm, "cpu.cfs_quota_us")), cpus * 100_000);
        assert.equal(readNumber(cgroupFile(vm, "cpu.cfs_period_us")), 100_000);
        assert.equal(readNumber(cgroupFile(vm, "memory.limit_in_bytes")), memoryLimit);
      }
      if (host.controllers.includes("pids")) assert.equal(readNumber(cgroupFile(vm, "pids.max")), vm.limits.pids);
    }
    assert.notDeepEqual(oneCpu.cgroup!.directories, twoCpus.cgroup!.directories);
  });

  it("holds a CPU-bound 1-vCPU guest to one CPU, and to a tenth of one when the quota is cut to that", async (t) => {
    const busy = oneCpu.agent.exec({ shell: "while :; do :; done", stdin: false });
    busy.stdout.resume();
    busy.stderr.resume();
    await busy.id;
    const pid = oneCpu.pid!;
    const quotaFile = cgroupFile(oneCpu, host.available && host.version === 2 ? "cpu.max" : "cpu.cfs_quota_us");
    const quota = readFileSync(quotaFile, "utf8");
    try {
      // The quota caps every 100 ms period, so over seconds QEMU stays at or below 1 CPU, however busy the host.
      const atOneCpu = await cpusUsed(pid, 3000);
      t.diagnostic(`QEMU of a busy 1-vCPU guest: ${atOneCpu.toFixed(2)} CPUs with a 1-CPU quota`);
      assert.ok(atOneCpu < 1.3, `QEMU used ${atOneCpu.toFixed(2)} CPUs with a 1-CPU quota`);

      // That alone cannot tell a limit from a guest with one vCPU. Proof that the kernel applies this cgroup's quota to
      // QEMU: cut it to 10 ms per period, far below what a busy vCPU thread gets even on a loaded host, and QEMU is
      // throttled in every period it runs.
      writeFileSync(quotaFile, host.available && host.version === 2 ? "10000 100000" : "10000");
      const throttled = () => Number(/nr_throttled (\d+)/.exec(readFileSync(cgroupFile(oneCpu, "cpu.stat"), "utf8"))?.[1]);
      const throttledBefore = throttled();
      const atTenth = await cpusUsed(pid, 3000);
      t.diagnostic(`with a 0.1-CPU quota: ${atTenth.toFixed(2)} CPUs, throttled in ${throttled() - throttledBefore} periods`);
      assert.ok(atTenth < 0.2, `QEMU used ${atTenth.toFixed(2)} CPUs with a 0.1-CPU quota`);
      assert.ok(throttled() > throttledBefore, "the kernel never throttled the busy QEMU");
    } finally {
      writeFileSync(quotaFile, quota.trim());
      await busy.kill();
      await busy.wait().catch(() => {});
    }
    assert.equal((await oneCpu.agent.run({ argv: ["echo", "still fine"] })).stdout.toString(), "still fine\n");
  });

  it("removes the cgroup when the VM is stopped, and when it is killed", async () => {
    const stopped = oneCpu.cgroup!.directories;
    const killed = twoCpus.cgroup!.directories;
    assert.ok([...stopped, ...killed].every(existsSync));
    await oneCpu.stop();
    for (const dir of stopped) assert.equal(existsSync(dir), false, `${dir} left after stop`);
    await twoCpus.kill();
    for (const dir of killed) assert.equal(existsSync(dir), false, `${dir} left after kill`);
    assert.deepEqual(listVmCgroups(), []);
  });

  it("kills a QEMU that exceeds its memory limit: the VM is reported crashed and its cgroup is removed", async () => {
    const vm = await Vm.boot({ image, cpus: 1, memoryMiB: 256 });
    const dirs = vm.cgroup!.directories;
    try {
      // Tighten the limit to what QEMU holds now plus a little; filling the guest's page cache then needs more.
      const usageFile = cgroupFile(vm, host.available && host.version === 2 ? "memory.current" : "memory.usage_in_bytes");
      const limitFile = cgroupFile(vm, host.available && host.version === 2 ? "memory.max" : "memory.limit_in_bytes");
      writeFileSync(limitFile, String(readNumber(usageFile) + 16 * MiB));
      const crashed = new Promise<VmCrashedError>((resolve) => vm.once("crashed", resolve));
      const filled = await vm.agent.run({ shell: "head -c 220M /dev/zero > /root/fill; sync; cat /root/fill > /dev/null", stdin: false }).then(
        () => true,
        () => false, // the agent connection broke: QEMU was killed
      );
      assert.equal(filled, false, "the guest filled 220 MB of page cache and QEMU was not killed");
      const error = await crashed;
      assert.ok(error instanceof VmCrashedError);
      assert.match(error.message, /SIGKILL/);
      if (error.consoleLog) await rm(error.consoleLog, { force: true });
      for (const dir of dirs) assert.equal(existsSync(dir), false, `${dir} left after the crash`);
    } finally {
      await vm.kill();
    }
  });

  it("leaves no cgroup behind when a boot fails", async () => {
    const error: unknown = await Vm.boot({ image, memoryMiB: 256, bootTimeoutMs: 300 }).then(
      () => assert.fail("boot should have timed out"),
      (e: unknown) => e,
    );
    assert.ok(error instanceof VmBootTimeoutError, String(error));
    if (error.consoleLog !== undefined) await rm(error.consoleLog, { force: true });
    assert.deepEqual(listVmCgroups(), []);
  });
});
