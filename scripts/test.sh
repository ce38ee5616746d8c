#!/bin/bash
# Runs every test: unit tests, containers for real (root), tiny guests on
# /dev/kvm, and real Linux guests inside the nested-KVM testbed.
# Run scripts/install.sh first (packages, guest kernel).
#
#   sudo scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"

# Tests that cannot run (no root, no /dev/kvm, no testbed) fail instead of
# skipping: a skipped test must never count as a pass here.
export DUET_TEST_STRICT=1

cargo build --workspace
cargo test --workspace -- --test-threads=2
