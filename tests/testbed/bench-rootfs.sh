#!/bin/sh
# Boot-to-ready of a microVM whose root is on virtio-blk layer disks (the
# default) against the initramfs root (DUET_VM_ROOTFS=initramfs), alternating,
# every cache warm (issue 4, "Speed": disks within 1.1x of the initramfs).
# A benchmark, not a test: rerun it and read the ratio.
#
#   tests/testbed/run --file tests/testbed/bench-rootfs.sh -- sh /testbed/files/bench-rootfs.sh [RUNS]
set -eu
runs=${1:-10}
# Warm every cache (layer images, scratch template, initramfs parts).
for mode in disks initramfs; do
    DUET_VM_ROOTFS=$mode duet run --isolation vm busybox -- true
done
i=0
while [ "$i" -lt "$runs" ]; do
    for mode in disks initramfs; do
        out=$(DUET_VM_ROOTFS=$mode duet run --isolation vm --timings busybox -- true 2>&1)
        echo "$mode $(echo "$out" | awk '$1 == "ready" { print $2 }') $(echo "$out" | awk '$1 == "vm_exits.total:" { print $2 }')"
    done
    i=$((i + 1))
done | awk '
    { ms[$1, ++n[$1]] = $2; ex[$1] = $3 }
    END {
        for (m in n) {
            # insertion sort for the median
            for (i = 1; i <= n[m]; i++) v[i] = ms[m, i]
            for (i = 2; i <= n[m]; i++) { x = v[i]; j = i - 1; while (j > 0 && v[j] > x) { v[j + 1] = v[j]; j-- } v[j + 1] = x }
            med[m] = (n[m] % 2) ? v[(n[m] + 1) / 2] : (v[n[m] / 2] + v[n[m] / 2 + 1]) / 2
            printf "%-10s boot to ready median %8.1f ms over %d runs (vm exits %s)\n", m, med[m], n[m], ex[m]
        }
        if (med["initramfs"] > 0) printf "disks / initramfs = %.3f\n", med["disks"] / med["initramfs"]
    }'
