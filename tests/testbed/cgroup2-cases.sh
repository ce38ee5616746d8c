#!/bin/sh
# Containers on a pure cgroup v2 machine, for tests/cgroup2_testbed.rs: the
# testbed's outer Linux mounts only cgroup2 (memory, pids, cpu controllers),
# as most distributions do, while this project's own hosts are v1/v2 hybrids.
# Output format: see cases-lib.sh.

. "$(dirname "$0")/cases-lib.sh"

case_ layout sh -c 'grep cgroup /proc/self/mountinfo | awk "{print \$9, \$5}"'
case_ echo duet run --name v2echo busybox -- echo hi
case_ memory duet run --name v2mem --memory 32 busybox -- dd if=/dev/zero of=/dev/null bs=200M count=1
case_ memory_ok duet run --name v2memok --memory 512 busybox -- dd if=/dev/zero of=/dev/null bs=200M count=1
cat > /tmp/p.toml <<'SPEC'
name = "v2pids"
image = "busybox"
command = ["sh", "-c", "n=0; while [ $n -lt 100 ]; do sleep 30 & n=$((n+1)); done; echo spawned=$n"]
[resources]
pids_max = 16
SPEC
case_ pids duet run --spec /tmp/p.toml
# A caller limited to 48 MiB (a slice) runs duet from a scope below it, as a
# systemd session would: the container (asking for 512 MiB) nests under the
# slice and its 200 MiB are OOM-killed (137); nothing stays in the slice.
mkdir -p /sys/fs/cgroup/caller.slice/job.scope
echo +memory > /sys/fs/cgroup/cgroup.subtree_control
echo +memory > /sys/fs/cgroup/caller.slice/cgroup.subtree_control
echo 50331648 > /sys/fs/cgroup/caller.slice/memory.max
case_ caller_limit sh -c 'echo $$ > /sys/fs/cgroup/caller.slice/job.scope/cgroup.procs; duet run --name v2caller --memory 512 busybox -- dd if=/dev/zero of=/dev/null bs=200M count=1; echo exit=$?; echo $$ > /sys/fs/cgroup/cgroup.procs; find /sys/fs/cgroup/caller.slice -mindepth 1 -type d'
rmdir /sys/fs/cgroup/caller.slice/job.scope /sys/fs/cgroup/caller.slice 2>/dev/null
# duet exec on pure v2: the exec'd command joins the instance's one v2 cgroup.
"$DUET_EXE" run -d --name v2exec busybox -- sleep 120 </dev/null >/dev/null 2>&1
cg=$(find /sys/fs/cgroup -type d -name 'v2exec-*' | head -1)
case_ exec sh -c "duet exec v2exec sh -c 'cat /proc/self/cgroup; hostname'; \
  duet exec v2exec sleep 2 & sleep 1; echo procs=\$(wc -l < $cg/cgroup.procs); wait; \
  echo after=\$(wc -l < $cg/cgroup.procs)"
"$DUET_EXE" rm -f v2exec > /dev/null
# No duet/ directory anywhere (an empty one is removed with its last instance).
case_ leftovers sh -c 'find /sys/fs/cgroup -type d -name duet | wc -l; ls /tmp/duet/instances | wc -l'
