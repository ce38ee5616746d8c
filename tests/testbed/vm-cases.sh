#!/bin/sh
# Real Linux microVM cases for tests/vm_testbed.rs, run inside the testbed
# (tests/testbed/run) where /dev/kvm is a real nested KVM. Output format:
# see cases-lib.sh. Keep cases independent.

. "$(dirname "$0")/cases-lib.sh"

vm() { duet run --isolation vm "$@"; }

case_ echo vm busybox -- echo hi
case_ exit7 vm busybox -- sh -c 'exit 7'
case_ outer_uname uname -r
case_ uname vm busybox -- uname -r
cat > /tmp/w.toml <<'SPEC'
name = "envwd"
image = "busybox"
command = ["/bin/sh", "-c", "echo \"$GREETING\"; pwd; hostname"]
env = { GREETING = "hello there" }
workdir = "/tmp"
isolation = "vm"
SPEC
case_ envwd duet run --spec /tmp/w.toml
case_ vcpus2 vm --vcpus 2 busybox -- grep -c ^processor /proc/cpuinfo
case_ mem256 vm --memory 256 busybox -- grep MemTotal /proc/meminfo
case_ missing_cmd vm busybox -- /no/such/program
case_ timings vm --timings busybox -- true
case_ timeout vm --timeout 4 busybox -- sleep 100
case_ panic env DUET_KERNEL_APPEND=rdinit=/no/such/init duet run --isolation vm busybox -- true
case_ quiet vm busybox -- echo only-this
case_ console vm --console busybox -- echo after-boot
# duet run -t: script(1) gives duet a terminal; the guest's console is the workload's.
case_ run_tty timeout -k 10 180 script -qec "$DUET_EXE run -t --isolation vm busybox -- sh -c 'test -t 0 && echo stdin-is-a-tty; stty size; env | grep ^TERM='" /dev/null
case_ run_tty_typed sh -c "printf 'echo typed-\$((40+2))\nexit 5\n' | timeout -k 10 180 script -qec '$DUET_EXE run -t --isolation vm busybox -- sh' /dev/null"
case_ leftovers sh -c 'ls /tmp/duet/instances | wc -l'

# --- issue 4: the guest's root on virtio-blk disks (layers + scratch) ----------
# A state root of their own, so the first run there builds the layer image.
D=/tmp/duet-disks
vmd() { env DUET_ROOT=$D DUET_VM_ROOTFS=disks duet run --isolation vm "$@"; }

# The write lands on the instance's scratch disk, not in the layer image. The
# marker is assembled in the guest so that it is not in the workload config.
disk_keep() {
    sha_before=$(sha256sum $D/layers/sha256/*/layer.erofs | cut -c1-64)
    vmd --keep busybox -- sh -c 'printf "%s%s\n" landed- marker-42 > /root/written; cat /root/written' || return 1
    sha_after=$(sha256sum $D/layers/sha256/*/layer.erofs | cut -c1-64)
    [ "$sha_before" = "$sha_after" ] && echo layer-unchanged
    for s in $D/instances/*/scratch.ext4; do
        grep -q landed-marker-42 "$s" && echo scratch-has-it
        echo "scratch allocated $(du -k "$s" | cut -f1) KiB of $(($(stat -c %s "$s") / 1024)) KiB"
    done
    grep -q landed-marker-42 $D/layers/sha256/*/layer.erofs && echo layer-has-it
    true
}

