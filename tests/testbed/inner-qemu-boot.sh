#!/bin/sh
# Runs INSIDE the testbed: boots the guest kernel with QEMU microvm on the
# testbed's /dev/kvm and reports when the guest's init ran. A reference
# point for duet's own VMM (same kernel, same initramfs, same machine).
#
#   tests/testbed/run --qemu --file tests/testbed/inner-qemu-boot.sh -- \
#       inner-qemu-boot.sh [-n RUNS] [-t TIMEOUT] [-a APPEND] [-q QEMU_ARGS] [-v] [KERNEL]
#
# KERNEL defaults to $DUET_KERNEL (the vmlinux, booted through PVH). The
# initramfs holds only busybox and an /init that prints
#   INNER-INIT uptime=<guest seconds> ...
# and resets the guest (reboot=k, the i8042 path duet uses too).
# -v prints each run's guest console. Prints one line per run and exits 1 if any run did not reach init.
set -eu

runs=1
timeout_s=60
append="console=ttyS0 reboot=k panic=-1 rdinit=/init"
# microvm has no i8042 of its own; without one the guest's reboot=k path
# polls the missing controller's status port ~650,000 times (each an exit
# to QEMU) before it falls back to a triple fault: 30+ s in the testbed.
qemu_extra="-device i8042"
verbose=0
while [ $# -gt 0 ]; do
    case "$1" in
        -n) runs="$2"; shift 2 ;;
        -t) timeout_s="$2"; shift 2 ;;
        -a) append="$append $2"; shift 2 ;;
        -q) qemu_extra="$2"; shift 2 ;;
        -v) verbose=1; shift ;;
        *) break ;;
    esac
done
kernel="${1:-${DUET_KERNEL:-}}"
[ -n "$kernel" ] && [ -f "$kernel" ] || { echo "inner-qemu-boot: no guest kernel (give a path or set DUET_KERNEL)" >&2; exit 1; }
command -v qemu-system-x86_64 >/dev/null || { echo "inner-qemu-boot: qemu-system-x86_64 missing (tests/testbed/run --qemu packs it)" >&2; exit 1; }

work=/tmp/inner-qemu-boot
rm -rf "$work"
mkdir -p "$work/root/bin" "$work/root/proc" "$work/root/dev"
cp /bin/busybox "$work/root/bin/busybox"
ln -s busybox "$work/root/bin/sh"
cat > "$work/root/init" <<'EOF'
#!/bin/sh
/bin/busybox mount -t proc proc /proc
read up _ </proc/uptime
echo "INNER-INIT uptime=$up kernel=$(/bin/busybox uname -r) cpus=$(/bin/busybox grep -c ^processor /proc/cpuinfo)"
/bin/busybox reboot -f
EOF
chmod 755 "$work/root/init"
(cd "$work/root" && find . | cpio -o -H newc -R 0:0 2>/dev/null | gzip) > "$work/initrd.gz"

uptime_now() { read -r u _ </proc/uptime; echo "$u"; }

failed=0
i=1
while [ "$i" -le "$runs" ]; do
    t0=$(uptime_now)
    rc=0
    timeout "$timeout_s" qemu-system-x86_64 -M microvm -enable-kvm -cpu host -smp 1 -m 256 \
        -nodefaults -no-user-config -nographic -serial stdio -no-reboot \
        $qemu_extra -kernel "$kernel" -initrd "$work/initrd.gz" -append "$append" \
        </dev/null >"$work/console.$i" 2>&1 || rc=$?
    t1=$(uptime_now)
    if [ "$verbose" = 1 ]; then tr -d '\r' <"$work/console.$i" | sed 's/^/  | /'; fi
    wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
    line=$(grep -a 'INNER-INIT' "$work/console.$i" | tail -n 1 | tr -d '\r')
    if [ -n "$line" ]; then
        echo "inner-qemu-boot: run $i: ${line#*INNER-INIT }, qemu wall ${wall} s (exit $rc)"
    else
        echo "inner-qemu-boot: run $i: guest did not reach init (qemu exit $rc, wall ${wall} s); last console lines:"
        tail -n 20 "$work/console.$i" | sed 's/^/  | /'
        failed=1
    fi
    i=$((i + 1))
done
exit "$failed"
