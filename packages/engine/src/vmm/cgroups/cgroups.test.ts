// cgroup support without VMs: the parsing of /proc against real host layouts (pure), and, on a host that offers
// cgroups, real cgroups around ordinary processes: limits written, joining, removal, stale cleanup.
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, rmdirSync } from "node:fs";
import { rm } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { isolatedDataDir } from "../../testing/isolated-data-dir.js";
import { cgroupDirectory, parseCgroupMounts, parseProcCgroup, v1ControllerDirectory, v2Directory } from "./cgroup-paths.js";
import { joinCgroup, limitFiles, removeCgroup } from "./cgroup-fs.js";
import { detectHostCgroups, hostCgroups } from "./host-cgroups.js";
import { VmCgroup, removeStaleVmCgroups, vmCgroupPrefix } from "./vm-cgroup.js";
import { QEMU_BASE_OVERHEAD_MIB, QEMU_DEFAULT_TCG_CODE_BUFFER_MIB, vmResourceLimits } from "./vm-limits.js";

const MiB = 1024 * 1024;

/** This build host: cgroup v1 controllers, an empty cgroup2 beside them, and a memory cgroup per session. */
const HYBRID_MOUNTINFO = `31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw`;
const HYBRID_PROC_CGROUP = `9:name=systemd:/
8:pids:/
4:memory:/process_api/6f1ac02d
2:cpuacct:/
1:cpu:/
0::/
`;

describe("cgroup paths from /proc (pure)", () => {
  it("finds each v1 controller's directory on a hybrid host, and the cgroup2 beside them", () => {
    const own = parseProcCgroup(HYBRID_PROC_CGROUP);
    const mounts = parseCgroupMounts(HYBRID_MOUNTINFO);
    assert.deepEqual(own.find((e) => e.hierarchyId === 4), { hierarchyId: 4, controllers: ["memory"], path: "/process_api/6f1ac02d" });
    assert.equal(mounts.length, 6, "the tmpfs is not a cgroup mount");
    const dirOf = (c: "cpu" | "memory" | "pids") => {
      const found = v1ControllerDirectory(c, own, mounts);
      return "directory" in found ? found.directory : found.problem;
    };
    assert.equal(dirOf("cpu"), "/sys/fs/cgroup/cpu");
    assert.equal(dirOf("memory"), "/sys/fs/cgroup/memory/process_api/6f1ac02d");
    assert.equal(dirOf("pids"), "/sys/fs/cgroup/pids");
    const v2 = v2Directory(own, mounts);
    assert.ok("directory" in v2 && v2.directory === "/sys/fs/cgroup/unified");
  });

  it("resolves paths under a mount that shows only part of the hierarchy (a container without a cgroup namespace)", () => {
    const mounts = parseCgroupMounts(
      "1183 1180 0:27 /docker/abc /sys/fs/cgroup/cpu,cpuacct ro,nosuid - cgroup cgroup rw,cpu,cpuacct\n" +
        "1184 1180 0:28 /docker/abc /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory\n",
    );
    const own = parseProcCgroup("5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc/sub\n");
    assert.deepEqual(v1ControllerDirectory("memory", own, mounts), { directory: "/sys/fs/cgroup/memory/sub", mount: mounts[1] });
    // A read-only mount is found but refused, with the reason.
    const cpu = v1ControllerDirectory("cpu", own, mounts);
    assert.ok("problem" in cpu && /read-only/.test(cpu.problem), JSON.stringify(cpu));
    assert.equal(cgroupDirectory({ root: "/docker/abc", mountPoint: "/m" }, "/docker/other"), undefined);
    assert.ok("problem" in v1ControllerDirectory("pids", own, mounts));
  });

  it("reads a pure cgroup v2 host (systemd service cgroup) and unescapes mount paths", () => {
    const mounts = parseCgroupMounts("35 24 0:30 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate\n36 1 8:1 / /my\\040mnt rw - ext4 /dev/sda1 rw\n");
    assert.deepEqual(mounts, [{ version: 2, root: "/", mountPoint: "/sys/fs/cgroup", options: [], readOnly: false }]);
    const own = parseProcCgroup("0::/system.slice/codecourier.service\n");
    const found = v2Directory(own, mounts);
    assert.ok("directory" in found && found.directory === "/sys/fs/cgroup/system.slice/codecourier.service");
    assert.deepEqual(parseCgroupMounts("1 0 0:1 / /a\\040b rw - cgroup2 none rw\n")[0]?.mountPoint, "/a b");
    assert.deepEqual(parseProcCgroup("0::/with:colon\n"), [{ hierarchyId: 0, controllers: [], path: "/with:colon" }]);
  });
});