# Two VMs from one image at the same time: one layer file (one inode) for both;
# A changes /etc/hosts, B still sees the image's /etc/hosts.
disk_two_vms() {
    vmd busybox -- sh -c 'echo changed-by-a >> /etc/hosts; sleep 8; grep -c changed-by-a /etc/hosts' > /tmp/a.out 2>&1 &
    a=$!
    vmd busybox -- sh -c 'sleep 8; grep -c changed-by-a /etc/hosts; grep -c localhost /etc/hosts' > /tmp/b.out 2>&1 &
    b=$!
    # Until both VMs hold every layer disk open.
    layers=$(ls $D/layers/sha256 | wc -l)
    i=0
    while [ $i -lt 600 ]; do
        n=0
        for p in $(pidof duet); do
            n=$((n + $(ls -l /proc/$p/fd 2>/dev/null | grep -c layer.erofs)))
        done
        [ $n -ge $((2 * layers)) ] && break
        i=$((i + 1))
        sleep 0.1
    done
    for p in $(pidof duet); do
        for f in /proc/$p/fd/*; do
            case "$(readlink $f)" in
                *layer.erofs) echo "layer-inode $p $(readlink $f) $(stat -L -c %i $f)" ;;
            esac
        done
    done
    wait $a
    echo "a rc=$?"
    sed 's/^/a: /' /tmp/a.out
    wait $b
    echo "b rc=$?"
    sed 's/^/b: /' /tmp/b.out
}

case_ disk_first vmd --timings busybox -- sh -c 'cat /proc/mounts; echo disk-root-ok'
case_ disk_second vmd --timings busybox -- true
case_ disk_keep disk_keep
case_ disk_two_vms disk_two_vms

# --- issue 9 class 8: the VMM is jailed ----------------------------------------
# The instance directory of the running instance named $1 (its VMM writes
# vmm.pid there), and the VMM's PID once it has dropped its privileges.
vmm_pid_of() {
    i=0
    while [ $i -lt 1200 ]; do
        for f in "$DUET_ROOT"/instances/"$1"-*/vmm.pid; do
            [ -f "$f" ] || continue
            p=$(cat "$f")
            if grep -q '^NoNewPrivs:.1' /proc/"$p"/status 2>/dev/null &&
                [ "$(grep -l 'Seccomp:.2' /proc/"$p"/task/*/status 2>/dev/null | wc -l)" -gt 0 ]; then
                echo "$p"
                return 0
            fi
        done
        i=$((i + 1))
        sleep 0.1
    done
    return 1
}

# What the running VMM holds, seen from the outer Linux. fd 7 (the outer
# root directory, no CLOEXEC) is left open by the caller: it must not reach
# the VMM.
jail_inspect() {
    exec 7</
    vm --name jailed busybox -- sh -c 'sleep 8; echo guest-done' > /tmp/jail.out 2>&1 &
    job=$!
    pid=$(vmm_pid_of jailed) || { echo "no jailed VMM"; exec 7<&-; wait $job; cat /tmp/jail.out; return 1; }
    exec 7<&-
    echo "vmm-pid $pid parent $(awk '/^PPid:/ { print $2 }' /proc/$pid/status) duet-user $(id -u)"
    grep -E '^(Uid|Gid|Groups|CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs):' /proc/$pid/status
    for n in mnt pid net ipc uts user cgroup; do
        if [ "$(readlink /proc/$pid/ns/$n)" = "$(readlink /proc/self/ns/$n)" ]; then
            echo "ns $n shared"
        else
            echo "ns $n own"
        fi
    done
    (cd /proc/$pid/root && find . | sort | sed 's/^/root /')
    for f in /proc/$pid/fd/*; do echo "fd ${f##*/} $(readlink "$f")"; done
    echo "jail-mounts $(wc -l < /proc/$pid/mountinfo)"
    echo "outer-mounts-under-instances $(grep -c "$DUET_ROOT/instances" /proc/self/mountinfo)"
    wait $job
    echo "rc=$?"
    cat /tmp/jail.out
}

case_ jail_inspect jail_inspect
# --- truth: what the README promises, checked on real VMs -----------------------
# pids_max inside the guest: a fork bomb stops at the limit.
cat > /tmp/pids.toml <<'SPEC'
name = "pids"
image = "busybox"
command = ["/bin/sh", "-c", "cat /sys/fs/cgroup/workload/pids.max; n=0; while [ $n -lt 40 ]; do sleep 3 & n=$((n+1)); done; echo spawned=$n"]
isolation = "vm"
[resources]
pids_max = 8
SPEC
case_ vm_pids duet run --spec /tmp/pids.toml

# The earlier design, kept for comparison: the whole image in the initramfs.
case_ vm_initramfs_root env DUET_VM_ROOTFS=initramfs DUET_ROOT=/tmp/duet-initramfs \
    duet run --isolation vm busybox -- sh -c 'cat /proc/mounts; ls /dev | grep -c "^vd" ; echo initramfs-root-ok'

