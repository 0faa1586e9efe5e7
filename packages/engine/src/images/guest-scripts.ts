/**
 * Shell scripts that run inside the guest before our agent does. They are part of the image recipe:
 * changing them changes the recipe hash and rebuilds the image.
 */

/** Filesystem labels by which the initramfs finds its disks (device order is not relied upon). */
export const SYSTEM_DISK_LABEL = "cc-system";
export const ROOT_DISK_LABEL = "cc-root";

/** The guest's network configuration, the same in every sandbox (see the engine's network/netns.ts). */
export const GUEST_NETWORK = { address: "10.0.2.15", prefixLength: 24, gateway: "10.0.2.2" } as const;

/** Where the system disk is mounted inside the guest's root filesystem. */
export const SYSTEM_MOUNT = "/.codecourier";
/** The system disk's static busybox: present in every guest, whatever its root filesystem holds. */
export const GUEST_BUSYBOX = `${SYSTEM_MOUNT}/bin/busybox`;

/**
 * /init of the initramfs: load the virtio and ext4 drivers, mount the read-only system disk and the
 * writable root disk, and switch into the root with our stage-2 script as PID 1. No systemd, no udev.
 */
export function initramfsInit(moduleNames: readonly string[]): string {
  return `#!/bin/sh
export PATH=/bin
fail() { echo "cc-init: $*"; poweroff -f; }
mount -t devtmpfs dev /dev
mount -t proc proc /proc
mount -t sysfs sys /sys
for m in ${moduleNames.join(" ")}; do insmod /modules/$m.ko || echo "cc-init: insmod $m failed"; done
sys=$(findfs LABEL=${SYSTEM_DISK_LABEL}) || fail "system disk (label ${SYSTEM_DISK_LABEL}) not found"
root=$(findfs LABEL=${ROOT_DISK_LABEL}) || fail "root disk (label ${ROOT_DISK_LABEL}) not found"
mkdir -p /sysdisk /newroot
mount -t ext4 -o ro "$sys" /sysdisk || fail "cannot mount system disk $sys"
mount -t ext4 -o rw,noatime "$root" /newroot || fail "cannot mount root disk $root"
mkdir -p /newroot${SYSTEM_MOUNT} /newroot/dev /newroot/proc /newroot/sys
mount --move /sysdisk /newroot${SYSTEM_MOUNT}
mount --move /dev /newroot/dev
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
exec switch_root /newroot ${SYSTEM_MOUNT}/bin/busybox sh ${SYSTEM_MOUNT}/stage2
`;
}

/**
 * Stage 2, PID 1 inside the guest's root filesystem. It only uses the system disk's busybox, so it works in
 * any root filesystem. It keeps the agent running and, as PID 1, reaps orphaned processes: busybox ash's
 * \`wait\` collects any child with waitpid(-1), orphans included, so nothing stays a zombie.
 */
export function stage2Script(agentCommand: string): string {
  return `export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
B=${SYSTEM_MOUNT}/bin/busybox
$B mkdir -p /dev/pts /dev/shm /run /tmp
$B mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
$B mount -t tmpfs -o mode=1777 tmpfs /dev/shm
$B mount -t tmpfs -o mode=755 tmpfs /run
$B hostname sandbox
$B ip link set lo up 2>/dev/null
# The network every sandbox sees: the same address in every clone; the host side makes each one unique
# (src/network/netns.ts). Without a network backend the device is there but nothing answers.
$B ip link set eth0 up 2>/dev/null && $B ip addr add ${GUEST_NETWORK.address}/${GUEST_NETWORK.prefixLength} dev eth0 && $B ip route add default via ${GUEST_NETWORK.gateway}
$B rm -f /etc/resolv.conf && echo "nameserver ${GUEST_NETWORK.gateway}" > /etc/resolv.conf
# The agent's keeper. -1000 keeps the OOM killer off the agent and the helpers it starts (they inherit it);
# guest-spawner gives every command 0 again. A dead agent is started again after a delay (in tenths of a second)
# that starts at 0.2 s and doubles, up to 5 s, while it keeps dying within 30 s of its start.
(echo -1000 > /proc/self/oom_score_adj
delay=2
while :; do
  read started rest < /proc/uptime
  ${agentCommand}
  status=$?
  read ended rest < /proc/uptime
  if [ $(( \${ended%.*} - \${started%.*} )) -ge 30 ]; then delay=2; fi
  echo "cc-init: agent exited with $status, restarting in \${delay}00 ms"
  $B sleep $(( delay / 10 )).$(( delay % 10 ))
  delay=$(( delay * 2 > 50 ? 50 : delay * 2 ))
done) &
while :; do wait; done
`;
}