describe("VM limits (pure)", () => {
  it("gives cpus × period of CPU time, guest RAM plus QEMU's overhead, and threads for QEMU", () => {
    const kvm = vmResourceLimits({ cpus: 2, memoryMiB: 512, accel: "kvm" });
    assert.equal(kvm.cpuQuotaUs, 2 * kvm.cpuPeriodUs);
    assert.equal(kvm.memoryBytes, (512 + QEMU_BASE_OVERHEAD_MIB) * MiB);
    assert.ok(kvm.pids >= 64 + 2, "room for QEMU's 64 I/O workers and the vCPU threads");
    // Under TCG the code buffer counts in full: QEMU fills it before it flushes.
    assert.equal(vmResourceLimits({ cpus: 1, memoryMiB: 256, accel: "tcg", tcgCodeBufferMiB: 0 }).overheadMiB, QEMU_BASE_OVERHEAD_MIB + QEMU_DEFAULT_TCG_CODE_BUFFER_MIB);
    assert.equal(vmResourceLimits({ cpus: 1, memoryMiB: 256, accel: "tcg", tcgCodeBufferMiB: 64 }).overheadMiB, QEMU_BASE_OVERHEAD_MIB + 64);
  });

  it("writes them as cgroup v1 and v2 files", () => {
    const limits = vmResourceLimits({ cpus: 3, memoryMiB: 256, accel: "kvm" });
    assert.deepEqual(limitFiles(2, "cpu", limits), [["cpu.max", "300000 100000"]]);
    assert.deepEqual(limitFiles(1, "cpu", limits), [
      ["cpu.cfs_period_us", "100000"],
      ["cpu.cfs_quota_us", "300000"],
    ]);
    assert.deepEqual(limitFiles(2, "memory", limits), [["memory.max", String(limits.memoryBytes)]]);
    assert.deepEqual(limitFiles(1, "memory", limits), [["memory.limit_in_bytes", String(limits.memoryBytes)]]);
    assert.deepEqual(limitFiles(1, "pids", limits), [["pids.max", String(limits.pids)]]);
  });
});

/** The limit files of `cgroup` as the kernel reads them back, by controller. */
function readBack(cgroup: VmCgroup): Record<string, string> {
  const values: Record<string, string> = {};
  for (const dir of cgroup.directories) {
    for (const file of ["cpu.max", "cpu.cfs_quota_us", "cpu.cfs_period_us", "memory.max", "memory.limit_in_bytes", "pids.max"]) {
      if (existsSync(join(dir, file))) values[file] = readFileSync(join(dir, file), "utf8").trim();
    }
  }
  return values;
}

/** Host cgroup (per /proc/<pid>/cgroup) of `pid` in the hierarchy of `controller` (v2: the unified one). */
function cgroupPathOf(pid: number, controller: string): string | undefined {
  const entries = parseProcCgroup(readFileSync(`/proc/${pid}/cgroup`, "utf8"));
  return (entries.find((e) => e.controllers.includes(controller)) ?? entries.find((e) => e.hierarchyId === 0))?.path;
}