# SIGINT, SIGTERM or kill -9 to duet while its (jailed) VM runs, then duet gc
# (which after SIGINT/SIGTERM has nothing left to do). One run per signal
# serves both the jail's tests and the clean-up tests of tests/vm_testbed.rs:
# the VMM dies with duet, and no instance directory, duet or VMM process,
# mount or cgroup is left.
vm_stop() { # vm_stop SIGNAL
    sig=$1
    outer_root=$DUET_ROOT
    DUET_ROOT=/tmp/duet-sig-$sig
    out=/tmp/sig-$sig.out
    count() { ls "$DUET_ROOT"/instances 2>/dev/null | grep -c "^stop$sig-"; }
    "$DUET_EXE" run --isolation vm --name "stop$sig" busybox -- sh -c 'echo guest-up; sleep 300' > "$out" 2>&1 &
    p=$!
    # A watchdog: this case must end even if duet ignored the signal.
    ( sleep 150; kill -9 $p ) 2>/dev/null &
    w=$!
    vmm=$(vmm_pid_of "stop$sig") || echo "no jailed VMM"
    i=0
    while [ $i -lt 1200 ] && ! grep -q guest-up "$out"; do i=$((i + 1)); sleep 0.1; done
    grep -q guest-up "$out" && echo workload-running
    echo "instances while running: $(count)"
    kill -"$sig" $p
    wait $p
    echo "duet rc=$?"
    kill $w 2>/dev/null
    i=0
    while [ -d /proc/"$vmm" ] && [ $i -lt 100 ]; do i=$((i + 1)); sleep 0.1; done
    if [ -d /proc/"$vmm" ]; then echo "vmm-left $vmm"; else echo "vmm-gone"; fi
    before=$(count)
    echo "instances-before-gc $before"
    [ "$sig" = KILL ] && echo "instances after kill -9: $before"
    "$DUET_EXE" gc > /dev/null 2>&1
    echo "gc rc=$?"
    after=$(count)
    echo "instances-after-gc $after"
    if [ "$sig" = KILL ]; then echo "instances left: $after"; else echo "instances left: $before"; fi
    mounts=$(grep -c "$DUET_ROOT" /proc/self/mountinfo)
    echo "mounts-left $mounts"
    echo "mounts left: $mounts"
    echo "processes-left $(for q in /proc/[0-9]*; do grep -l "^Uid:.9[0-9][0-9][0-9][0-9][0-9]" $q/status 2>/dev/null; done | wc -l)"
    echo "duet processes left: $(pidof duet | wc -w)"
    echo "cgroups left: $(find /sys/fs/cgroup -type d -name "stop$sig-*" 2>/dev/null | wc -l)"
    sed 's/^/out: /' "$out"
    DUET_ROOT=$outer_root
}
case_ vm_sigterm vm_stop TERM
case_ vm_sigint vm_stop INT
case_ vm_kill9 vm_stop KILL

# --- issue 10: duet exec / duet kill into a running microVM ------------------------
# One VM (its own state root) serves every exec case: it writes a file in its
# root, traps TERM, and idles. virtio-vsock + the guest agent in duet-init.
EXEC_ROOT=/tmp/duet-exec
xduet() { env DUET_ROOT=$EXEC_ROOT "$DUET_EXE" "$@"; }
xduet run --isolation vm --name v1 busybox -- sh -c \
    'echo written-by-the-workload > /root/marker; trap "echo got-term; exit 3" TERM; echo workload-up; while true; do sleep 1; done' \
    > /tmp/exec-v1.out 2>&1 &
exec_job=$!
# A watchdog: the background run must end even if kill does not work.
( sleep 170; kill -9 $exec_job ) 2>/dev/null &
exec_watchdog=$!
exec_ready() {
    i=0
    while [ $i -lt 300 ]; do
        if [ -S $EXEC_ROOT/instances/v1-*/agent.sock ] && timeout 30 "$DUET_EXE" exec v1 true > /tmp/exec-first.out 2>&1; then
            echo "exec-ready after $i tries"
            ls -l $EXEC_ROOT/instances/v1-*/agent.sock | awk '{ print "agent.sock mode " $1 }'
            return 0
        fi
        i=$((i + 1))
        sleep 0.2
    done
    cat /tmp/exec-first.out /tmp/exec-v1.out
    return 1
}
export DUET_ROOT_SAVED=$DUET_ROOT
DUET_ROOT=$EXEC_ROOT
case_ exec_ready exec_ready
case_ exec_echo duet exec v1 echo hi
case_ exec_exit7 duet exec v1 sh -c 'exit 7'
case_ exec_missing duet exec v1 nope
case_ exec_tty duet exec -t v1 tty
case_ exec_root duet exec v1 cat /root/marker
case_ exec_env_workdir duet exec -e EXTRA=from-exec -w /tmp v1 sh -c 'echo "$EXTRA"; pwd; echo $PATH'
case_ exec_stdin sh -c "printf 'line1\nline2\n' | timeout 60 $DUET_EXE exec -i v1 sh -c 'cat; echo stdin-done'"
case_ exec_stdin_not_without_i sh -c "echo dropped | timeout 60 $DUET_EXE exec v1 cat; echo rc=\$?"
exec_kill() {
    duet kill -s TERM v1 || return 1
    wait $exec_job
    echo "run rc=$?"
    kill $exec_watchdog 2>/dev/null
    sed 's/^/out: /' /tmp/exec-v1.out
}
case_ exec_kill exec_kill
case_ exec_after_exit duet exec v1 true
exec_leftovers() {
    echo "instances $(ls $EXEC_ROOT/instances 2>/dev/null | wc -l)"
    echo "sockets $(find $EXEC_ROOT -name agent.sock 2>/dev/null | wc -l)"
    echo "vmm processes $(for q in /proc/[0-9]*; do grep -l "^Uid:.9[0-9][0-9][0-9][0-9][0-9]" $q/status 2>/dev/null; done | wc -l)"
}
case_ exec_leftovers exec_leftovers
DUET_ROOT=$DUET_ROOT_SAVED

