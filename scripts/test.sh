#!/bin/bash
# Runs every test: unit tests, containers for real (root), tiny guests on
# /dev/kvm, and real Linux guests (and pure cgroup v2 containers) inside the
# nested-KVM testbed. Run scripts/install.sh first (packages, guest kernel).
#
#   scripts/test.sh       (as root; sudo is optional)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"

# Tests that cannot run (no root, no /dev/kvm, no testbed) fail instead of
# skipping: a skipped test must never count as a pass here.
export DUET_TEST_STRICT=1

log="$(mktemp)"
before="$(mktemp)"
trap 'rm -f "$log" "$before"' EXIT

stage() { echo "== test.sh: $1 took $((SECONDS - $2)) s" >&2; }
t=$SECONDS; cargo build --workspace; stage "cargo build --workspace" "$t"
# The test-only guest kernel of tests/hostile_guest_testbed.rs (cached after the first build).
t=$SECONDS; images/kernel/build.sh --variant hostile >/dev/null; stage "hostile guest kernel" "$t"
t=$SECONDS; tests/testbed/selftest.sh; stage "testbed self-test" "$t"
status=0
scripts/leftovers.sh > "$before"
t=$SECONDS
cargo test --workspace --no-fail-fast -- --test-threads=2 2>&1 | tee "$log" || status=$?
stage "cargo test --workspace" "$t"
# Every test cleans up after itself: cgroups, mounts, links and processes
# that were not there before the tests fail the run, each named.
if ! left="$(scripts/leftovers.sh --new-since "$before")"; then
    echo "the tests left behind:" >&2
    echo "$left" | sed 's/^/   /' >&2
    status=1
fi
# The slowest test binaries (the testbed groups), so a creeping CI time has a name.
awk '/Running / { bin = $2 } /^test result:/ { sub(/s$/, "", $NF); print $NF, bin }' "$log" \
    | sort -rn | head -8 | sed 's/^/   /' >&2

# One closing line over every test binary.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
