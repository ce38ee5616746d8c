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
# The snapshot's count lies between the last count logged before it and
# the last logged right after it.
BEFORE_COUNT=$(last_count snapsrc)
case_ snapshot duet snapshot snapsrc /tmp/snap1
SNAP_COUNT=$(last_count snapsrc)
case_ snapshot_again_refused duet snapshot snapsrc /tmp/snap1
case_ src_goes_on sh -c "sleep 2; n=\$($DUET_EXE logs snapsrc | sed -n 's/^count //p' | tail -n 1); echo at-snapshot=$SNAP_COUNT now=\$n; [ \"\$n\" -gt $SNAP_COUNT ]"
case_ src_rm duet rm -f snapsrc

case_ a_up duet run -d --name clonea --from-snapshot /tmp/snap1
case_ a_counting sh -c "n=0; while [ \$n -lt 40 ]; do c=\$($DUET_EXE logs clonea | sed -n 's/^count //p' | head -n 1); [ -n \"\$c\" ] && break; n=\$((n + 1)); sleep 0.5; done; last=\$($DUET_EXE logs clonea | sed -n 's/^count //p' | tail -n 1); echo first=\$c last=\$last before=$BEFORE_COUNT after=$SNAP_COUNT"
case_ a_file duet exec clonea cat /data.txt
case_ a_writes duet exec clonea sh -c 'echo mine-is-a > /mine; cat /mine'
case_ b_up duet run -d --name cloneb --from-snapshot /tmp/snap1
case_ b_counting wait_log cloneb '^count'
case_ b_first sh -c "echo first=\$($DUET_EXE logs cloneb | sed -n 's/^count //p' | head -n 1) snapshot=$SNAP_COUNT"
case_ b_sees_not_a duet exec cloneb sh -c 'cat /data.txt; ls /mine 2>&1; true'
case_ a_still_has_its_own duet exec clonea cat /mine
case_ clones_rm duet rm -f clonea cloneb

# A VM on duet's bridge: clones of its snapshot each get a MAC and an
# address of their own (their guest agent is told them at restore), serve
# what the snapshotted server served, and one publishes a port.
# The guest's own view of its eth0: "MAC ADDRESS/PREFIX".
eth0() { duet exec "$1" sh -c 'echo $(cat /sys/class/net/eth0/address) $(ip -4 -o addr show eth0 | awk "{print \$4}")'; }
addr_of() { eth0 "$1" | awk '{print $2}' | cut -d/ -f1; }
HTTPD='mkdir -p /www && echo duet-test-page > /www/index.html && exec httpd -f -p 80 -h /www'
# "NAME MAC ADDRESS/PREFIX" of each instance named.
identities() { for n in "$@"; do echo "$n $(eth0 $n)"; done; }
# What each instance named serves on its address, then what 127.0.0.1:$1 serves.
answers() {
    port=$1; shift
    for n in "$@"; do echo "$n $(wait_for "$(addr_of $n)" 80)"; done
    echo "published $(wait_for 127.0.0.1 "$port")"
}
# Until the guest has its address (a guest boots in seconds here).
has_address() {
    i=0
    while [ $i -lt 120 ]; do
        a=$(addr_of "$1" 2>/dev/null) && [ -n "$a" ] && { echo "$a"; return 0; }
        i=$((i + 1)); sleep 1
    done
    echo "$1 has no address"; return 1
}
left() { echo links=$(ip -o link | wc -l) leases=$(ls /tmp/duet/network/duet0/leases 2>/dev/null | wc -l) dnat=$(nft list ruleset 2>/dev/null | grep -c dnat); }
case_ net_before left
case_ net_up duet run -d --name snapnet --isolation vm --network bridge busybox -- sh -c "$HTTPD"
case_ net_has_address has_address snapnet
case_ net_source_answers wait_for "$(addr_of snapnet)" 80
case_ net_snapshot duet snapshot snapnet /tmp/snapnet
case_ net_c1 duet run -d --name netc1 --from-snapshot /tmp/snapnet
case_ net_c2 duet run -d --name netc2 --from-snapshot /tmp/snapnet -p 8081:80
case_ net_identities identities snapnet netc1 netc2
case_ net_answers answers 8081 snapnet netc1 netc2
case_ net_overrides_refused duet run --from-snapshot /tmp/snapnet --network none
case_ net_rm duet rm -f snapnet netc1 netc2
case_ net_after left

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
# Warm clones on duet's bridge (a third template: one with a network
# device): each configures the MAC and address it is handed, and serves.
case_ warm_net_a duet run -d --warm --name warmneta --network bridge -p 8082:80 busybox -- sh -c "$HTTPD"
case_ warm_net_b duet run -d --warm --name warmnetb --network bridge busybox -- sh -c "$HTTPD"
case_ warm_net_has_address has_address warmnetb
case_ warm_net_identities identities warmneta warmnetb
case_ warm_net_answers answers 8082 warmneta warmnetb
case_ warm_net_rm duet rm -f warmneta warmnetb
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