# The VM column of `duet bench isolation`: the probe inside a real VM
# (stdout is the report JSON alone; messages go to a file).
case_ vm_bench_isolation sh -c 'timeout 300 duet bench isolation --isolation vm --vm-via native --report-json - 2>/tmp/iso.err || { cat /tmp/iso.err; exit 1; }'

# --- issue 10: detached microVMs (run -d, ps, logs, stop, wait, rm; a lost monitor) ---
meta_field() { sed -n "s/.*\"$2\": \([0-9]*\).*/\1/p" "$DUET_ROOT"/instances/"$1"-*/meta.json | head -1; }
vm_detached() {
    "$DUET_EXE" run -d --isolation vm --name vmd busybox -- sh -c "trap '' TERM; echo vm-up; while true; do sleep 1; done" || return 1
    "$DUET_EXE" ps | grep "^vmd " | sed 's/^/ps: /'
    i=0
    until "$DUET_EXE" logs vmd 2>/dev/null | grep -q vm-up || [ $i -ge 300 ]; do i=$((i + 1)); sleep 0.2; done
    "$DUET_EXE" logs vmd | sed 's/^/logs: /'
    vmm=$(meta_field vmd pid)
    [ -d /proc/"$vmm" ] && echo vmm-running
    echo "exec: $("$DUET_EXE" exec vmd echo hi-from-exec)"
    "$DUET_EXE" exec vmd sh -c 'exit 7'
    echo "exec-rc $?"
    t0=$(date +%s)
    "$DUET_EXE" stop -t 3 vmd > /dev/null && echo stopped
    echo "stop-took $(($(date +%s) - t0))"
    [ -d /proc/"$vmm" ] && echo "vmm-left $vmm" || echo vmm-gone
    echo "wait: $("$DUET_EXE" wait vmd)"
    "$DUET_EXE" ps -a | grep "^vmd " | sed 's/^/ps-a: /'
    "$DUET_EXE" rm vmd > /dev/null && echo removed
    echo "instances-left $(ls "$DUET_ROOT"/instances | grep -c '^vmd-')"
}
case_ vm_detached vm_detached
vm_detached_lost() {
    "$DUET_EXE" run -d --isolation vm --name vml busybox -- sleep 300 > /dev/null || return 1
    vmm=$(meta_field vml pid)
    mon=$(meta_field vml owner_pid)
    kill -9 "$mon"
    i=0
    while [ -d /proc/"$vmm" ] && ! grep -q '^State:.*Z' /proc/"$vmm"/status 2>/dev/null && [ $i -lt 100 ]; do i=$((i + 1)); sleep 0.1; done
    if [ -d /proc/"$vmm" ] && ! grep -q '^State:.*Z' /proc/"$vmm"/status; then echo "vmm-left $vmm"; else echo vmm-gone; fi
    "$DUET_EXE" ps | grep "^vml " | sed 's/^/ps: /'
    "$DUET_EXE" gc > /dev/null && echo gc-ok
    echo "instances-left $(ls "$DUET_ROOT"/instances | grep -c '^vml-')"
    echo "cgroups-left $(find /sys/fs/cgroup -type d -name 'vml-*' 2>/dev/null | wc -l)"
}
case_ vm_detached_lost vm_detached_lost
# --restart on-failure:1 in a VM: the monitor boots it a second time, then keeps the exit.
case_ vm_detached_restart sh -c '"$0" run -d --isolation vm --name vmr --restart on-failure:1 busybox -- sh -c "echo boot; exit 3" > /dev/null || exit 1; echo "wait: $("$0" wait vmr)"; echo "boots: $("$0" logs vmr | grep -c boot)"; "$0" ps -a | grep "^vmr " | sed "s/^/ps-a: /"; sed -n "s/.*\"restarts\": \([0-9]*\).*/restarts: \1/p" "$DUET_ROOT"/instances/vmr-*/meta.json; "$0" rm vmr > /dev/null && echo removed' "$DUET_EXE"

