#!/bin/sh
# Snapshots of microVMs (issue 13), for tests/snapshot_testbed.rs: a VM
# counting in a shell variable is snapshotted while it runs; clones restored
# from the snapshot count on from there, see the file it wrote before, and
# keep their own writes; bad snapshots are refused; a killed restore leaves
# nothing after gc. Output format: see cases-lib.sh.

. "$(dirname "$0")/cases-lib.sh"

# Until `duet logs NAME` has a line matching $2 (a guest boots in seconds here).
wait_log() {
    i=0
    while [ $i -lt 240 ]; do
        duet logs "$1" 2>/dev/null | grep -q "$2" && return 0
        i=$((i + 1)); sleep 0.5
    done
    echo "no line matching '$2' in the logs of $1:"; duet logs "$1"; return 1
}
# The last count instance $1 printed.
last_count() { duet logs "$1" | sed -n 's/^count //p' | tail -n 1; }
# The first count instance $1 printed.
first_count() { duet logs "$1" | sed -n 's/^count //p' | head -n 1; }

COUNT='echo written-before-the-snapshot > /data.txt; i=0; while :; do i=$((i + 1)); echo "count $i"; sleep 0.2; done'

case_ src_up duet run -d --name snapsrc --isolation vm --network none busybox -- sh -c "$COUNT"
case_ src_counting wait_log snapsrc '^count 5$'
case_ snapshot duet snapshot snapsrc /tmp/snap1
case_ snapshot_again_refused duet snapshot snapsrc /tmp/snap1
SNAP_COUNT=$(last_count snapsrc)
case_ src_goes_on sh -c "sleep 2; n=\$($DUET_EXE logs snapsrc | sed -n 's/^count //p' | tail -n 1); echo at-snapshot=$SNAP_COUNT now=\$n; [ \"\$n\" -gt $SNAP_COUNT ]"
case_ src_rm duet rm -f snapsrc

case_ a_up duet run -d --name clonea --from-snapshot /tmp/snap1
case_ a_counting sh -c "n=0; while [ \$n -lt 40 ]; do c=\$($DUET_EXE logs clonea | sed -n 's/^count //p' | head -n 1); [ -n \"\$c\" ] && break; n=\$((n + 1)); sleep 0.5; done; last=\$($DUET_EXE logs clonea | sed -n 's/^count //p' | tail -n 1); echo first=\$c last=\$last snapshot=$SNAP_COUNT"
case_ a_file duet exec clonea cat /data.txt
case_ a_writes duet exec clonea sh -c 'echo mine-is-a > /mine; cat /mine'
case_ b_up duet run -d --name cloneb --from-snapshot /tmp/snap1
case_ b_counting wait_log cloneb '^count'
case_ b_first sh -c "echo first=\$($DUET_EXE logs cloneb | sed -n 's/^count //p' | head -n 1) snapshot=$SNAP_COUNT"
case_ b_sees_not_a duet exec cloneb sh -c 'cat /data.txt; ls /mine 2>&1; true'
case_ a_still_has_its_own duet exec clonea cat /mine
case_ clones_rm duet rm -f clonea cloneb

# A workload with the network refuses a snapshot (the clone would keep its address).
case_ net_up duet run -d --name snapnet --isolation vm --network bridge busybox -- sleep 600
case_ net_refused duet snapshot snapnet /tmp/snapnet
case_ net_nothing_written sh -c 'ls -a /tmp | grep -c snapnet; true'
case_ net_rm duet rm -f snapnet

# kill -9 of a restoring instance's monitor, then gc: nothing left.
case_ k9_up duet run -d --name clonek --from-snapshot /tmp/snap1
case_ k9 sh -c 'for f in /tmp/duet/instances/clonek-*/meta.json; do pid=$(sed -n "s/.*\"owner_pid\": *\([0-9]*\).*/\1/p" "$f"); done; kill -9 "$pid"; sleep 1; '"$DUET_EXE"' gc >/dev/null; echo instances=$(ls /tmp/duet/instances | wc -l) procs=$(n=0; for c in /proc/[0-9]*/comm; do [ "$(cat $c 2>/dev/null)" = duet ] && n=$((n + 1)); done; echo $n) mounts=$(grep -c /tmp/duet /proc/mounts)'

# Warm start (--warm): the first run boots the image's template and
# snapshots it at duet-init's wait; later runs restore it and hand over
# their own workload, hostname, env, RNG seed and clock.
WARM='echo warm-hi; hostname; od -An -N16 -tx1 /dev/urandom | tr -d " "; echo "time=$(date +%s)"; echo "env=$FOO"; exit 7'
case_ warm_first duet run --warm --hostname warm1 -e FOO=one --report json busybox -- sh -c "$WARM"
case_ warm_second duet run --warm --hostname warm2 -e FOO=two --report json busybox -- sh -c "$WARM"
case_ warm_host_time sh -c 'echo "time=$(date +%s)"'
case_ warm_templates_one sh -c 'ls /tmp/duet/templates | grep -c "[.]snap$"'
case_ warm_other_memory duet run --warm --memory 192 --report json busybox -- echo other-memory
case_ warm_templates_two sh -c 'ls /tmp/duet/templates | grep -c "[.]snap$"'
case_ warm_detached_up duet run -d --warm --name warmd busybox -- sh -c 'echo up; sleep 600'
case_ warm_detached_log wait_log warmd '^up$'
case_ warm_exec duet exec warmd hostname
case_ warm_rm duet rm -f warmd
case_ warm_bridge_refused duet run --warm --network bridge busybox -- true
case_ warm_container_refused duet run --warm --isolation container busybox -- true
cp "$DUET_KERNEL" /tmp/other-vmlinux
case_ warm_other_kernel env DUET_KERNEL=/tmp/other-vmlinux "$DUET_EXE" run --warm --report json busybox -- echo other-kernel
rm -f /tmp/other-vmlinux
case_ warm_gc_removes_stale sh -c "$DUET_EXE gc; ls /tmp/duet/templates | grep -c '[.]snap\$'"
case_ warm_left sh -c 'echo instances=$(ls /tmp/duet/instances | wc -l) partial=$(ls -a /tmp/duet/templates | grep -c tmp)'

# Bad snapshots, last: the tmpfs holds no full copy of a snapshot (busybox
# cp does not keep holes), so /tmp/snap1 itself is damaged, step by step.
cp "$DUET_KERNEL" /tmp/other-vmlinux
case_ other_kernel env DUET_KERNEL=/tmp/other-vmlinux "$DUET_EXE" run --from-snapshot /tmp/snap1
rm -f /tmp/other-vmlinux
case_ no_overrides duet run --from-snapshot /tmp/snap1 --memory 64
case_ container_refused duet snapshot nosuch /tmp/snapx
case_ too_short duet run --from-snapshot /etc/passwd
case_ not_a_snapshot duet run --from-snapshot "$DUET_KERNEL"
size=$(stat -c %s /tmp/snap1)
printf 'X' | dd of=/tmp/snap1 bs=1 seek=$((size - 5)) conv=notrunc 2>/dev/null
case_ corrupted duet run --from-snapshot /tmp/snap1
truncate -s $((size / 2)) /tmp/snap1
case_ truncated duet run --from-snapshot /tmp/snap1
case_ left_after_refusals sh -c 'echo instances=$(ls /tmp/duet/instances | wc -l)'
rm -f /tmp/snap1

# Removing the image removes its templates.
case_ warm_image_rm duet image rm busybox
case_ warm_none_left sh -c 'echo templates=$(ls /tmp/duet/templates | grep -c "[.]snap$")'
