#!/bin/bash
# Runs every test: unit tests, containers for real (root), tiny guests on
# /dev/kvm, and real Linux guests (and pure cgroup v2 containers) inside the
# nested-KVM testbed. Run scripts/install.sh first (packages, guest kernel).
#
#   sudo scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"

# Tests that cannot run (no root, no /dev/kvm, no testbed) fail instead of
# skipping: a skipped test must never count as a pass here.
export DUET_TEST_STRICT=1

log="$(mktemp)"
trap 'rm -f "$log"' EXIT

cargo build --workspace
# The test-only guest kernel of tests/hostile_guest_testbed.rs (cached after the first build).
images/kernel/build.sh --variant hostile >/dev/null
tests/testbed/selftest.sh
status=0
cargo test --workspace --no-fail-fast -- --test-threads=2 2>&1 | tee "$log" || status=$?

# One closing line over every test binary.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