# --- issue 11: duet-runc --isolation vm, the raw OCI sequence without an engine ---
# The bundle's rootfs is a plain directory (busybox); the microVM gets it over
# virtio-fs (virtiofsd) and writes into it; kill and exec go through the agent.
ln -sf "$DUET_EXE" /usr/local/bin/duet-runc
OCI_ROOT=/tmp/oci-root
ocirt() { timeout 120 /usr/local/bin/duet-runc --root $OCI_ROOT "$@"; }
oci_bundle() { # oci_bundle DIR ARGS_JSON
    mkdir -p "$1/rootfs/bin" "$1/rootfs/etc" "$1/rootfs/tmp" "$1/rootfs/root"
    cp /bin/busybox "$1/rootfs/bin/busybox"
    for a in sh echo cat sleep ls id hostname pwd grep uname; do ln -sf busybox "$1/rootfs/bin/$a"; done
    echo "10.1.2.3 from-the-engine" > "$1/hosts"
    cat > "$1/config.json" <<EOF
{"ociVersion": "1.0.2",
 "process": {"terminal": false, "user": {"uid": 0, "gid": 0}, "args": $2,
             "env": ["PATH=/bin", "GREETING=hello"], "cwd": "/tmp"},
 "root": {"path": "rootfs"},
 "hostname": "ocivm",
 "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/etc/hosts", "type": "bind", "source": "$1/hosts", "options": ["rbind", "ro"]}],
 "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "network", "path": "/proc/1/ns/net"}],
           "resources": {"memory": {"limit": 134217728}}}}
