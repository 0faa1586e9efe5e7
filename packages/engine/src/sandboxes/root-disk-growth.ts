import type { AgentClient } from "../agent-client/index.js";
import { GUEST_BUSYBOX, ROOT_DISK_LABEL } from "../images/guest-scripts.js";
import type { Vm } from "../vmm/vm.js";
import { SandboxStateError } from "./errors.js";

/** How long the guest kernel may take to see the disk's new capacity after QEMU announced it. */
const CAPACITY_WAIT_MS = 10_000;

/**
 * Grows a running sandbox's root disk to `bytes`: QEMU grows the top qcow2 layer (QMP block_resize), which tells
 * the guest through a virtio config change; once the guest's kernel sees the new capacity, resize2fs grows the
 * mounted ext4 online. The virtual size is then what bounds the sandbox's disk layers on the host. What the guest
 * answers is checked, never trusted: a guest that lies only fails its own create.
 */
export async function growRootDisk(vm: Vm, bytes: number): Promise<void> {
  await vm.qmp.execute("block_resize", { device: "root", size: bytes });
  const device = await rootDevice(vm.agent);
  const sizeFile = `/sys/class/block/${device.slice("/dev/".length)}/size`;
  const deadline = Date.now() + CAPACITY_WAIT_MS;
  for (;;) {
    const sectors = Number((await vm.agent.readFileBuffer(sizeFile, { maxBytes: 64 })).toString().trim());
    if (sectors * 512 >= bytes) break;
    if (Date.now() > deadline) throw new SandboxStateError(`the guest did not see its root disk grow to ${bytes} bytes`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  const resized = await vm.agent.run({ argv: ["/sbin/resize2fs", device] }, { maxOutputBytes: 64 * 1024 });
  if (resized.exitCode !== 0) {
    throw new SandboxStateError(`resize2fs in the guest failed (exit ${resized.exitCode}): ${resized.stderr.toString("utf8").slice(0, 500)}`);
  }
}

async function rootDevice(agent: AgentClient): Promise<string> {
  const found = await agent.run({ argv: [GUEST_BUSYBOX, "findfs", `LABEL=${ROOT_DISK_LABEL}`] }, { maxOutputBytes: 1024 });
  const device = found.stdout.toString("utf8").trim();
  if (found.exitCode !== 0 || !/^\/dev\/[a-z0-9]{1,32}$/.test(device)) throw new SandboxStateError("the guest did not name its root disk's device");
  return device;
}
