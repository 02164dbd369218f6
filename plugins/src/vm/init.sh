#!/bin/busybox sh
# The guest's init (the VM runner's initramfs): loads the virtio and 9p modules, mounts the
# shares the plugin's helper gave QEMU, builds the addon's root (the host sandbox's view: /usr
# and /etc read-only, the run's directories read-write at /mnt), runs the addon as the helper's
# uid in a control group of its own (pids.max, memory.max), reports how it ended on the `io`
# share and powers off. Nothing of the addon outlives it: the guest ends with it.
/bin/busybox --install -s /bin
export PATH=/bin
fail() {
  echo "vm init: $*" >&2
  [ -d /io ] && echo "init-failed $*" 1<>/io/status
  poweroff -f
}
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules); do
  insmod "/lib/modules/$m.ko" || fail "cannot load module $m"
done
o=trans=virtio,version=9p2000.L,msize=262144,cache=none,nosuid,nodev
mount -t 9p -o "$o" io /io || fail "cannot mount the io share"
# What to run: addon_uid, addon_pids, addon_memory, addon_net, addon_nix, addon_tmpfs and
# addon_start (the helper's file).
. /io/run || fail "cannot read /io/run"
mount -t tmpfs -o mode=755 root /root || fail "cannot make the root"
mkdir -p /root/usr /root/etc /root/mnt/work /root/mnt/output /root/mnt/cache /root/mnt/home \
  /root/tmp /root/var/tmp /root/proc /root/dev /root/sys
mount -t 9p -o "$o,ro" usr /root/usr || fail "cannot mount /usr"
mount -t 9p -o "$o,ro" etc /root/etc || fail "cannot mount /etc"
for d in work output cache home; do
  mount -t 9p -o "$o" "$d" "/root/mnt/$d" || fail "cannot mount /mnt/$d"
done
if [ "$addon_nix" = 1 ]; then
  mkdir -p /root/nix/store
  mount -t 9p -o "$o,ro" nix /root/nix/store || fail "cannot mount /nix/store"
fi
for l in bin sbin lib lib32 lib64 libx32; do
  [ -e "/root/usr/$l" ] && ln -s "usr/$l" "/root/$l"
done
mount -t proc proc /root/proc
# A minimal /dev, as the host sandbox gives (not the guest's every device).
mount -t tmpfs -o mode=755,nosuid dev /root/dev
mknod -m 666 /root/dev/null c 1 3
mknod -m 666 /root/dev/zero c 1 5
mknod -m 666 /root/dev/full c 1 7
mknod -m 666 /root/dev/random c 1 8
mknod -m 666 /root/dev/urandom c 1 9
mknod -m 666 /root/dev/tty c 5 0
mkdir -p /root/dev/pts /root/dev/shm
mount -t tmpfs -o "$addon_tmpfs,nosuid,nodev" shm /root/dev/shm
ln -s /proc/self/fd /root/dev/fd
ln -s /proc/self/fd/0 /root/dev/stdin
ln -s /proc/self/fd/1 /root/dev/stdout
ln -s /proc/self/fd/2 /root/dev/stderr
# Bounded as the host sandbox bounds its own (by the run's output size and entries).
mount -t tmpfs -o "$addon_tmpfs" tmp /root/tmp
mount -t tmpfs -o "$addon_tmpfs" vartmp /root/var/tmp
mkdir -p /root/.addon-helper
mount -t 9p -o "$o,ro" helper /root/.addon-helper || fail "cannot mount the helper"
# The memory limit is the control group's: allocations succeed and its OOM killer ends them, as
# on the host (the guest's own heuristic would refuse a large mapping first).
echo 1 >/proc/sys/vm/overcommit_memory
ip link set lo up
if [ "$addon_net" = 1 ]; then
  ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2 \
    || fail "cannot configure the network"
fi
mkdir -p /sys/fs/cgroup
mount -t cgroup2 cgroup /sys/fs/cgroup || fail "cannot mount cgroup2"
echo "+pids +memory" >/sys/fs/cgroup/cgroup.subtree_control
g=/sys/fs/cgroup/addon
mkdir "$g" || fail "cannot make the addon's group"
[ -n "$addon_pids" ] && echo "$addon_pids" >"$g/pids.max"
[ -n "$addon_memory" ] && echo "$addon_memory" >"$g/memory.max"
echo 1 >"$g/memory.oom.group"
(
  echo 0 >"$g/cgroup.procs" || exit 125
  addon_start
) </dev/null >>/io/stdout 2>>/io/stderr &
child=$!
# A refused fork ends the run at its process limit, as the host's envelope does.
# A stop with grace (the helper's `stop` on the share) sends SIGTERM to the addon's processes.
stopping=
while kill -0 "$child" 2>/dev/null; do
  refused=$(sed -n 's/^max //p' "$g/pids.events")
  if [ "${refused:-0}" != 0 ]; then
    echo 1 >"$g/cgroup.kill"
    break
  fi
  if [ -z "$stopping" ] && [ -e /io/stop ]; then
    stopping=1
    for p in $(cat "$g/cgroup.procs"); do kill -TERM "$p" 2>/dev/null; done
  fi
  sleep 0.05
done
wait "$child"
code=$?
# Whatever the addon left running goes now.
echo 1 >"$g/cgroup.kill"
oom=$(sed -n 's/^oom_kill //p' "$g/memory.events")
pids=$(sed -n 's/^max //p' "$g/pids.events")
# In place, in the room the helper kept (the addon may have filled the rest of its /tmp).
echo "code=$code oom=${oom:-0} pids=${pids:-0}" 1<>/io/status
sync
poweroff -f