EOF
}
# Command lines of the live (not zombie) processes, one per line.
live() { for p in /proc/[0-9]*; do [ "$(sed -n 's/^State:\t\([A-Z]\).*/\1/p' $p/status 2>/dev/null)" != Z ] && tr '\0' ' ' 2>/dev/null < $p/cmdline && echo; done 2>/dev/null; }
oci_status() { ocirt state "$1" | sed -n 's/.*"status": "\([a-z]*\)".*/status \1/p'; }
oci_wait_output() { # oci_wait_output FILE TEXT
    i=0
    until grep -q "$2" "$1" 2>/dev/null || [ $i -ge 600 ]; do i=$((i + 1)); sleep 0.2; done
}
# oci_vm_up NAME: create (pid file /tmp/NAME.pid, output /tmp/oci-NAME.out)
# and start the VM container NAME of bundle $B, waiting for its "NAME-up".
oci_vm_up() {
    ocirt --isolation vm create --bundle $B --pid-file /tmp/$1.pid $1 > /tmp/oci-$1.out 2>&1 || { cat /tmp/oci-$1.out; return 1; }
    ocirt start $1 || return 1
    oci_wait_output /tmp/oci-$1.out $1-up
}
# oci_wait_stopped NAME TRIES: polls (0.1 s apart) until NAME is stopped; prints its status.
oci_wait_stopped() {
    i=0
    while [ "$(oci_status $1)" != "status stopped" ] && [ $i -lt $2 ]; do i=$((i + 1)); sleep 0.1; done
    oci_status $1
}
oci_vm_sequence() {
    B=/tmp/oci-b1
    oci_bundle $B '["sh", "-c", "echo vm-up in $(pwd) as $(hostname); echo written-in-guest > /root/from-guest; trap \"echo got-term; exit 3\" TERM; while true; do sleep 1; done"]'
    ocirt --isolation vm create --bundle $B --pid-file /tmp/oci1.pid v1 > /tmp/oci-v1.out 2>&1 || { cat /tmp/oci-v1.out; return 1; }
    [ -s /tmp/oci1.pid ] && echo pid-file-written
    keeper=$(cat /tmp/oci1.pid)
    oci_status v1
    ocirt start v1 || return 1
    oci_status v1
    oci_wait_output /tmp/oci-v1.out vm-up
    sed 's/^/out: /' /tmp/oci-v1.out
    echo "exec: $(ocirt exec v1 sh -c 'echo "$GREETING from $(hostname) in $(pwd)"')"
    echo "exec-hosts: $(ocirt exec v1 cat /etc/hosts)"
    echo "exec-root: $(ocirt exec v1 grep ' / ' /proc/mounts | cut -d' ' -f1-3)"
    guest=$(ocirt exec v1 uname -r)
    [ -n "$guest" ] && [ "$guest" != "$(uname -r)" ] && echo "guest-kernel-differs"
    ocirt exec v1 sh -c 'exit 7'
    echo "exec-rc $?"
    echo "host-sees: $(cat $B/rootfs/root/from-guest)"
    ocirt exec v1 sh -c 'echo from-exec > /tmp/exec-wrote'
    echo "host-sees-exec: $(cat $B/rootfs/tmp/exec-wrote)"
    ocirt exec --detach --pid-file /tmp/oci-exec.pid v1 sh -c 'exit 5'
    echo "detached-rc $? pid-file $([ -s /tmp/oci-exec.pid ] && echo yes)"
    echo "ps: $(ocirt ps --format json v1 | tr ',' '\n' | grep -c '[0-9]') processes"
    ocirt kill v1 TERM || return 1
    oci_wait_stopped v1 300
    grep got-term /tmp/oci-v1.out
    ocirt delete v1 && echo deleted
    echo "keeper-left $(grep -l . /proc/$keeper/status 2>/dev/null | wc -l)"
    echo "dirs-left $(ls $OCI_ROOT | grep -vc '^\.duet-vm$')"
}
case_ oci_vm_sequence oci_vm_sequence
# kill -9 of the keeper (what the engine sees as the container's process):
# the VMM and virtiofsd go with it; delete --force cleans up the rest.
oci_vm_kill9() {
    B=/tmp/oci-b2
    oci_bundle $B '["sh", "-c", "echo v2-up; while true; do sleep 1; done"]'
    oci_vm_up v2 || return 1
    grep -c v2-up /tmp/oci-v2.out
    kill -9 "$(cat /tmp/v2.pid)"
    oci_wait_stopped v2 100
    sleep 1
    ocirt delete --force v2 && echo deleted
    echo "virtiofsd-left $(live | grep -c '^/usr/lib/qemu/virtiofs[d]')"
    echo "vmm-left $(for q in /proc/[0-9]*; do grep -l "^Uid:.9[0-9][0-9][0-9][0-9][0-9]" $q/status 2>/dev/null; done | wc -l)"
    echo "cgroups-left $(find /sys/fs/cgroup -type d -name 'v2' 2>/dev/null | wc -l)"
}
case_ oci_vm_kill9 oci_vm_kill9
# kill -9 of the jailed VMM itself: the keeper reports the container stopped,
# virtiofsd ends with the VMM's connection, delete cleans up.
oci_vm_kill9_vmm() {
    B=/tmp/oci-b4
    oci_bundle $B '["sh", "-c", "echo v4-up; while true; do sleep 1; done"]'
    oci_vm_up v4 || return 1
    vmm=$(for q in /proc/[0-9]*; do grep -q "^Uid:.9[0-9][0-9][0-9][0-9][0-9]" $q/status 2>/dev/null && basename $q; done | head -1)
    [ -n "$vmm" ] && kill -9 "$vmm" && echo vmm-killed
    oci_wait_stopped v4 100
    ocirt delete v4 && echo deleted
    echo "virtiofsd-left $(live | grep -c '^/usr/lib/qemu/virtiofs[d]')"
    echo "keeper-left $(live | grep -c '[_]_vm-keeper')"
    echo "sockets-left $(ls /run/duet-vm 2>/dev/null | wc -l)"
}
case_ oci_vm_kill9_vmm oci_vm_kill9_vmm
case_ oci_vm_refusal sh -c 'B=/tmp/oci-b3; mkdir -p $B/rootfs; printf "%s" "{\"ociVersion\": \"1.0.2\", \"process\": {\"args\": [\"true\"], \"cwd\": \"/\", \"user\": {\"uid\": 0, \"gid\": 0}}, \"root\": {\"path\": \"rootfs\"}, \"mounts\": [{\"destination\": \"/n\", \"type\": \"bind\", \"source\": \"/dev/null\", \"options\": [\"rbind\"]}]}" > $B/config.json; timeout 60 /usr/local/bin/duet-runc --root /tmp/oci-root --isolation vm create --bundle $B v3; echo "rc=$?"; ls /tmp/oci-root | grep -c "^v3$"'
