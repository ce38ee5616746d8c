#!/bin/sh
# Real Linux microVM cases for tests/vm_testbed.rs, run inside the testbed
# (tests/testbed/run) where /dev/kvm is a real nested KVM. Each case prints
#   === BEGIN <name>
#   <combined output>
#   === END <name> rc=<exit status>
# and the Rust test checks them. Keep cases independent.

case_() {
    name=$1
    shift
    echo "=== BEGIN $name"
    "$@" 2>&1
    rc=$?
    echo "=== END $name rc=$rc"
}

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
case_ leftovers sh -c 'ls /tmp/duet/instances | wc -l'
