#!/bin/sh
# The hostile-guest case of tests/hostile_guest_testbed.rs, run inside the
# testbed with /testbed/files/hostile-virtio (tests/testbed/hostile-virtio.c)
# and the test-only guest kernel at /testbed/files/hostile-vmlinux
# (images/kernel/build.sh --variant hostile). Output format: cases-lib.sh.

. "$(dirname "$0")/cases-lib.sh"

# The image: the static attacker alone.
mkdir -p /tmp/hostile-root
cp /testbed/files/hostile-virtio /tmp/hostile-root/
tar -C /tmp/hostile-root -cf /tmp/hostile.tar hostile-virtio
case_ import duet image import --name hostile /tmp/hostile.tar

# The guest steers the scratch disk's DMA into its own avail ring and then
# writes QueueNotify forever; duet must still stop the VM on its timeout
# (60 s: boot plus 8192 steering writes take 20-30 s in a slow testbed;
# tests/hostile_guest_testbed.rs checks the same number).
hostile() {
    start=$(date +%s)
    DUET_KERNEL=/testbed/files/hostile-vmlinux \
        duet run --isolation vm --timeout 60 hostile -- /hostile-virtio
    rc=$?
    echo "duet: rc $rc after $(( $(date +%s) - start )) s"
    return $rc
}
case_ hostile hostile
case_ leftovers sh -c 'ls /tmp/duet/instances | wc -l'
