// The agent runs from the system disk with its own loader and libraries, so it must work in a root filesystem
// that has neither Node nor glibc. This boots a real VM on a busybox-only root disk to prove it.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { copyFile, mkdir, mkdtemp, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runTool } from "../util/run-tool.js";
import { makeExt4Image } from "./ext4.js";
import { ensureGuestImage, type GuestImage } from "./guest-image.js";
import { ROOT_DISK_LABEL, SYSTEM_MOUNT } from "./guest-scripts.js";
import { Vm } from "../vmm/vm.js";

async function buildBusyboxRoot(dir: string): Promise<string> {
  const root = join(dir, "root");
  for (const sub of ["bin", "etc", "root", "tmp", "dev", "proc", "sys", SYSTEM_MOUNT.slice(1)]) {
    await mkdir(join(root, sub), { recursive: true });
  }
  await copyFile("/bin/busybox", join(root, "bin/busybox"));
  for (const applet of ["sh", "echo", "ls", "cat", "id", "uname"]) await symlink("busybox", join(root, "bin", applet));
  await writeFile(join(root, "etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n");
  const raw = join(dir, "root.ext4");
  await makeExt4Image({ sourceDir: root, outFile: raw, label: ROOT_DISK_LABEL, journal: false });
  const qcow2 = join(dir, "root.qcow2");
  await runTool("qemu-img", ["convert", "-q", "-f", "raw", "-O", "qcow2", raw, qcow2]);
  return qcow2;
}

describe("a root filesystem without Node or glibc", () => {
  let dir: string;
  let vm: Vm;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "cc-foreign-root-"));
    const image: GuestImage = { ...(await ensureGuestImage()), rootDiskPath: await buildBusyboxRoot(dir) };
    vm = await Vm.boot({ image, memoryMiB: 256 });
  });

  after(async () => {
    await vm?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it("still runs the agent, and commands run in that root", async () => {
    const result = await vm.agent.run({ shell: "echo hello from busybox; ls /lib 2>&1; command -v node || echo no-node" });
    assert.equal(result.exitCode, 0, result.stderr.toString());
    const lines = result.stdout.toString().trim().split("\n");
    assert.equal(lines[0], "hello from busybox");
    assert.match(lines[1]!, /No such file or directory/, "the root has no /lib, so no glibc");
    assert.equal(lines.at(-1), "no-node");
  });

  it("serves files and exec by argv there too", async () => {
    await vm.agent.writeFile("/root/note.txt", "written by the host\n");
    const result = await vm.agent.run({ argv: ["cat", "/root/note.txt"] });
    assert.equal(result.stdout.toString(), "written by the host\n");
  });
});
