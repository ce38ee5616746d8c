#!/bin/sh
# PID 1 of the testbed's outer Linux (runs under QEMU TCG with emulated SVM).
# Packed as /init by tests/testbed/run. It loads kvm-amd, runs the command
# in /testbed/cmd.sh and reports on the serial console:
#   DUET-TESTBED-BEGIN uptime=<s>     the command starts (output follows)
#   DUET-TESTBED-EXIT=<n>             the command's exit status
#   DUET-TESTBED-END uptime=<s>       about to power off
#   DUET-TESTBED-ERROR=<message>      the testbed itself failed
# then powers the machine off (QEMU runs with -no-reboot, so a reboot or a
# panic ends it too).

PATH=/testbed/files:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH

halt_now() {
    # Let the UART drain (busybox stty applies settings with TCSADRAIN).
    stty -onlcr 2>/dev/null
    poweroff -f
    reboot -f
}

fail() {
    echo "DUET-TESTBED-ERROR=$*"
    halt_now
}

# pivot_root(2) refuses to move the initramfs (rootfs) itself, and container
# runtimes (duet's, runc) pivot_root into their container's root: move the
# whole initramfs onto a tmpfs first, as a distribution's initramfs does.
if [ ! -e /.testbed-tmpfs-root ]; then
    mkdir -p /newroot
    mount -t tmpfs -o mode=0755 tmpfs /newroot || fail "mount tmpfs for the root"
    for e in /* /.[!.]*; do
        case "$e" in /newroot|/proc|/sys|/dev|'/.[!.]*') continue ;; esac
        cp -a "$e" /newroot/ || fail "copy $e to the tmpfs root"
    done
    mkdir -p /newroot/proc /newroot/sys /newroot/dev
    touch /newroot/.testbed-tmpfs-root
    exec switch_root /newroot /init
fi

mount -t proc proc /proc || fail "mount /proc"
mount -t sysfs sysfs /sys || fail "mount /sys"
mount -t devtmpfs devtmpfs /dev || fail "mount devtmpfs on /dev"
mkdir -p /dev/pts /dev/shm /tmp /run
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp || fail "mount tmpfs on /tmp"
mount -t tmpfs tmpfs /run
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
ip link set lo up 2>/dev/null
hostname testbed

for m in $(cat /lib/modules/testbed/order); do
    out=$(insmod "/lib/modules/testbed/$m.ko" 2>&1) || fail "insmod $m.ko: $out"
done
if [ ! -c /dev/kvm ]; then
    fail "/dev/kvm missing after loading kvm-amd (svm in /proc/cpuinfo: $(grep -c -w svm /proc/cpuinfo))"
fi

export HOME=/root
export XDG_CACHE_HOME=/root/.cache
export DUET_ROOT=/tmp/duet
export DUET_TESTBED=1
# This machine's CPU is QEMU's TCG: a restored guest needs its TR marked
# available for user-space port I/O (see TCG_TSS_QUIRK_ENV in
# vmm/src/snapshot/vcpu_state.rs); hardware KVM never sets this.
export DUET_TCG_TSS_QUIRK=1
export TERM=dumb
mkdir -p "$DUET_ROOT" "$HOME"
# Instances get no network unless a case asks (for every state root the
# cases use: the machine's file).
mkdir -p /etc/duet
printf 'default = "none"\n' > /etc/duet/network.toml
if [ -d "$XDG_CACHE_HOME/duet/kernel/current" ]; then
    export DUET_KERNEL="$XDG_CACHE_HOME/duet/kernel/current/vmlinux"
fi
if [ -x /usr/local/bin/duet-init ]; then
    export DUET_INIT=/usr/local/bin/duet-init
fi
[ -f /testbed/env ] && . /testbed/env

# Kernel messages stay in dmesg (printed after the command, for the log)
# instead of interleaving with the command's output.
dmesg -n 1
dmesg_lines=$(dmesg | wc -l)
stty -onlcr 2>/dev/null

cd "$HOME"
read -r up _ </proc/uptime
echo "DUET-TESTBED-BEGIN uptime=$up"
sh /testbed/cmd.sh </dev/null
rc=$?
stty -onlcr 2>/dev/null
echo "DUET-TESTBED-EXIT=$rc"
echo "DUET-TESTBED-DMESG (kernel messages during the command)"
dmesg | tail -n +"$((dmesg_lines + 1))"
read -r up _ </proc/uptime
echo "DUET-TESTBED-END uptime=$up"
halt_now
