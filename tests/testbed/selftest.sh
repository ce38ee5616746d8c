#!/bin/bash
# Self-test of the nested-KVM testbed (tests/testbed/run), for CI:
#   - /dev/kvm exists inside and the outer kernel is not the host's
#   - the command's output arrives exactly, without the boot log
#   - exit statuses propagate (`sh -c 'exit 3'` gives 3)
#   - the KVM probe (kvm-probe.c) runs a guest on the nested /dev/kvm
#   - a hung command ends in a timeout with status 125
#   - the guest kernel boots under QEMU microvm inside the testbed
#     (needs images/kernel/build.sh to have run; skipped otherwise)
# With DUET_TEST_STRICT=1 a skipped check counts as a failure.
#
#   tests/testbed/selftest.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
run="$here/run"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/duet/testbed/selftest"
mkdir -p "$cache"

passed=0
failed=0
skipped=0
pass() { echo "PASS  $1"; passed=$((passed + 1)); }
fail() { echo "FAIL  $1: $2"; failed=$((failed + 1)); }
skip() {
    if [ "${DUET_TEST_STRICT:-}" = 1 ]; then
        fail "$1" "cannot run: $2 (DUET_TEST_STRICT=1 forbids skipping)"
    else
        echo "SKIP  $1: $2"; skipped=$((skipped + 1))
    fi
}

# tb NAME ARGS...: run the testbed, leaving stdout in $out, stderr in $err,
# the exit status in $rc and the wall time in $secs.
tb() {
    local name="$1"; shift
    local t0 t1
    t0=$(date +%s.%N)
    set +e
    "$run" "$@" >"$cache/$name.out" 2>"$cache/$name.err"
    rc=$?
    set -e
    t1=$(date +%s.%N)
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    out="$(cat "$cache/$name.out")"
    err="$(cat "$cache/$name.err")"
    echo "      ($name: exit $rc in ${secs} s)"
}
show() { sed 's/^/      | /' "$cache/$1.out" "$cache/$1.err" | tail -n 20; }

# DUET_BIN/DUET_INIT=none keeps the duet binaries out: this tests the testbed.
export DUET_BIN="${DUET_BIN:-none}" DUET_INIT="${DUET_INIT:-none}"

tb kvm -- sh -c 'ls -l /dev/kvm; uname -r'
if [ "$rc" = 0 ] && grep -q '^c.* /dev/kvm$' <<<"$out" && ! grep -qx "$(uname -r)" <<<"$out"; then
    pass "/dev/kvm inside the testbed, outer kernel $(tail -n 1 <<<"$out")"
else
    fail "/dev/kvm inside the testbed" "exit $rc"; show kvm
fi

tb echo -- echo hi
if [ "$rc" = 0 ] && [ "$out" = hi ] && [ "$(wc -c <"$cache/echo.out")" = 3 ]; then
    pass "output arrives exactly ('hi\\n', no boot log)"
else
    fail "output arrives exactly" "exit $rc, got $(od -c "$cache/echo.out" | head -n 3)"; show echo
fi

tb exit3 -- sh -c 'exit 3'
if [ "$rc" = 3 ]; then pass "exit status propagates (3)"; else fail "exit status propagates" "wanted 3, got $rc"; show exit3; fi

probe="$cache/kvm-probe"
if ! command -v gcc >/dev/null 2>&1; then
    skip "KVM probe" "gcc not found (apt-get install build-essential)"
elif ! gcc -static -O2 -o "$probe" "$here/kvm-probe.c" 2>"$cache/kvm-probe.build"; then
    fail "KVM probe" "gcc -static failed (static libc: apt-get install libc6-dev): $(head -n 5 "$cache/kvm-probe.build")"
else
    tb probe --file "$probe" -- kvm-probe 10000000
    if [ "$rc" = 0 ] && grep -q '^kvm-probe: OK' <<<"$out"; then
        pass "KVM probe runs a guest on the nested /dev/kvm ($(grep -o '[0-9.]* M instructions/s' <<<"$out"))"
    else
        fail "KVM probe" "exit $rc"; show probe
    fi
fi

tb timeout --timeout 5 -- sleep 600
if [ "$rc" = 125 ] && grep -q 'timed out' <<<"$err"; then
    pass "a hung command times out with status 125"
else
    fail "a hung command times out" "wanted 125 and 'timed out', got $rc"; show timeout
fi

kernel="${XDG_CACHE_HOME:-$HOME/.cache}/duet/kernel/current/vmlinux"
if [ ! -f "$kernel" ]; then
    skip "guest kernel boots under QEMU microvm in the testbed" "no $kernel (run images/kernel/build.sh)"
else
    tb innerboot --qemu --file "$here/inner-qemu-boot.sh" -- inner-qemu-boot.sh -n 2 -t 120
    if [ "$rc" = 0 ] && grep -q 'INNER-INIT\|uptime=' <<<"$out"; then
        pass "guest kernel boots under QEMU microvm in the testbed"
        sed 's/^/      /' <<<"$out"
    else
        fail "guest kernel boots under QEMU microvm in the testbed" "exit $rc"; show innerboot
    fi
fi

echo "testbed selftest: $passed passed, $failed failed, $skipped skipped (outputs in $cache)"
[ "$failed" = 0 ]