describe("cgroups on this host", { skip: hostCgroups().available ? false : `no usable cgroups: ${hostCgroups().summary}` }, () => {
  const previousHome = process.env.CODECOURIER_HOME;
  let home: string;
  const children: ChildProcess[] = [];
  const sleeper = () => {
    const child = spawn("sleep", ["600"], { stdio: "ignore" });
    children.push(child);
    return child;
  };

  before(async () => {
    home = await isolatedDataDir("cccgroup-");
    process.env.CODECOURIER_HOME = home;
  });

  after(async () => {
    for (const child of children) child.kill("SIGKILL");
    if (previousHome === undefined) delete process.env.CODECOURIER_HOME;
    else process.env.CODECOURIER_HOME = previousHome;
    await rm(home, { recursive: true, force: true });
  });

  it("says which mechanism it found, and says so when turned off", () => {
    const host = hostCgroups();
    assert.ok(host.available);
    assert.match(host.summary, new RegExp(`^cgroup v${host.version}: .*cpu, memory`));
    process.env.CODECOURIER_CGROUPS = "off";
    try {
      const off = detectHostCgroups();
      assert.equal(off.available, false);
      assert.match(off.summary, /WITHOUT CPU and memory limits.*CODECOURIER_CGROUPS=off/);
    } finally {
      delete process.env.CODECOURIER_CGROUPS;
    }
  });

  it("limits a process: the kernel reads the limits back and lists it in the cgroup, in every controller", async () => {
    const limits = vmResourceLimits({ cpus: 1, memoryMiB: 256, accel: "tcg", tcgCodeBufferMiB: 64 });
    const cgroup = VmCgroup.create("vm-test00000001", limits);
    assert.equal(cgroup.name, `${vmCgroupPrefix()}vm-test00000001`);
    const expected =
      cgroup.version === 2
        ? { "cpu.max": "100000 100000", "memory.max": String((256 + QEMU_BASE_OVERHEAD_MIB + 64) * MiB) }
        : { "cpu.cfs_quota_us": "100000", "cpu.cfs_period_us": "100000", "memory.limit_in_bytes": String((256 + QEMU_BASE_OVERHEAD_MIB + 64) * MiB) };
    const host = hostCgroups();
    const pids = host.available && host.controllers.includes("pids") ? { "pids.max": String(limits.pids) } : {};
    assert.deepEqual(readBack(cgroup), { ...expected, ...pids });

    const child = sleeper();
    cgroup.join(child.pid!);
    assert.equal(cgroup.enforced, true);
    for (const controller of ["cpu", "memory"]) assert.ok(cgroupPathOf(child.pid!, controller)?.endsWith(`/${cgroup.name}`), `${controller}: ${cgroupPathOf(child.pid!, controller)}`);
    assert.deepEqual(cgroup.processes(), [child.pid]);
    assert.equal(cgroup.removeNow(), false, "a cgroup with a process in it cannot be removed");

    child.kill("SIGKILL");
    await new Promise((resolve) => child.once("exit", resolve));
    await cgroup.remove();
    for (const dir of cgroup.directories) assert.equal(existsSync(dir), false, `${dir} left behind`);
    assert.equal(cgroup.enforced, false);
  });

  it("removes a killed process's cgroup before the process is reaped (the exit handler's case)", () => {
    const cgroup = VmCgroup.create("vm-test00000002", vmResourceLimits({ cpus: 1, memoryMiB: 128, accel: "kvm" }));
    const child = sleeper();
    cgroup.join(child.pid!);
    // No await: the event loop cannot reap the child, as in process.on("exit").
    child.kill("SIGKILL");
    assert.equal(cgroup.removeBlocking(Date.now() + 2000), true);
    for (const dir of cgroup.directories) assert.equal(existsSync(dir), false);
  });

  it("removes stale cgroups of this data dir only: not live ones, not ones with a process, not another data dir's", () => {
    const host = hostCgroups();
    assert.ok(host.available);
    const parent = host.hierarchies[0]!.parent;
    const stale = join(parent, `${vmCgroupPrefix()}vm-stale0000001`);
    const foreign = join(parent, "codecourier-00000000-vm-foreign00001");
    // What a crashed engine leaves: an empty cgroup (its QEMU gone), and one whose QEMU still runs (to be adopted).
    const busy = join(parent, `${vmCgroupPrefix()}vm-busy00000001`);
    mkdirSync(stale);
    mkdirSync(foreign);
    mkdirSync(busy);
    const child = sleeper();
    joinCgroup(busy, child.pid!);
    // Empty, but a VM of this process is about to start in it.
    const live = VmCgroup.create("vm-live00000001", vmResourceLimits({ cpus: 1, memoryMiB: 128, accel: "kvm" }));
    try {
      assert.deepEqual(removeStaleVmCgroups(), [stale]);
      assert.ok(existsSync(foreign) && existsSync(busy) && live.directories.every(existsSync));
      assert.equal(existsSync(stale), false);
    } finally {
      rmdirSync(foreign);
      if (existsSync(stale)) rmdirSync(stale);
      child.kill("SIGKILL");
      const deadline = Date.now() + 2000;
      while (!removeCgroup(busy) && Date.now() < deadline);
      assert.equal(existsSync(busy), false);
      assert.ok(live.removeNow());
    }
  });
});
