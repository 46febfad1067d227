#!/bin/busybox sh
# shellcheck shell=dash disable=SC1091
# PID 1 of the test guest (busybox sh), in two stages.
#   stage 1 (from the initramfs): load the virtio/9p/overlay modules, mount the shared
#     Debian root and the project read-only under tmpfs-backed overlays (writes succeed
#     and vanish with the guest), then switch_root.
#   stage 2 (in the real root): mount the kernel's pseudo filesystems, run the command the
#     host left in the vmio share, store its output and exit code there, power off.
# The host side is tests/vm/guest.py; the layout of the vmio share is documented there.

bb=/bin/busybox
[ "${1:-}" = stage2 ] && bb=/run/vm/busybox
opts9p=trans=virtio,version=9p2000.L,msize=262144

say() { echo "vm-init: $*" >/dev/console; }

# Power off straight from init (no sysrq: it raced init and panicked the guest).
halt_guest() {
  $bb sync
  $bb poweroff -f
  $bb sleep 5
  exit 1
}

fail() {
  say "FAILED: $*"
  echo "VM-INIT-FAILED: $*" >/dev/console
  halt_guest
}

stage1() {
  $bb mkdir -p /proc /sys /dev /vmio /lower/root /lower/repo /rw /newroot
  $bb mount -t proc proc /proc
  $bb mount -t sysfs sysfs /sys
  $bb mount -t devtmpfs devtmpfs /dev
  # /modules.load lists the initramfs's modules, dependencies first (from modules.dep).
  for m in $($bb cat /modules.load); do
    $bb insmod "/modules/$m" || fail "insmod $m"
  done

  $bb mount -t 9p -o "$opts9p" vmio /vmio || fail "mount vmio share"
  . /vmio/config || fail "read /vmio/config"
  [ -n "${REPO:-}" ] || fail "REPO unset in /vmio/config"

  # cache=loose: the host does not change these trees while the guest runs, and it
  # makes Python's many stat()/open() calls far cheaper over 9p.
  $bb mount -t 9p -o "ro,$opts9p,cache=loose" rootfs /lower/root || fail "mount rootfs share"
  $bb mount -t tmpfs -o mode=0755 rw /rw
  $bb mkdir -p /rw/root/up /rw/root/work /rw/repo/up /rw/repo/work
  $bb mount -t overlay -o lowerdir=/lower/root,upperdir=/rw/root/up,workdir=/rw/root/work \
    root /newroot || fail "overlay on rootfs"

  $bb mount -t 9p -o "ro,$opts9p,cache=loose" repo /lower/repo || fail "mount repo share"
  $bb mkdir -p "/newroot$REPO"
  $bb mount -t overlay -o lowerdir=/lower/repo,upperdir=/rw/repo/up,workdir=/rw/repo/work \
    repo "/newroot$REPO" || fail "overlay on repo"

  # The kernel package's own module tree, so modprobe works for later tests.
  $bb mkdir -p /newroot/usr/lib/modules
  $bb mount -t 9p -o "ro,$opts9p,cache=loose" modules /newroot/usr/lib/modules ||
    fail "mount modules share"

  $bb mkdir -p /newroot/vmio /newroot/run/vm
  $bb mount --move /vmio /newroot/vmio
  $bb cp /bin/busybox /init /newroot/run/vm/
  $bb umount /proc /sys
  $bb mount --move /dev /newroot/dev
  exec $bb switch_root /newroot /run/vm/busybox sh /run/vm/init stage2
}

mount_pseudo() {
  $bb mount -t proc proc /proc
  $bb mount -t sysfs sysfs /sys
  $bb mkdir -p /dev/pts /dev/shm
  $bb mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
  $bb mount -t tmpfs -o mode=1777 shm /dev/shm
  $bb mount -t tracefs tracefs /sys/kernel/tracing || fail "mount tracefs"
  $bb mount -t debugfs debugfs /sys/kernel/debug || fail "mount debugfs"
  $bb mount -t bpf bpf /sys/fs/bpf || fail "mount bpffs"
  $bb mount -t cgroup2 cgroup2 /sys/fs/cgroup || fail "mount cgroup2"
  $bb chmod 1777 /tmp
}

stage2() {
  export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  export HOME=/root LANG=C.UTF-8 TERM=dumb
  mount_pseudo
  $bb hostname tcpaccept-guest
  $bb ip link set lo up || fail "lo up"
  . /vmio/config
  cd "$REPO" || fail "cd $REPO"
  say "running command"
  # The command is a bash script; /vmio/env holds the caller's extra exports.
  (. /vmio/env && exec /bin/bash /vmio/cmd) >/vmio/output 2>&1 </dev/null
  rc=$?
  echo "$rc" >/vmio/rc.tmp && $bb mv /vmio/rc.tmp /vmio/rc
  echo "VM-COMMAND-EXIT=$rc" >/dev/console
  halt_guest
}

if [ "${1:-}" = stage2 ]; then
  stage2
else
  stage1
fi
