import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { kernelCommandLine, qemuArgs } from "./machine.js";

const base = {
  memoryMiB: 512,
  cpus: 2,
  kernelPath: "/k/vmlinux",
  initramfsPath: "/k/initramfs.cpio",
  systemDiskPath: "/k/system.ext4",
  rootDiskPath: "/r/root.qcow2",
  qmpSocket: "/r/qmp.sock",
  agentSocket: "/r/agent.sock",
  consoleLog: "/r/console.log",
};

function valueAfter(args: string[], flag: string): string[] {
  return args.flatMap((a, i) => (a === flag ? [args[i + 1]!] : []));
}

describe("qemuArgs", () => {
  it("uses TCG with multi-threading and a TSC hint under tcg", () => {
    const args = qemuArgs({ ...base, accel: "tcg" });
    assert.deepEqual(valueAfter(args, "-accel"), ["tcg,thread=multi"]);
    assert.deepEqual(valueAfter(args, "-cpu"), ["max"]);
    assert.match(valueAfter(args, "-append")[0]!, /tsc_early_khz=\d+/);
  });

  it("uses KVM with host CPU minus arch-capabilities under kvm, without the TSC hint", () => {
    const args = qemuArgs({ ...base, accel: "kvm" });
    assert.deepEqual(valueAfter(args, "-accel"), ["kvm"]);
    assert.deepEqual(valueAfter(args, "-cpu"), ["host,-arch-capabilities"]);
    assert.doesNotMatch(valueAfter(args, "-append")[0]!, /tsc_early_khz/);
  });

  it("sizes the VM and sandboxes QEMU", () => {
    const args = qemuArgs({ ...base, accel: "tcg" });
    assert.deepEqual(valueAfter(args, "-m"), ["512M"]);
    assert.deepEqual(valueAfter(args, "-smp"), ["2"]);
    assert.match(valueAfter(args, "-sandbox")[0]!, /^on,.*spawn=deny/);
    assert.deepEqual(valueAfter(args, "-M"), ["microvm,pit=on,rtc=on,memory-backend=mem"]);
  });

  it("attaches the system disk read-only and the root overlay writable", () => {
    const drives = valueAfter(qemuArgs({ ...base, accel: "tcg" }), "-drive");
    assert.equal(drives.length, 2);
    assert.match(drives[0]!, /file=\/k\/system.ext4,format=raw,.*readonly=on/);
    assert.match(drives[1]!, /file=\/r\/root.qcow2,format=qcow2/);
    assert.doesNotMatch(drives[1]!, /readonly/);
  });

  it("leaves out disks and sockets for a bare floor boot", () => {
    const args = qemuArgs({ accel: "tcg", memoryMiB: 256, cpus: 1, kernelPath: "/k", initramfsPath: "/i", consoleLog: "/c" });
    assert.equal(valueAfter(args, "-drive").length, 0);
    assert.equal(valueAfter(args, "-qmp").length, 0);
    assert.ok(!args.includes("virtio-serial-device,max_ports=2"));
  });
});

describe("kernelCommandLine", () => {
  it("always has the serial console and appends extra arguments last", () => {
    const line = kernelCommandLine("kvm", ["cc.debug"]);
    assert.match(line, /^console=ttyS0 /);
    assert.match(line, / cc\.debug$/);
  });
});
